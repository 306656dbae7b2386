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

mhd has one check per server: the first checker of a real server is converted (by
`mhd.importers.kachecks`) and any further one is a note. Whatever has no mhd equivalent (VRRP,
sorry servers, quorum, persistence, digests, SMTP/PING/BFD/FILE checks, notify scripts, ...) is a
note with its file:line and is left out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from mhd.importers import Imported, Note, emit, kaconf
from mhd.importers.emit import Check, ServerOut, ServiceOut
from mhd.importers.kachecks import CHECKERS, NO_EQUIVALENT_CHECKERS, TIMING_KEYS, Checks, Timings
from mhd.importers.kaconf import Node

DEFAULT_SCHEDULER = "wlc"
MAX_GROUP_ADDRESSES = 1024  # one virtual_server_group range entry; beyond: a note, not 16M services
FORWARDING = {"NAT": "nat", "DR": "dr", "TUN": "tunnel"}
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
        self.checks = Checks(notes)

    def note(self, node: Node, message: str) -> None:
        self.notes.append(Note(node.file, node.line, message))

    def run(self, nodes: list[Node]) -> None:
        for node in nodes:
            if node.keyword == "virtual_server_group" and node.children is not None:
                if node.args:
                    self.groups[node.args[0]] = node
            elif node.keyword == "SSL" and node.children is not None:
                self.checks.ssl_block(node)
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
        check = self.checks.first(checkers, timings, virtualhost)
        out = ServerOut(str(ip), port, weight, forward if forward != vs.forward else None)
        return out, check


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
