"""keepalived.conf (2.2) -> mhd.yaml: the `virtual_server` part, with a note for everything else.

Semantics follow keepalived 2.2's parser (keepalived/check/check_parser.c, check_data.c) so that
the imported file programs the same IPVS rules keepalived did:

- a virtual server without `protocol` is UDP, without `lb_algo`/`lvs_sched` it is `wlc`, without
  `lb_kind`/`lvs_method` it is NAT (keepalived's own defaults, not mhd's);
- `mh-port` / `mh-fallback` (and `flag-2` / `flag-1`) count only for the `mh` scheduler set
  *before* them in the block, as in keepalived, which ignores them otherwise;
- `lb_kind`/`lvs_method` words are case-sensitive (NAT, DR, TUN); `protocol` is not;
- timings are inherited virtual server -> real server -> checker: `delay_loop` (default 60 s) is
  mhd's `interval`, `connect_timeout` (default 5 s) its `timeout`, `retry` + 1 its `fall` (a server
  goes down after the first failure plus `retry` failed retries), `rise` is 1 (keepalived brings a
  server up on one success), `alpha` is `initial-state: down`.

mhd has one check per server: the first checker of a real server is converted and any further one
is a note. Whatever has no mhd equivalent (VRRP, sorry servers, quorum, persistence, digests,
SMTP/PING/BFD/FILE checks, notify scripts, ...) is a note with its file:line and is left out.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from mhd.importers import Imported, Note, emit, kaconf
from mhd.importers.emit import Check, ServerOut, ServiceOut
from mhd.importers.kaconf import Node

DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_SCHEDULER = "wlc"
MAX_GROUP_ADDRESSES = 1024  # one virtual_server_group range entry; beyond: a note, not 16M services
FORWARDING = {"NAT": "nat", "DR": "dr", "TUN": "tunnel"}
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "DNS_CHECK", "UDP_CHECK", "MISC_CHECK")
NO_EQUIVALENT_CHECKERS = ("SMTP_CHECK", "PING_CHECK", "BFD_CHECK", "FILE_CHECK")
DNS_TYPES = ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA")
TIMING_KEYS = ("delay_loop", "connect_timeout", "retry", "delay_before_retry", "warmup", "alpha")

ROOT_BLOCKS = {
    "global_defs": "global settings (router_id, notification e-mail, scripts, ...) have no mhd equivalent",
    "vrrp_instance": "VRRP: mhd does not move addresses between directors; keep keepalived for VRRP "
    "(keepalived -P runs only the VRRP part) or announce the VIP with a routing daemon",
    "vrrp_sync_group": "VRRP sync group: no mhd equivalent (see vrrp_instance)",
    "vrrp_script": "VRRP tracking script: no mhd equivalent (see vrrp_instance)",
    "vrrp_track_process": "VRRP process tracking: no mhd equivalent",
    "track_file": "track_file: no mhd equivalent",
    "vrrp_track_file": "track_file: no mhd equivalent",
    "static_ipaddress": "static addresses: configure them with the system (ip addr, systemd-networkd)",
    "static_routes": "static routes: configure them with the system",
    "static_rules": "static rules: configure them with the system",
    "bfd_instance": "BFD: no mhd equivalent",
    "linkbeat_interfaces": "linkbeat: no mhd equivalent",
    "garp_group": "gratuitous ARP groups: no mhd equivalent",
}
VS_NOTES = {
    "persistence_timeout": "persistence: mhd has no persistent services; with scheduler mh a client keeps "
    "its server while the server set is stable (drop mh-port to hash on the client address alone)",
    "persistence_granularity": "persistence granularity: no mhd equivalent",
    "persistence_engine": "persistence engine: no mhd equivalent",
    "sorry_server": "sorry_server: no mhd equivalent (mhd keeps every server in panic below min-healthy)",
    "sorry_server_inhibit": "sorry_server_inhibit: no mhd equivalent",
    "sorry_server_lvs_method": "sorry_server_lvs_method: no mhd equivalent",
    "quorum": "quorum: no mhd equivalent; min-healthy is the closest (it keeps unhealthy servers in IPVS)",
    "hysteresis": "hysteresis: no mhd equivalent",
    "quorum_up": "quorum_up script: no mhd equivalent (alert on mhd_service_state instead)",
    "quorum_down": "quorum_down script: no mhd equivalent (alert on mhd_service_state instead)",
    "omega": "omega: no mhd equivalent",
    "ha_suspend": "ha_suspend: no mhd equivalent (mhd checks whether or not the VIP is local)",
    "smtp_alert": "smtp_alert: mhd sends no e-mail; alert from its metrics",
    "snmp_name": "snmp_name: mhd has no SNMP; names are the service names",
    "inhibit_on_failure": "inhibit_on_failure: mhd removes a failed server instead of setting weight 0",
    "weight": "virtual server weight (quorum accounting): no mhd equivalent",
    "ops": "ops (one-packet scheduling): no mhd equivalent",
    "hashed": "hashed: a kernel-internal flag, not settable: ignored",
    "flag-3": "flag-3: no mhd equivalent",
}
RS_NOTES = {
    "uthreshold": "uthreshold: no mhd equivalent",
    "lthreshold": "lthreshold: no mhd equivalent",
    "notify_up": "notify_up script: no mhd equivalent (alert on mhd_server_up instead)",
    "notify_down": "notify_down script: no mhd equivalent (alert on mhd_server_up instead)",
    "inhibit_on_failure": "inhibit_on_failure: mhd removes a failed server instead of setting weight 0",
    "smtp_alert": "smtp_alert: mhd sends no e-mail; alert from its metrics",
    "snmp_name": "snmp_name: mhd has no SNMP",
}
CHECKER_NOTES = {
    "connect_ip": "connect_ip: mhd probes the server's own address",
    "bind_port": "bind_port: no mhd equivalent",
    "bind_if": "bind_if: no mhd equivalent",
    "fwmark": "checker fwmark: no mhd equivalent",
    "log_all_failures": "log_all_failures: mhd logs health transitions; per-probe failures are in mhd_check_failures",
    "nb_get_retry": "nb_get_retry: deprecated keepalived alias of retry",
    "http_protocol": "http_protocol: mhd sends HTTP/1.1 requests with Connection: close",
    "fast_recovery": "fast_recovery: no mhd equivalent (mhd checks one URL)",
    "min_reply_length": "min_reply_length: no mhd equivalent",
    "max_reply_length": "max_reply_length: no mhd equivalent",
    "misc_dynamic": "misc_dynamic: mhd does not change weights from a script's exit status",
    "user": "user: mhd runs exec checks as its own user",
}


@dataclass
class Timings:
    """Checker timings as keepalived inherits them; None: not set at this level."""

    values: dict[str, tuple[float, Node]] = field(default_factory=dict)

    def over(self, node: Node, notes: list[Note]) -> Timings:
        """These timings with the timing keywords of `node`'s children on top."""
        values = dict(self.values)
        for child in node.children or []:
            if child.keyword in TIMING_KEYS:
                value = _timing(child, notes)
                if value is not None:
                    values[child.keyword] = (value, child)
        return Timings(values)

    def get(self, key: str, default: float) -> float:
        found = self.values.get(key)
        return found[0] if found is not None else default


