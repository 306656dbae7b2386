"""The `services:` list of a config: each service, its servers, and the checks across services.

`ServiceReader` is the part of `mhd.config.validate`'s walk that reads a service. What a service
inherits from the rest of the file comes from the caller (the `defaults` block as an argument; the
default check, the MH table size and the kernel module as attributes), so the same reader serves a
whole file and an edited service re-read on its own (`validate_services`, for `mhd.config.reload`).
"""

from __future__ import annotations

import ipaddress
import re
import socket

from mhd.config.checks import CheckReader
from mhd.config.checkspec import CheckSpec
from mhd.config.fleet import FleetReader
from mhd.config.records import QUIESCE_ON_BACKPORT, MinHealthy, OnFailure, ServerConfig, ServiceConfig
from mhd.config.yamlsource import Located, shown
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

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
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
    "on-failure",
    "adopt",
    "announce",
)
SERVER_KEYS = ("address", "port", "weight", "forward", "check")


class ServiceReader(CheckReader, FleetReader):
    """Services and their servers, read against what they inherit; every problem is collected."""

    def __init__(self, file: str, mh_slots: int | None) -> None:
        super().__init__(file)
        self.mh_slots = mh_slots
        self.default_check = CheckSpec()
        self.identities: list[tuple[str | None, ServiceKey | None, Located]] = []
        self.kernel_module = "auto"

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
        on_failure = None
        if "on-failure" in merged:
            on_failure = self.on_failure(merged["on-failure"], scheduler, "on-failure" in m)
        if on_failure == "quiesce":
            flags |= MH_FALLBACK
        announce = self.announce_list(m["announce"], key) if "announce" in m else ()
        if len(self.problems) > start or key is None or name is None:
            return None
        return ServiceConfig(
            name,
            key,
            scheduler,
            flags,
            tuple(servers),
            check,
            min_healthy,
            adopt,
            on_failure or "remove",
            announce,
        )

    def on_failure(self, node: Located, scheduler: str, own: bool) -> OnFailure | None:
        """`remove`, or `quiesce` where it can work: an mh service on the in-tree module."""
        choice = self.choice(node, "on-failure", ("remove", "quiesce"))
        if choice != "quiesce":
            return "remove" if choice else None
        if scheduler != "mh":
            if not own:  # inherited from defaults: the other schedulers keep removing
                return "remove"
            self.error(
                node,
                f"on-failure: quiesce only applies to scheduler mh (this service uses {scheduler}): it keeps a failed server's Maglev slots; use remove",
            )
            return None
        if self.kernel_module == "backport":
            self.error(node, QUIESCE_ON_BACKPORT)
            return None
        return "quiesce"

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
