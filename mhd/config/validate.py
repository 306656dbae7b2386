"""`/etc/mhd.yaml`: parsing and validation into the immutable records of `mhd.config.records`.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mhd.config.checks import CheckReader
from mhd.config.checkspec import CheckSpec
from mhd.config.fleet import FleetReader
from mhd.config.records import (
    DEFAULT_STATE_DIR,
    ApiConfig,
    Config,
    KernelConfig,
    MinHealthy,
    ServerConfig,
    ServiceConfig,
)
from mhd.config.yamlsource import ConfigError, Located, Problem, gc_paused, parse, read, shown
from mhd.model import (
    FORWARD_METHODS,
    MH_FALLBACK,
    MH_PORT,
    NO_SCHEDULER,
    PROTOCOLS,
    DestKey,
    IPAddress,
    ServiceKey,
    mh_table_size,
)

DEFAULT_CONFIGS = ("/etc/mhd/mhd.yaml", "/etc/mhd.yaml")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def find_config(path: str | None) -> str:
    """The config file to use: the one given, else the first default that exists."""
    if path:
        return path
    return next((p for p in DEFAULT_CONFIGS if Path(p).exists()), DEFAULT_CONFIGS[0])


def load(path: str | Path, mh_slots: int | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    file = str(path)
    data = read(path)
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
        return validate(
            parse(text, file), file, mh_slots, sha256 or hashlib.sha256(text.encode()).hexdigest()
        )[0]


@dataclass(frozen=True)
class Inherited:
    """What every service of a file inherits from the rest of it: the `defaults` block, the default
    check built from it, and the MH table size (which `kernel.mh-tab-index` may set). An edited
    service validated against this alone is what a full load of the edited file makes of it."""

    defaults: dict[str, Located]
    check: CheckSpec
    mh_slots: int | None


def validate(root: Located, file: str, mh_slots: int | None, sha256: str) -> tuple[Config, Inherited]:
    """The config of a parsed file, and what its services inherit (for `validate_services`)."""
    v = _Validator(file, mh_slots)
    config = v.config(root, sha256)
    if v.problems:
        raise ConfigError(sorted(v.problems, key=lambda p: (p.line, p.column)))
    assert config is not None
    return config, Inherited(v.defaults, v.default_check, v.mh_slots)


def validate_services(items: Sequence[Located], file: str, inherited: Inherited) -> tuple[ServiceConfig, ...]:
    """Items of a `services` list validated on their own against what they inherit (the seam that
    `mhd.config.reload` re-reads an edit through). Raises ConfigError; names and virtual services
    are not compared with the rest of the file: the caller does that."""
    v = _Validator(file, inherited.mh_slots)
    v.defaults, v.default_check = inherited.defaults, inherited.check
    services = tuple(s for item in items if (s := v.service(item, inherited.defaults)) is not None)
    if v.problems or len(services) != len(items):
        raise ConfigError(sorted(v.problems, key=lambda p: (p.line, p.column)))
    return services


# --- validation -------------------------------------------------------------------------------------

TOP_KEYS = ("services", "defaults", "reconcile-interval", "state-dir", "api", "kernel", "announce")
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
    "announce",
)
DEFAULT_KEYS = ("protocol", "scheduler", "mh-port", "mh-fallback", "forward", "check", "min-healthy")
SERVER_KEYS = ("address", "port", "weight", "forward", "check")
API_KEYS = ("listen", "socket", "socket-mode", "socket-group", "token-file")
KERNEL_KEYS = ("module", "mh-tab-index", "sysctl")


class _Validator(CheckReader, FleetReader):
    """Walks the located tree once, collecting every problem instead of stopping at the first."""

    def __init__(self, file: str, mh_slots: int | None) -> None:
        super().__init__(file)
        self.mh_slots = mh_slots
        self.default_check = CheckSpec()
        self.defaults: dict[str, Located] = {}
        self.identities: list[tuple[str | None, ServiceKey | None, Located]] = []

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
        announce = self.announce_config(top["announce"]) if "announce" in top else None
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
            Config(self.file, sha256, tuple(services), interval or 10.0, state_dir, api, kernel, announce)
            if not self.problems
            else None
        )

    def api(self, node: Located) -> ApiConfig:
        m = self.mapping(node, API_KEYS, "api") or {}
        api = ApiConfig()
        if "listen" in m:
            listen = m["listen"].value
            if listen is None or listen is False or listen == "":
                api = replace(api, listen=None)
            elif isinstance(listen, str) and _parse_listen(listen) is not None:
                api = replace(api, listen=listen)
            else:
                self.error(
                    m["listen"],
                    f"api.listen must be host:port such as 127.0.0.1:9180 or [::1]:9180, not {shown(listen)}",
                )
        if "socket" in m:
            sock = m["socket"].value
            if sock is None or sock is False or sock == "":
                api = replace(api, socket=None)
            elif isinstance(sock, str) and "\0" not in sock:
                api = replace(api, socket=sock)
            else:
                self.error(
                    m["socket"],
                    f"api.socket must be a path such as /run/mhd/mhd.sock, or empty, not {shown(sock)}",
                )
        if "socket-mode" in m:
            mode = m["socket-mode"].value
            if isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3}", mode.strip()):
                api = replace(api, socket_mode=int(mode, 8))
            else:  # an unquoted 0660 is YAML 1.1 octal (432): require the quoted form, unambiguous
                self.error(
                    m["socket-mode"],
                    f'api.socket-mode must be a quoted octal mode such as "0660", not {shown(mode)}',
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
        if "sysctl" in m and m["sysctl"].value is not None:
            k = replace(k, sysctl=self.sysctl_map(m["sysctl"]))
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
                    f"scheduler {shown(sched)} is not an IPVS scheduler name (mh, wrr, rr, ...)",
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
        announce = self.announce_list(m["announce"], key) if "announce" in m else ()
        if len(self.problems) > start or key is None or name is None:
            return None
        return ServiceConfig(name, key, scheduler, flags, tuple(servers), check, min_healthy, adopt, announce)

    def service_name(self, node: Located, m: dict[str, Located]) -> str | None:
        if "name" not in m:
            self.error(node, "service has no name: add name: <unique name such as web>")
            return None
        name = m["name"].value
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.error(
                m["name"], f"name {shown(name)} must match [a-z0-9][a-z0-9_.-]* (lower case, digits, _ . -)"
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
            node,
            f'min-healthy must be a count (such as 2) or a percentage (such as "50%"), not {shown(value)}',
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
                self.error(
                    node, f"server {shown(node.value)} is not address, address:port or [v6address]:port"
                )
                return None
            if parsed[1] == 0 and not (key and key.fwmark):  # as the mapping form: port 0 is fwmark's
                self.error(
                    node, f"server {shown(node.value)}: port 0 is only for fwmark services; give 1..65535"
                )
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
