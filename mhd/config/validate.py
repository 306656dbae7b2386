"""`/etc/mhd.yaml`: parsing and validation into immutable records.

Every problem is collected in one pass and reported with file:line:column, the key path and the fix,
because an operator editing a production config wants the whole list at once, not one error per
reload. Nothing here touches the kernel: the same function serves `mhctl check`, `mhctl plan` and the
daemon's reload, which keeps the running config whenever this raises.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from mhd.config.checkspec import CHECK_TYPES, CheckSpec
from mhd.config.yamlsource import ConfigError, Located, Problem, gc_paused, parse
from mhd.model import (
    FORWARD_METHODS,
    MH_FALLBACK,
    MH_PORT,
    NO_SCHEDULER,
    PROTOCOLS,
    Dest,
    DestKey,
    IPAddress,
    Service,
    ServiceKey,
    mh_table_size,
    parse_ip,
)

DEFAULT_CONFIGS = ("/etc/mhd/mhd.yaml", "/etc/mhd.yaml")
DEFAULT_STATE_DIR = "/var/lib/mhd"
DEFAULT_LISTEN = "127.0.0.1:9180"
DEFAULT_SOCKET = "/run/mhd/mhd.sock"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
QTYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "ANY")

T = TypeVar("T")


@dataclass(frozen=True)
class MinHealthy:
    """How many servers must stay in IPVS before health removals stop (panic)."""

    count: int = 1
    percent: float | None = None

    def required(self, configured: int) -> int:
        if self.percent is not None:
            import math

            return max(1, math.ceil(configured * self.percent / 100.0)) if configured else 0
        return min(self.count, configured)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class ServerConfig:
    address: IPAddress
    port: int
    weight: int
    forward: int
    check: CheckSpec

    @cached_property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)

    def dest(self) -> Dest:
        return Dest(self.key, self.weight, self.forward)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    key: ServiceKey
    scheduler: str
    flags: int
    servers: tuple[ServerConfig, ...]
    check: CheckSpec
    min_healthy: MinHealthy = MinHealthy()
    adopt: bool = False  # take over a service already in IPVS that mhd does not own (README)

    def service(self, members: set[DestKey] | None = None) -> Service:
        """The kernel service with `members` (default: every configured server) as destinations."""
        if members is not None and len(members) == len(self.servers):
            members = None  # members are servers of this service: all of them, no lookups needed
        dests = tuple(s.dest() for s in self.servers if members is None or s.key in members)
        netmask = 128 if self.key.family == socket.AF_INET6 else 0xFFFFFFFF
        return Service(self.key, self.scheduler, self.flags, 0, netmask, dests)

    def server(self, text: str) -> ServerConfig | None:
        """Find a server by `addr`, `addr:port` or `[v6]:port` as an operator would type it."""
        for s in self.servers:
            if text in (str(s.key), str(s.address), f"{s.address}:{s.port}"):
                return s
        return None


@dataclass(frozen=True)
class ApiConfig:
    listen: str | None = DEFAULT_LISTEN  # host:port, or None to disable TCP
    socket: str | None = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str | None = None
    token_file: str | None = None


@dataclass(frozen=True)
class KernelConfig:
    module: str = "auto"  # auto | intree | backport
    mh_tab_index: int | None = None  # override detection of CONFIG_IP_VS_MH_TAB_INDEX


@dataclass(frozen=True)
class Config:
    path: str
    sha256: str
    services: tuple[ServiceConfig, ...]
    reconcile_interval: float = 10.0
    state_dir: str = DEFAULT_STATE_DIR
    api: ApiConfig = ApiConfig()
    kernel: KernelConfig = KernelConfig()

    def by_name(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    @cached_property
    def server_count(self) -> int:
        return sum(len(s.servers) for s in self.services)

    @cached_property
    def by_key(self) -> dict[ServiceKey, ServiceConfig]:
        return {s.key: s for s in self.services}

    def edited(
        self,
        services: tuple[ServiceConfig, ...],
        sha256: str,
        dropped: tuple[ServiceConfig, ...],
        added: tuple[ServiceConfig, ...],
    ) -> Config:
        """This config with `services`, in which `added` replaced `dropped`: the derived indexes are
        carried over and patched (a dict copy keeps its hashes) instead of rebuilt from every service."""
        new = replace(self, services=services, sha256=sha256)
        if "by_key" in self.__dict__:
            index = dict(self.by_key)
            for svc in dropped:
                del index[svc.key]
            index.update((svc.key, svc) for svc in added)
            new.__dict__["by_key"] = index
        if "server_count" in self.__dict__:
            change = sum(len(s.servers) for s in added) - sum(len(s.servers) for s in dropped)
            new.__dict__["server_count"] = self.server_count + change
        return new

    def schedulers(self) -> set[str]:
        return {s.scheduler for s in self.services}


def find_config(path: str | None) -> str:
    """The config file to use: the one given, else the first default that exists."""
    if path:
        return path
    return next((p for p in DEFAULT_CONFIGS if Path(p).exists()), DEFAULT_CONFIGS[0])


def load(path: str | Path, mh_slots: int | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, 1, 1, "", f"not UTF-8 text: {exc.reason}")]) from None
    return loads(text, file, mh_slots, hashlib.sha256(data).hexdigest())


def loads(text: str, file: str = "<config>", mh_slots: int | None = None, sha256: str = "") -> Config:
    """Validate config text; `mh_slots` is the running kernel's MH table size (default 4093).

    The collector stays off throughout: parsing and validating 16,000 servers allocates ~10^6
    objects in acyclic trees, and the collections they trigger rescan them all again, which was
    45 % of the load time (0.61 s -> 0.33 s on the host)."""
    with gc_paused():
        return validate(parse(text, file), file, mh_slots, sha256 or hashlib.sha256(text.encode()).hexdigest())[0]


def validate(root: Located, file: str, mh_slots: int | None, sha256: str) -> tuple[Config, _Validator]:
    """The config of a parsed file, and the validator that holds what services inherit (defaults,
    default check, MH slots): `mhd.config.reload` validates edited services against it alone."""
    v = _Validator(file, mh_slots)
    config = v.config(root, sha256)
    if v.problems:
        raise ConfigError(sorted(v.problems, key=lambda p: (p.line, p.column)))
    assert config is not None
    return config, v


# --- validation -------------------------------------------------------------------------------------

TOP_KEYS = ("services", "defaults", "reconcile-interval", "state-dir", "api", "kernel")
SERVICE_KEYS = (
    "name",
    "address",
    "port",
    "protocol",
    "fwmark",
    "family",
    "scheduler",
    "mh-port",
    "mh-fallback",
    "forward",
    "servers",
    "check",
    "min-healthy",
    "adopt",
)
DEFAULT_KEYS = ("protocol", "scheduler", "mh-port", "mh-fallback", "forward", "check", "min-healthy")
SERVER_KEYS = ("address", "port", "weight", "forward", "check")
API_KEYS = ("listen", "socket", "socket-mode", "socket-group", "token-file")
KERNEL_KEYS = ("module", "mh-tab-index")
CHECK_KEYS = (
    "type",
    "interval",
    "timeout",
    "rise",
    "fall",
    "port",
    "source-address",
    "initial-state",
    "method",
    "path",
    "host",
    "expect-status",
    "body-regex",
    "tls-verify",
    "sni",
    "client-cert",
    "client-key",
    "payload",
    "expect",
    "query-name",
    "query-type",
    "expect-rcode",
    "command",
)
CHECK_FIELDS = {k: k.replace("-", "_") for k in CHECK_KEYS} | {"expect": "expect_regex"}


class _Validator:
    """Walks the located tree once, collecting every problem instead of stopping at the first."""

    def __init__(self, file: str, mh_slots: int | None) -> None:
        self.file = file
        self.mh_slots = mh_slots
        self.problems: list[Problem] = []
        self.default_check = CheckSpec()
        self.defaults: dict[str, Located] = {}
        self.identities: list[tuple[str | None, ServiceKey | None, Located]] = []

    # helpers ------------------------------------------------------------------------------------
    def error(self, node: Located, message: str, *, at_key: bool = False) -> None:
        line, col = (node.key_line, node.key_column) if at_key and node.key_line else (node.line, node.column)
        self.problems.append(Problem(self.file, line, col, node.path, message))

    def mapping(self, node: Located, allowed: tuple[str, ...], what: str) -> dict[str, Located] | None:
        if not isinstance(node.value, dict):
            self.error(node, f"{what} must be a mapping (key: value), not {_kind(node.value)}")
            return None
        for key, item in node.value.items():
            if key not in allowed:
                close = did_you_mean(key, allowed)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
                self.error(item, f"unknown key '{key}' in {what}{hint}", at_key=True)
        return dict(node.value)

    def typed(self, node: Located, kind: type[T] | tuple[type, ...], what: str) -> T | None:
        value = node.value
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.error(node, f"{what} must be a number, not a boolean")
            return None
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.error(node, f"{what} must be {_article(names)}, not {_kind(value)} ({value!r})")
            return None
        return value  # type: ignore[return-value]

    def integer(self, node: Located, what: str, lo: int, hi: int, hint: str = "") -> int | None:
        value = self.typed(node, int, what)
        if value is None:
            return None
        if not lo <= value <= hi:
            self.error(node, f"{what} {value} is out of range {lo}..{hi}{hint}")
            return None
        return value

    def duration(self, node: Located, what: str) -> float | None:
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := DURATION_RE.match(value)):
            seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
        else:
            self.error(node, f"{what} must be a duration such as 500ms, 2s or 1m, not {value!r}")
            return None
        if seconds <= 0:
            self.error(node, f"{what} must be greater than zero")
            return None
        return seconds

    def choice(self, node: Located, what: str, choices: tuple[str, ...]) -> str | None:
        value = node.value
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        close = did_you_mean(str(value), choices)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        self.error(node, f"{what} must be one of {', '.join(choices)}, not {value!r}{hint}")
        return None

    def boolean(self, node: Located, what: str) -> bool | None:
        return self.typed(node, bool, what)

    def address(self, node: Located, what: str) -> IPAddress | None:
        try:
            return parse_ip(str(node.value).strip())
        except ValueError:
            self.error(node, f"{what} {node.value!r} is not an IPv4 or IPv6 address")
            return None

    # top level ---------------------------------------------------------------------------------
    def config(self, root: Located, sha256: str) -> Config | None:
        top = self.mapping(root, TOP_KEYS, "the config file")
        if top is None:
            return None
        defaults = self.mapping(top["defaults"], DEFAULT_KEYS, "defaults") if "defaults" in top else {}
        self.defaults = defaults or {}
        if defaults and "check" in defaults:
            self.default_check = self.check(defaults["check"], CheckSpec())
        interval = (
            self.duration(top["reconcile-interval"], "reconcile-interval")
            if "reconcile-interval" in top
            else 10.0
        )
        state_dir = DEFAULT_STATE_DIR
        if "state-dir" in top:
            state_dir = self.typed(top["state-dir"], str, "state-dir") or DEFAULT_STATE_DIR
        api = self.api(top["api"]) if "api" in top else ApiConfig()
        kernel = self.kernel(top["kernel"]) if "kernel" in top else KernelConfig()
        if kernel.mh_tab_index is not None and self.mh_slots is None:
            self.mh_slots = mh_table_size(kernel.mh_tab_index)
        services: list[ServiceConfig] = []
        if "services" not in top:
            self.error(root, "no 'services' list: declare at least an empty list, services: []")
        elif isinstance(top["services"].value, list):
            for item in top["services"].value:
                svc = self.service(item, defaults or {})
                if svc is not None:
                    services.append(svc)
            self.cross_check()
        elif top["services"].value is not None:
            self.error(top["services"], "services must be a list of services (- name: ...)")
        return (
            Config(self.file, sha256, tuple(services), interval or 10.0, state_dir, api, kernel)
            if not self.problems
            else None
        )

    def api(self, node: Located) -> ApiConfig:
        m = self.mapping(node, API_KEYS, "api") or {}
        api = ApiConfig()
        if "listen" in m:
            listen = m["listen"].value
            if listen in (None, False, ""):
                api = replace(api, listen=None)
            elif isinstance(listen, str) and _parse_listen(listen) is not None:
                api = replace(api, listen=listen)
            else:
                self.error(
                    m["listen"],
                    f"api.listen must be host:port such as 127.0.0.1:9180 or [::1]:9180, not {listen!r}",
                )
        if "socket" in m:
            sock = m["socket"].value
            api = replace(api, socket=None if sock in (None, False, "") else str(sock))
        if "socket-mode" in m:
            mode = m["socket-mode"].value
            if isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3}", mode.strip()):
                api = replace(api, socket_mode=int(mode, 8))
            else:  # an unquoted 0660 is YAML 1.1 octal (432): require the quoted form, unambiguous
                self.error(
                    m["socket-mode"],
                    f'api.socket-mode must be a quoted octal mode such as "0660", not {mode!r}',
                )
        if "socket-group" in m:
            api = replace(api, socket_group=self.typed(m["socket-group"], str, "api.socket-group"))
        if "token-file" in m:
            api = replace(api, token_file=self.typed(m["token-file"], str, "api.token-file"))
        return api

    def kernel(self, node: Located) -> KernelConfig:
        m = self.mapping(node, KERNEL_KEYS, "kernel") or {}
        k = KernelConfig()
        if "module" in m:
            k = replace(
                k, module=self.choice(m["module"], "kernel.module", ("auto", "intree", "backport")) or "auto"
            )
        if "mh-tab-index" in m:
            k = replace(k, mh_tab_index=self.integer(m["mh-tab-index"], "kernel.mh-tab-index", 8, 17))
        return k

    # services -----------------------------------------------------------------------------------
    def service(self, node: Located, defaults: dict[str, Located]) -> ServiceConfig | None:
        m = self.mapping(node, SERVICE_KEYS, "a service")
        if m is None:
            return None
        start = len(self.problems)
        merged = {**defaults, **m}
        name = self.service_name(node, m)
        key = self.service_key(node, m, merged)
        self.identities.append((name, key, node))
        scheduler = "mh"
        if "scheduler" in merged:
            sched = self.typed(merged["scheduler"], str, "scheduler")
            if sched is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", sched):
                self.error(
                    merged["scheduler"],
                    f"scheduler {sched!r} is not an IPVS scheduler name (mh, wrr, rr, ...)",
                )
            elif sched == NO_SCHEDULER:
                self.error(
                    merged["scheduler"],
                    "scheduler none schedules no client to any server: give a scheduler (mh, wrr, ...),"
                    " or remove the service",
                )
            scheduler = sched or "mh"
        flags = 0
        for flag_key, bit in (("mh-port", MH_PORT), ("mh-fallback", MH_FALLBACK)):
            if flag_key in merged and self.boolean(merged[flag_key], flag_key):
                if scheduler == "mh":
                    flags |= bit
                elif flag_key in m:  # inherited from defaults: simply not applicable here
                    self.error(
                        m[flag_key],
                        f"{flag_key} only applies to scheduler mh (this service uses {scheduler}): remove it",
                    )
        forward = FORWARD_METHODS["nat"]
        if "forward" in merged:
            fwd = self.choice(merged["forward"], "forward", tuple(FORWARD_METHODS))
            forward = FORWARD_METHODS[fwd] if fwd else forward
        check = self.check(m.get("check"), self.default_check)
        min_healthy = self.min_healthy(merged["min-healthy"]) if "min-healthy" in merged else MinHealthy()
        servers = self.servers(m.get("servers"), node, key, forward, check)
        adopt = "adopt" in m and self.boolean(m["adopt"], "adopt") is True
        if len(self.problems) > start or key is None or name is None:
            return None
        return ServiceConfig(name, key, scheduler, flags, tuple(servers), check, min_healthy, adopt)

    def service_name(self, node: Located, m: dict[str, Located]) -> str | None:
        if "name" not in m:
            self.error(node, "service has no name: add name: <unique name such as web>")
            return None
        name = m["name"].value
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.error(
                m["name"], f"name {name!r} must match [a-z0-9][a-z0-9_.-]* (lower case, digits, _ . -)"
            )
            return None
        return name

    def service_key(
        self, node: Located, m: dict[str, Located], merged: dict[str, Located]
    ) -> ServiceKey | None:
        if "fwmark" in m:
            for k in ("address", "port", "protocol"):
                if k in m:
                    self.error(
                        m[k],
                        f"{k} does not go with fwmark: a fwmark service matches packets by mark; remove {k}",
                    )
            mark = self.integer(m["fwmark"], "fwmark", 1, 0xFFFFFFFF)
            family = socket.AF_INET
            if "family" in m:
                fam = self.choice(m["family"], "family", ("ipv4", "ipv6"))
                family = socket.AF_INET6 if fam == "ipv6" else socket.AF_INET
            return ServiceKey(family, fwmark=mark) if mark else None
        if "family" in m:
            self.error(
                m["family"],
                "family only goes with fwmark; an address service takes its family from the address",
            )
        if "address" not in m:
            self.error(node, "service needs address: and port: (or fwmark:)")
            return None
        addr = self.address(m["address"], "address")
        port = self.integer(m["port"], "port", 1, 65535) if "port" in m else None
        if "port" not in m:
            self.error(node, "service needs a port: (1..65535)")
        proto = "tcp"
        if "protocol" in merged:
            proto = self.choice(merged["protocol"], "protocol", tuple(PROTOCOLS)) or "tcp"
        if addr is None or port is None:
            return None
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        return ServiceKey(family, protocol=PROTOCOLS[proto], address=addr, port=port)

    def min_healthy(self, node: Located) -> MinHealthy:
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return MinHealthy(count=value)
        if isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)):
            pct = float(m.group(1))
            if pct <= 100:
                return MinHealthy(percent=pct)
        self.error(
            node, f'min-healthy must be a count (such as 2) or a percentage (such as "50%"), not {value!r}'
        )
        return MinHealthy()

    def servers(
        self, node: Located | None, svc: Located, key: ServiceKey | None, forward: int, check: CheckSpec
    ) -> list[ServerConfig]:
        if node is None or node.value is None:
            return []
        if not isinstance(node.value, list):
            self.error(node, 'servers must be a list (- address: ... or - "10.0.0.1:80")')
            return []
        out: list[ServerConfig] = []
        seen: dict[DestKey, Located] = {}
        for item in node.value:
            server = self.server(item, key, forward, check)
            if server is None:
                continue
            if server.key in seen:
                self.error(
                    item,
                    f"server {server.key} is listed twice in this service (first at line {seen[server.key].line}): remove one",
                )
                continue
            seen[server.key] = item
            out.append(server)
        if key is not None and key.fwmark == 0 and key.address is not None:
            for s in out:
                if s.address.version != key.address.version and s.forward != FORWARD_METHODS["tunnel"]:
                    self.error(
                        seen[s.key],
                        f"server {s.key} is IPv{s.address.version} but the service is IPv{key.address.version}; only forward: tunnel mixes families",
                    )
        slots = self.mh_slots or mh_table_size()
        if len(out) > slots:
            self.error(
                node,
                f"{len(out)} servers but the kernel's MH table has {slots} slots: the table cannot give every server a slot; split the service or raise CONFIG_IP_VS_MH_TAB_INDEX",
            )
        return out

    def server(
        self, node: Located, key: ServiceKey | None, forward: int, check: CheckSpec
    ) -> ServerConfig | None:
        default_port = key.port if key is not None else 0
        if isinstance(node.value, str):
            parsed = _parse_endpoint(node.value, default_port)
            if parsed is None:
                self.error(node, f"server {node.value!r} is not address, address:port or [v6address]:port")
                return None
            return ServerConfig(parsed[0], parsed[1], 1, forward, check)
        m = self.mapping(node, SERVER_KEYS, "a server")
        if m is None:
            return None
        if "address" not in m:
            self.error(node, "server needs an address:")
            return None
        start = len(self.problems)
        addr = self.address(m["address"], "address")
        port = (
            self.integer(m["port"], "port", 0 if key and key.fwmark else 1, 65535)
            if "port" in m
            else default_port
        )
        weight = 1
        if "weight" in m:
            if m["weight"].value == 0 and not isinstance(m["weight"].value, bool):
                self.error(
                    m["weight"],
                    "weight 0 is not allowed: the in-tree ip_vs_mh keeps a weight-0 server's slots (its flows get no server) while the backport gives them away, so the result depends on the module. Remove the server, or disable it (mhctl disable), instead",
                )
            else:
                weight = self.integer(m["weight"], "weight", 1, 65535) or 1
        if "forward" in m:
            fwd = self.choice(m["forward"], "forward", tuple(FORWARD_METHODS))
            forward = FORWARD_METHODS[fwd] if fwd else forward
        if "check" in m:
            check = self.check(m["check"], check)
        if len(self.problems) > start or addr is None or port is None:
            return None
        return ServerConfig(addr, port, weight, forward, check)

    # checks -------------------------------------------------------------------------------------
    def check(self, node: Located | None, base: CheckSpec) -> CheckSpec:
        """A check block merged key by key over `base` (defaults -> service -> server)."""
        if node is None:
            return base
        m = self.mapping(node, CHECK_KEYS, "check")
        if m is None:
            return base
        start = len(self.problems)
        fields: dict[str, Any] = {}
        for key, item in m.items():
            parser = self._check_fields.get(key)
            if parser is not None:
                value = parser(item)
                if value is not None:
                    fields[CHECK_FIELDS[key]] = value
        if len(self.problems) > start:
            return base
        spec = replace(base, **fields)
        if spec.timeout >= spec.interval:
            self.error(
                m.get("timeout") or m.get("interval") or node,
                f"check timeout ({spec.timeout:g}s) must be shorter than its interval ({spec.interval:g}s)",
            )
        if spec.type == "exec" and not spec.command:
            self.error(node, 'an exec check needs command: ["/path/to/script", "arg"]')
        return spec

    @cached_property
    def _check_fields(self) -> dict[str, Callable[[Located], Any]]:
        """Built once per validator: a file has a check block per service, often per server."""
        def regex(what: str) -> Callable[[Located], Any]:
            def parse_regex(n: Located) -> Any:
                text = self.typed(n, str, what)
                if text is None:
                    return None
                try:
                    re.compile(text)
                except re.error as exc:
                    self.error(n, f"{what} is not a valid regular expression: {exc}")
                    return None
                return text.encode() if what == "expect" else text

            return parse_regex

        return {
            "type": lambda n: self.choice(n, "check.type", CHECK_TYPES),
            "interval": lambda n: self.duration(n, "check.interval"),
            "timeout": lambda n: self.duration(n, "check.timeout"),
            "rise": lambda n: self.integer(n, "check.rise", 1, 100),
            "fall": lambda n: self.integer(n, "check.fall", 1, 100),
            "port": lambda n: self.integer(n, "check.port", 1, 65535),
            "source-address": lambda n: (a := self.address(n, "check.source-address")) and str(a),
            "initial-state": lambda n: self.choice(n, "check.initial-state", ("up", "down")),
            "method": lambda n: (self.choice(n, "check.method", ("get", "head")) or "").upper() or None,
            "path": lambda n: self.path(n),
            "host": lambda n: self.typed(n, str, "check.host"),
            "expect-status": lambda n: self.statuses(n),
            "body-regex": regex("check.body-regex"),
            "tls-verify": lambda n: self.boolean(n, "check.tls-verify"),
            "sni": lambda n: self.typed(n, str, "check.sni"),
            "client-cert": lambda n: self.typed(n, str, "check.client-cert"),
            "client-key": lambda n: self.typed(n, str, "check.client-key"),
            "payload": lambda n: (
                ((p := self.typed(n, str, "check.payload")) is not None and p.encode()) or None
            ),
            "expect": regex("expect"),
            "query-name": lambda n: self.typed(n, str, "check.query-name"),
            "query-type": lambda n: (
                (self.choice(n, "check.query-type", tuple(q.lower() for q in QTYPES)) or "").upper() or None
            ),
            "expect-rcode": lambda n: (
                (self.choice(n, "check.expect-rcode", tuple(r.lower() for r in RCODES)) or "").upper() or None
            ),
            "command": lambda n: self.command(n),
        }

    def path(self, node: Located) -> str | None:
        path = self.typed(node, str, "check.path")
        if path is not None and not path.startswith("/"):
            self.error(node, f"check.path must start with /, such as /healthz (got {path!r})")
            return None
        return path

    def statuses(self, node: Located) -> tuple[tuple[int, int], ...] | None:
        items = node.value if isinstance(node.value, list) else [node]
        ranges: list[tuple[int, int]] = []
        for item in items:
            text = str(item.value).strip()
            m = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", text)
            if not m or not 100 <= int(m.group(1)) <= int(m.group(2) or m.group(1)) <= 599:
                self.error(
                    item,
                    f"check.expect-status {text!r} must be a status (200) or a range (200-399) within 100-599",
                )
                return None
            ranges.append((int(m.group(1)), int(m.group(2) or m.group(1))))
        return tuple(ranges)

    def command(self, node: Located) -> tuple[str, ...] | None:
        value = node.value
        if isinstance(value, str):
            import shlex  # exec checks only

            argv = shlex.split(value)
        elif isinstance(value, list) and all(isinstance(i.value, str | int) for i in value):
            argv = [str(i.value) for i in value]
        else:
            self.error(node, "check.command must be a list of strings (argv) or a command line string")
            return None
        if not argv:
            self.error(node, "check.command is empty")
            return None
        return tuple(argv)

    # across services ----------------------------------------------------------------------------
    def cross_check(self) -> None:
        """Names and virtual services must be unique; checked even for services with other errors."""
        names: dict[str, Located] = {}
        keys: dict[ServiceKey, tuple[str | None, Located]] = {}
        for name, key, node in self.identities:
            if name is not None and name in names:
                self.error(
                    node,
                    f"service name '{name}' is used twice (also at line {names[name].line}): names must be unique",
                )
            if key is not None and key in keys:
                other, first = keys[key]
                self.error(
                    node, f"virtual service {key} is declared twice (also '{other}' at line {first.line})"
                )
            if name is not None:
                names.setdefault(name, node)
            if key is not None:
                keys.setdefault(key, (name, node))


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> list[str]:
    """The closest choice, if any is close (difflib is imported only when a config has a typo)."""
    import difflib

    return difflib.get_close_matches(word, choices, n=1)


def _kind(value: object) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


def _article(name: str) -> str:
    return {"str": "a string", "int": "a whole number", "bool": "true or false", "float": "a number"}.get(
        name, name
    )


def _parse_endpoint(text: str, default_port: int) -> tuple[IPAddress, int] | None:
    """`10.0.0.1`, `10.0.0.1:80`, `2001:db8::1`, `[2001:db8::1]:80`."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", text) or re.fullmatch(r"([0-9.]+)(?::(\d+))?", text)
    try:
        if m:
            addr, port = ipaddress.ip_address(m.group(1)), int(m.group(2)) if m.group(2) else default_port
        else:
            addr, port = ipaddress.ip_address(text), default_port
    except ValueError:
        return None
    return (addr, port) if 0 <= port <= 65535 else None


def _parse_listen(text: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return (host, int(port)) if 0 < int(port) < 65536 else None


def parse_listen(text: str) -> tuple[str, int]:
    """host and port of an api.listen value already validated by load()."""
    parsed = _parse_listen(text)
    assert parsed is not None
    return parsed