def _timing(node: Node, notes: list[Note]) -> float | None:
    if node.keyword == "alpha":
        word = node.args[0].lower() if node.args else "on"
        if word in ("on", "true", "yes"):
            return 1.0
        if word in ("off", "false", "no"):
            return 0.0
        notes.append(Note(node.file, node.line, f"alpha {node.args[0]!r} is not a boolean: ignored"))
        return None
    try:
        value = float(node.args[0]) if node.args else None
    except ValueError:
        value = None
    if value is None or value < 0 or value != value or value > 1e6:
        notes.append(Note(node.file, node.line, f"{node.text()}: not a valid number of seconds: ignored"))
        return None
    return value


@dataclass
class VirtualServer:
    """The settings of one `virtual_server` block that apply to each service it stands for."""

    node: Node
    scheduler: str = DEFAULT_SCHEDULER
    mh_port: bool = False
    mh_fallback: bool = False
    forward: str = "nat"
    protocol: str | None = None
    family: str | None = None
    virtualhost: str | None = None
    timings: Timings = field(default_factory=Timings)


class Converter:
    def __init__(self, notes: list[Note]) -> None:
        self.notes = notes
        self.services: list[ServiceOut] = []
        self.keys: dict[tuple[object, ...], Node] = {}
        self.groups: dict[str, Node] = {}
        self.ssl: dict[str, str] = {}

    def note(self, node: Node, message: str) -> None:
        self.notes.append(Note(node.file, node.line, message))

    def run(self, nodes: list[Node]) -> None:
        for node in nodes:
            if node.keyword == "virtual_server_group" and node.children is not None:
                if node.args:
                    self.groups[node.args[0]] = node
            elif node.keyword == "SSL" and node.children is not None:
                self.ssl_block(node)
        for node in nodes:
            if node.keyword == "virtual_server":
                if node.children is None:
                    self.note(node, f"'{node.text()}' has no {{ ... }} block: left out")
                else:
                    self.virtual_server(node)
            elif node.keyword in ("virtual_server_group", "SSL") and node.children is not None:
                continue
            elif node.keyword in ROOT_BLOCKS:
                self.note(node, f"{node.keyword}: {ROOT_BLOCKS[node.keyword]}; left out")
            elif node.keyword == "net_namespace":
                self.note(
                    node,
                    "net_namespace: run mhd in that namespace (ip netns exec, or NetworkNamespacePath= in its unit)",
                )
            elif node.keyword:
                self.note(node, f"'{node.keyword}' is not a keepalived LVS keyword mhd knows: left out")

    def ssl_block(self, node: Node) -> None:
        for child in node.children or []:
            if child.keyword in ("certificate", "key") and child.args:
                self.ssl["client-cert" if child.keyword == "certificate" else "client-key"] = child.args[0]
            else:
                self.note(
                    child,
                    f"SSL {child.keyword}: no mhd equivalent (an https check has client-cert and client-key only)",
                )

    # virtual servers --------------------------------------------------------------------------
    def virtual_server(self, node: Node) -> None:
        vs = self.settings(node)
        servers = [
            s
            for s in (
                self.real_server(vs, child) for child in node.children or [] if child.keyword == "real_server"
            )
            if s
        ]
        keys = list(self.service_keys(node, vs))
        if not keys:
            return
        checks = [c for _, c in servers]
        shared = checks[0] if checks and all(c == checks[0] for c in checks) else None
        for name, fields in keys:
            family = 6 if ":" in str(fields.get("address") or "") or fields.get("family") == "ipv6" else 4
            members = []
            for server, check in servers:
                server_family = 6 if ":" in server.address else 4
                if server_family != family and (server.forward or vs.forward) != "tunnel":
                    self.note(
                        node,
                        f"real server {server.address} is IPv{server_family} but {name} is IPv{family}; keepalived skips it: left out",
                    )
                    continue
                members.append(
                    ServerOut(
                        server.address,
                        server.port or int(str(fields.get("port") or 0)),
                        server.weight,
                        server.forward,
                        None if shared is not None else check,
                    )
                )
            svc = ServiceOut(
                source=f"{node.where()}: {node.text()}", name=name, scheduler=vs.scheduler, forward=vs.forward,
                mh_port=vs.mh_port, mh_fallback=vs.mh_fallback, check=shared, servers=members, **fields,  # type: ignore[arg-type]
            )  # fmt: skip
            if svc.scheduler == "mh" and len(members) > 1:
                self.order_note(node, svc)
            self.services.append(svc)

    def order_note(self, node: Node, svc: ServiceOut) -> None:
        """keepalived adds servers in file order and the kernel puts each new one at the head of its
        list; mhd wants ascending addresses, head first. Say so when the first apply re-sends some."""

        def key(s: ServerOut) -> tuple[int, int, int]:
            a = ipaddress.ip_address(s.address)
            return (a.version, int(a), s.port)

        kernel = [key(s) for s in reversed(svc.servers)]
        if kernel != sorted(kernel):
            self.note(
                node,
                f"{svc.name}: keepalived's kernel list (servers in reverse file order) is not mhd's canonical order (ascending address); mhd's first apply re-sends servers, which moves some flows once. List the servers in descending address order in keepalived.conf first to avoid it",
            )

    def service_keys(self, node: Node, vs: VirtualServer) -> Iterator[tuple[str, dict[str, object]]]:
        """(name, identity fields) of each IPVS service the block stands for."""
        args = node.args
        if len(args) >= 2 and args[0] == "group":
            group = self.groups.get(args[1])
            if group is None:
                self.note(node, f"virtual_server_group {args[1]} is not defined: left out")
                return
            for entry in group.children or []:
                yield from self.group_entry(node, vs, args[1], entry)
            return
        if len(args) >= 2 and args[0] == "fwmark":
            if vs.protocol is not None:
                self.note(node, "protocol with a fwmark service: keepalived ignores it, and so does mhd")
            yield from self.fwmark_key(node, vs, args[1], "")
            return
        if not args:
            self.note(node, "virtual_server without an address: left out")
            return
        yield from self.address_key(node, vs, args[0], args[1] if len(args) > 1 else None, "")

    def fwmark_key(
        self, node: Node, vs: VirtualServer, text: str, prefix: str
    ) -> Iterator[tuple[str, dict[str, object]]]:
        if not text.isdigit() or not 0 < int(text) <= 0xFFFFFFFF:
            self.note(node, f"fwmark {text!r} is not 1..4294967295: left out")
            return
        mark = int(text)
        if self.unique(node, ("fwmark", mark, vs.family)):
            yield f"{prefix}fwmark-{mark}", {"fwmark": mark, "family": vs.family}

    def address_key(
        self, node: Node, vs: VirtualServer, addr: str, port: str | None, prefix: str
    ) -> Iterator[tuple[str, dict[str, object]]]:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            self.note(node, f"{addr!r} is not an IP address (keepalived needs one; mhd too): left out")
            return
        if port is None or not port.isdigit() or int(port) == 0:
            self.note(
                node, f"{addr} has no port (a persistent port-0 service): mhd services need a port: left out"
            )
            return
        if int(port) > 65535:
            self.note(node, f"port {port} is out of range: left out")
            return
        protocol = vs.protocol or "udp"
        if self.unique(node, (protocol, ip, int(port))):
            yield (
                f"{prefix}{protocol}-{ip}-{port}",
                {"address": str(ip), "port": int(port), "protocol": protocol},
            )

    def unique(self, node: Node, key: tuple[object, ...]) -> bool:
        first = self.keys.get(key)
        if first is not None:
            self.note(node, f"this virtual service is already declared at {first.where()}: left out")
            return False
        self.keys[key] = node
        return True

    def group_entry(
        self, node: Node, vs: VirtualServer, group: str, entry: Node
    ) -> Iterator[tuple[str, dict[str, object]]]:
        prefix = f"{group}-"
        if entry.keyword == "fwmark":
            if len(entry.args) > 1 and entry.args[1] in ("inet", "inet6"):
                vs = replace(vs, family="ipv6" if entry.args[1] == "inet6" else "ipv4")
            yield from self.fwmark_key(entry, vs, entry.args[0] if entry.args else "", prefix)
            return
        addresses = self.expand_range(entry)
        if addresses is None:
            return
        port = entry.args[0] if entry.args else None
        for ip in addresses:
            yield from self.address_key(entry, vs, ip, port, prefix)

    def expand_range(self, entry: Node) -> list[str] | None:
        """A virtual_server_group address entry: one address, a.b.c.d-e, a.b.c.d-e.f.g.h, or a prefix."""
        text = entry.keyword
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                first, last = int(net.network_address), int(net.broadcast_address)
                version = net.version
            elif "-" in text:
                start, end = text.split("-", 1)
                first_ip = ipaddress.ip_address(start)
                version = first_ip.version
                if (version == 4 and "." not in end) or (version == 6 and ":" not in end):
                    # the last octet (IPv4, decimal) or group (IPv6, hex) changes
                    base = int(first_ip) - (int(first_ip) & (0xFF if version == 4 else 0xFFFF))
                    last = base + int(end, 10 if version == 4 else 16)
                else:
                    last = int(ipaddress.ip_address(end))
                first = int(first_ip)
            else:
                return [str(ipaddress.ip_address(text))]
        except ValueError:
            self.note(
                entry, f"virtual_server_group entry {text!r} is not an address, range or prefix: left out"
            )
            return None
        if last < first:
            self.note(entry, f"virtual_server_group range {text!r} ends before it starts: left out")
            return None
        if last - first + 1 > MAX_GROUP_ADDRESSES:
            self.note(
                entry,
                f"virtual_server_group range {text!r} has {last - first + 1} addresses (at most {MAX_GROUP_ADDRESSES} are converted): left out",
            )
            return None
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        return [str(make(i)) for i in range(first, last + 1)]

    def settings(self, node: Node) -> VirtualServer:
        vs = VirtualServer(node)
        vs.timings = Timings().over(node, self.notes)
        for child in node.children or []:
            k, args = child.keyword, child.args
            if k in ("lb_algo", "lvs_sched"):
                if args and re.fullmatch(r"[a-z][a-z0-9_]{0,15}", args[0]) and args[0] != "none":
                    vs.scheduler = args[0]
                else:
                    self.note(
                        child,
                        f"{child.text()}: not a scheduler name; keepalived ignores it ({DEFAULT_SCHEDULER} stays)",
                    )
            elif k in ("mh-port", "mh-fallback", "flag-1", "flag-2", "sh-port", "sh-fallback"):
                self.flag(vs, child)
            elif k in ("lb_kind", "lvs_method"):
                vs.forward = self.forwarding(child, vs.forward)
            elif k == "protocol":
                proto = args[0].lower() if args else ""
                if proto in ("tcp", "udp", "sctp"):
                    vs.protocol = proto
                else:
                    self.note(child, f"{child.text()}: unknown protocol, ignored (keepalived ignores it too)")
            elif k == "ip_family":
                if args and args[0] in ("inet", "inet6"):
                    vs.family = "ipv6" if args[0] == "inet6" else "ipv4"
                else:
                    self.note(child, f"{child.text()}: not inet or inet6: ignored")
            elif k == "virtualhost":
                vs.virtualhost = args[0] if args else None
            elif k in VS_NOTES:
                self.note(child, f"{VS_NOTES[k]}: left out")
            elif k in ("real_server", *TIMING_KEYS):
                continue
            else:
                self.note(child, f"'{k}' in virtual_server: not a keyword mhd knows: left out")
        if node.args and node.args[0] == "fwmark" and vs.family is None:
            vs.family = self.fwmark_family(node)
        if vs.protocol is None and not (node.args and node.args[0] == "fwmark"):
            self.note(
                node,
                "no protocol: keepalived defaults to UDP, and so does this import (add protocol TCP if that was meant)",
            )
        if "warmup" in vs.timings.values:
            self.note(
                vs.timings.values["warmup"][1],
                "warmup: mhd spreads first probes over the interval by itself: left out",
            )
        return vs

    def fwmark_family(self, node: Node) -> str | None:
        """keepalived takes a fwmark service's family from its real servers."""
        families = set()
        for child in node.children or []:
            if child.keyword == "real_server" and child.args:
                families.add("ipv6" if ":" in child.args[0] else "ipv4")
        return "ipv6" if families == {"ipv6"} else None

    def flag(self, vs: VirtualServer, node: Node) -> None:
        k = node.keyword
        if vs.scheduler == "mh" and k in ("mh-port", "flag-2"):
            vs.mh_port = True
        elif vs.scheduler == "mh" and k in ("mh-fallback", "flag-1"):
            vs.mh_fallback = True
        elif k.startswith("mh-"):
            self.note(
                node, f"{k} before or without 'lvs_sched mh': keepalived ignores it, so does this import"
            )
        else:
            self.note(
                node,
                f"{k} with scheduler {vs.scheduler}: no mhd equivalent (mhd sets flags for mh only): left out",
            )

    def forwarding(self, node: Node, current: str) -> str:
        word = node.args[0] if node.args else ""
        if word not in FORWARDING:
            self.note(
                node,
                f"{node.text()}: keepalived knows NAT, DR and TUN (upper case) and ignores this: {current} stays",
            )
            return current
        if len(node.args) > 1:
            self.note(
                node,
                f"tunnel options {' '.join(node.args[1:])}: mhd tunnels are ipip without options: left out",
            )
        return FORWARDING[word]

    # real servers ---------------------------------------------------------------------------------
    def real_server(self, vs: VirtualServer, node: Node) -> tuple[ServerOut, Check | None] | None:
        args = node.args
        try:
            ip = ipaddress.ip_address(args[0]) if args else None
        except ValueError:
            ip = None
        if ip is None:
            self.note(
                node, f"real_server {' '.join(args)!r}: not an IP address; keepalived skips it: left out"
            )
            return None
        port = 0
        if len(args) > 1:
            if not args[1].isdigit() or int(args[1]) > 65535:
                self.note(
                    node, f"real_server port {args[1]!r} is not 0..65535; keepalived skips it: left out"
                )
                return None
            port = int(args[1])
        elif not (vs.node.args and vs.node.args[0] == "fwmark"):
            self.note(node, f"real_server {ip} without a port: the service's port is used")
        weight, forward = 1, vs.forward
        timings = vs.timings.over(node, self.notes)
        checkers: list[Node] = []
        virtualhost = vs.virtualhost
        for child in node.children or []:
            k = child.keyword
            if k == "weight":
                w = child.args[0] if child.args else ""
                if not re.fullmatch(r"-?\d+", w) or not 0 < int(w) <= 65535:
                    why = (
                        "mhd refuses weight 0 (remove or disable a server instead)"
                        if w == "0"
                        else "not 1..65535"
                    )
                    self.note(child, f"real_server {ip} weight {w}: {why}: server left out")
                    return None
                weight = int(w)
            elif k == "lvs_method":
                forward = self.forwarding(child, forward)
            elif k == "virtualhost":
                virtualhost = child.args[0] if child.args else None
            elif k in CHECKERS or k in NO_EQUIVALENT_CHECKERS:
                checkers.append(child)
            elif k in RS_NOTES:
                self.note(child, f"{RS_NOTES[k]}: left out")
            elif k not in TIMING_KEYS:
                self.note(child, f"'{k}' in real_server: not a keyword mhd knows: left out")
        check = None
        for i, checker in enumerate(checkers):
            if checker.keyword in NO_EQUIVALENT_CHECKERS:
                self.note(checker, f"{checker.keyword}: mhd has no such check: left out")
            elif check is not None or (i and any(c.keyword in CHECKERS for c in checkers[:i])):
                self.note(
                    checker,
                    f"{checker.keyword}: mhd runs one check per server (the first one, above): left out",
                )
            else:
                check = self.check(checker, timings.over(checker, self.notes), virtualhost)
        out = ServerOut(str(ip), port, weight, forward if forward != vs.forward else None)
        return out, check

    # checks ---------------------------------------------------------------------------------------
    def check(self, node: Node, timings: Timings, virtualhost: str | None) -> Check | None:
        kind = node.keyword
        check: Check = {}
        if kind == "TCP_CHECK":
            check["type"] = "tcp"
        elif kind in ("HTTP_GET", "SSL_GET"):
            check.update(self.http(node, virtualhost, kind == "SSL_GET"))
        elif kind == "DNS_CHECK":
            check.update(self.dns(node))
        elif kind == "UDP_CHECK":
            check.update(self.udp(node))
        else:
            command = self.misc(node)
            if command is None:
                return None
            check.update(type="exec", command=command)
        for child in node.children or []:
            k = child.keyword
            if k == "connect_port":
                if child.args and child.args[0].isdigit() and 0 < int(child.args[0]) <= 65535:
                    check["port"] = int(child.args[0])
                else:
                    self.note(child, f"{child.text()}: not a port 1..65535: ignored")
            elif k == "bindto":
                try:
                    check["source-address"] = str(ipaddress.ip_address(child.args[0]))
                except (ValueError, IndexError):
                    self.note(child, f"{child.text()}: not an IP address: ignored")
            elif k in CHECKER_NOTES:
                self.note(child, f"{CHECKER_NOTES[k]}: left out")
        self.timings(node, kind, timings, check)
        return check

    def timings(self, node: Node, kind: str, timings: Timings, check: Check) -> None:
        interval = timings.get("delay_loop", DEFAULT_DELAY_LOOP) or DEFAULT_DELAY_LOOP
        timeout = timings.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        if kind == "MISC_CHECK":
            misc = next((c for c in node.children or [] if c.keyword == "misc_timeout"), None)
            value = _timing(misc, self.notes) if misc is not None else None
            if not value:
                timeout = round(interval * 0.8, 3)
                self.note(
                    node,
                    f"MISC_CHECK without misc_timeout: keepalived lets the script run for up to delay_loop ({interval:g}s); mhd's timeout must be shorter than the interval: {emit.duration(timeout)}",
                )
            else:
                timeout = value
        if timeout >= interval or timeout <= 0:
            new = round(interval * 0.8, 3)
            self.note(
                node,
                f"{kind}: timeout {timeout:g}s is not shorter than the interval (delay_loop {interval:g}s), which mhd requires: timeout {emit.duration(new)}",
            )
            timeout = new
        retry = int(timings.get("retry", {"DNS_CHECK": 3, "MISC_CHECK": 0}.get(kind, 1)))
        fall = min(100, retry + 1)
        check.update(interval=emit.duration(interval), timeout=emit.duration(timeout), rise=1, fall=fall)
        if timings.get("alpha", 0.0):
            check["initial-state"] = "down"
        if retry and "delay_before_retry" in timings.values:
            delay = timings.values["delay_before_retry"]
            if delay[0] != interval:
                self.note(
                    delay[1],
                    f"delay_before_retry {delay[0]:g}s: mhd probes every interval ({interval:g}s) also after a failure, so a failing server is removed after about {fall * interval:g}s instead of {interval + retry * delay[0]:g}s; lower interval or fall to detect sooner",
                )

    def http(self, node: Node, virtualhost: str | None, tls: bool) -> Check:
        check: Check = {
            "type": "https" if tls else "http",
            "method": "GET",
            "path": "/",
            "expect-status": ["200-299"],
        }
        urls = [c for c in node.children or [] if c.keyword == "url"]
        sni = False
        for child in node.children or []:
            if child.keyword == "virtualhost" and child.args:
                virtualhost = child.args[0]
            elif child.keyword == "enable_sni":
                sni = True
        for i, url in enumerate(urls):
            if i:
                self.note(url, "a further url: mhd checks one URL per server (the first): left out")
                continue
            for item in url.children or []:
                k, args = item.keyword, item.args
                if k == "path" and args:
                    check["path"] = args[0] if args[0].startswith("/") else "/" + args[0]
                elif k == "status_code" and args:
                    codes = [a for a in args if re.fullmatch(r"[1-5]\d\d(-[1-5]\d\d)?", a)]
                    if len(codes) != len(args):
                        self.note(item, f"{item.text()}: only codes and ranges within 100-599 are kept")
                    if codes:
                        check["expect-status"] = codes
                elif k == "digest":
                    self.note(
                        item,
                        "digest: mhd does not hash bodies; match the body with body-regex instead: left out",
                    )
                elif k == "virtualhost" and args:
                    virtualhost = args[0]
                elif k == "regex" and args:
                    check["body-regex"] = args[0]
                elif k == "regex_no_match":
                    check.pop("body-regex", None)
                    self.note(item, "regex_no_match: mhd has no negated body match: the regex is left out")
                else:
                    self.note(item, f"url {k}: no mhd equivalent: left out")
        if virtualhost:
            check["host"] = virtualhost
        if tls:
            check["tls-verify"] = False  # keepalived's SSL_GET does not verify the server certificate
            if sni and virtualhost:
                check["sni"] = virtualhost
            elif sni:
                self.note(node, "enable_sni without a virtualhost: mhd needs the name to send: left out")
            check.update(self.ssl)
        return check

    def dns(self, node: Node) -> Check:
        check: Check = {"type": "dns", "query-type": "SOA", "query-name": "."}
        for child in node.children or []:
            if child.keyword == "type" and child.args:
                if child.args[0].upper() in DNS_TYPES:
                    check["query-type"] = child.args[0].upper()
                else:
                    self.note(child, f"{child.text()}: not a type keepalived knows: SOA kept")
            elif child.keyword == "name" and child.args:
                check["query-name"] = child.args[0]
        return check

    def udp(self, node: Node) -> Check:
        check: Check = {"type": "udp"}
        reply = False
        for child in node.children or []:
            if child.keyword == "payload":
                data = _hex(" ".join(child.args))
                if data is None or any(b >= 0x80 for b in data):
                    self.note(child, "payload: mhd payloads are text (ASCII here); this one is not: left out")
                else:
                    check["payload"] = data.decode("ascii")
            elif child.keyword == "require_reply":
                reply = True
                if child.args:
                    pattern = _reply_regex(" ".join(child.args))
                    if pattern is None:
                        self.note(child, "require_reply: not a hex string: any reply is accepted")
                    else:
                        check["expect"] = pattern
        if not reply:
            self.note(
                node,
                "UDP_CHECK without require_reply passes when no ICMP error comes back; mhd's udp check needs a reply: make sure the server answers the payload, or use type: none",
            )
        return check

    def misc(self, node: Node) -> list[str] | None:
        path = next((c for c in node.children or [] if c.keyword == "misc_path"), None)
        if path is None or not path.args:
            self.note(node, "MISC_CHECK without misc_path: left out")
            return None
        try:
            argv = shlex.split(" ".join(path.args))
        except ValueError as exc:
            self.note(path, f"misc_path cannot be split into arguments ({exc}): left out")
            return None
        if not argv:
            self.note(path, "misc_path is empty: left out")
            return None
        self.note(
            path,
            "MISC_CHECK -> exec: mhd passes MHD_SERVICE, MHD_SERVER_ADDRESS and MHD_SERVER_PORT in the environment; check the script does not rely on anything else",
        )
        return argv


def _hex(text: str) -> bytes | None:
    """keepalived's free-form hex: `Ab12f 3 456` is AB 12 0F 03 45 06 (each word split in bytes)."""
    out = bytearray()
    for word in text.split():
        if not re.fullmatch(r"[0-9A-Fa-f]+", word):
            return None
        if len(word) % 2:
            word = word[:-1] + "0" + word[-1]
        out += bytes.fromhex(word)
    return bytes(out)


def _reply_regex(text: str) -> str | None:
    """A require_reply hex string (X: any nibble) as a regex anchored at the reply's start."""
    parts = []
    for word in text.split():
        if not re.fullmatch(r"[0-9A-Fa-fXx]+", word):
            return None
        if len(word) % 2:
            word = word[:-1] + "0" + word[-1]
        for i in range(0, len(word), 2):
            byte = word[i : i + 2]
            parts.append("." if "x" in byte.lower() else f"\\x{byte.lower()}")
    return "^" + "".join(parts) if parts else None


def convert(nodes: list[Node], notes: Iterable[Note], source: str) -> Imported:
    """mhd.yaml text and notes from a parsed keepalived configuration."""
    c = Converter(list(notes))
    c.run(nodes)
    header = [
        f"mhd.yaml imported from the keepalived configuration {source}",
        "by mhctl import keepalived: the virtual_server part only. Review every note below, then",
        "`mhctl check` this file and `mhctl plan` it on the director before switching.",
    ]
    notes_sorted = tuple(sorted(c.notes, key=lambda n: (n.file != source, n.file, n.line)))
    return Imported(emit.render(c.services, notes_sorted, header), notes_sorted, len(c.services))


def convert_file(path: str, config_id: str | None = None) -> Imported:
    """Read keepalived.conf at `path` (and its includes) and convert it; ImportFailed if unreadable."""
    nodes, notes = kaconf.read(path, config_id)
    return convert(nodes, notes, path)
