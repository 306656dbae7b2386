"""A director fleet in one kernel: an ECMP router running BIRD, directors, real servers, a client.

Everything runs in network namespaces of one (guest) kernel, so the real-kernel suite can show
end to end what happens to long-lived TCP connections when ECMP moves flows between IPVS
directors (issue 13, section 5).  Only the standard library is used (cheap to import under TCG).

Topology (defaults; N directors, M real servers)::

                      client ns: eth0 10.20.0.2/24, default via 10.20.0.1
                          |
    router ns: cl0 10.20.0.1/24;  br0 10.30.0.1/24 = bridge of d1..dN, s1..sM (the "LAN")
               BIRD: eBGP AS 65000 to every director, kernel protocol with `merge paths`
               -> VIP/32 nexthop via 10.30.0.11 nexthop via 10.30.0.12 ... (ECMP, L4 hash)
                          |  (bridge ports dI / sJ, veth peers named lan0)
    director I ns: lan0 10.30.0.(10+I)/24, VIP/32 on lo, default via 10.30.0.1,
                   IPVS in direct-routing mode (fed by ipvsadm, or later by mhd),
                   BIRD: kernel protocol `learn`s kernel table 100, keeps only routes whose
                   protocol number is 250, eBGP AS 65001 exports them to the router
    server J ns:   lan0 10.30.0.(100+J)/24, VIP/32 on lo (arp_ignore=1, arp_announce=2),
                   default via 10.30.0.1 (replies go straight to the router: DR),
                   fleet_conns.py echo server on 0.0.0.0:PORT greeting "S<J>"

Announcing a VIP from director I = putting `blackhole VIP/32 table 100 proto 250` into director
I's kernel (`Fleet.announce`), which is exactly what mhd will do for its `announce:` table:
BIRD learns the route, BGP carries it, the router's BIRD merges the equal BGP routes into one
multipath kernel route.  Withdrawing = deleting it.  The route type does not matter to BIRD
or BGP (the table is never used for forwarding: no `ip rule` points at it); blackhole needs no
interface.  Protocol 250 is unassigned in iproute2's rt_protos (186-192 are bgp, isis, ospf,
rip, eigrp; 250 is free); the director's BIRD imports only routes carrying it, so nothing
else that lands in table 100 is ever announced.

BIRD runs in the foreground per namespace with its config, control socket and log under a
guest-local run directory (/run/mhd-fleet-PID-N: unix sockets cannot live on the 9p share).
BGP timers are short (hold 9 s, keepalive 3 s) so a dead director is noticed within seconds;
graceful restart is off so that its routes go away instead of being kept as stale.

Usage (see test_fleet.py)::

    factory = nsh.NetnsFactory()
    fleet = Fleet.build(factory, FleetSpec())
    try:
        fleet.start_birds(); fleet.wait_bgp()
        fleet.start_servers()
        for d in fleet.directors: fleet.ipvsadm_service(d.index, order=[0, 1, 2, 3, 4])
        for d in fleet.directors: fleet.announce(d.index)
        fleet.wait_fib(len(fleet.directors))
        with fleet.hold(3000) as h: h.wait_opened(); ...; h.report()
    finally:
        fleet.close(); factory.cleanup()

A later mhd test replaces `ipvsadm_service` + `announce` by one mhd per director namespace
(`daemon_proc.Daemon.make(d.ns, ...)`) whose config lists `fleet.server_ips()` with forwarding
method "route" and `announce: {table: spec.table, protocol: spec.route_proto}`; everything
else (BIRD, router, servers, client, the waits and the holder) stays the same.  Pass
`FleetSpec(director_sysctls=())` to leave the IPVS sysctls to mhd's `kernel.sysctl:`, and
`director_vip_on_lo=False` when mhd owns the VIP (`announce.vip-interface`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns as nsh

HERE = Path(__file__).resolve().parent
CONNS_SCRIPT = HERE / "fleet_conns.py"

# Defaults for a director's IPVS in an active/active fleet: schedule mid-connection packets
# that ECMP moved here (sloppy_tcp), no netfilter conntrack for IPVS connections, and drop
# (rather than black-hole) packets of connections whose real server was removed.
DIRECTOR_SYSCTLS: tuple[tuple[str, int], ...] = (
    ("net.ipv4.vs.sloppy_tcp", 1),
    ("net.ipv4.vs.conntrack", 0),
    ("net.ipv4.vs.expire_nodest_conn", 1),
)


class FleetError(RuntimeError):
    """The testbed could not be built or did not reach the expected state."""


def bird_unavailable_reason() -> str | None:
    """None if BIRD 2 (bird, birdc) is installed, else why the fleet tests must be skipped."""
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package bird2; scripts/setup installs it)"
    return None


@dataclass(frozen=True)
class FleetSpec:
    """Sizes, addresses and BGP parameters of a fleet (the defaults are documented above)."""

    directors: int = 3
    servers: int = 5
    vip: str = "10.0.100.1"
    port: int = 8080
    table: int = 100
    route_proto: int = 250
    router_as: int = 65000
    director_as: int = 65001
    hold_time: int = 9
    keepalive_time: int = 3
    lan: str = "10.30.0"
    client_lan: str = "10.20.0"
    director_sysctls: tuple[tuple[str, int], ...] = DIRECTOR_SYSCTLS
    director_vip_on_lo: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.directors <= 80 or not 1 <= self.servers <= 150:
            raise ValueError("directors must be 1..80 and servers 1..150")


@dataclass
class Director:
    index: int  # 0-based
    ns: str
    ip: str
    port_name: str  # its bridge port in the router namespace
    bird: Bird | None = None


@dataclass
class Server:
    index: int
    ns: str
    ip: str
    port_name: str
    proc: subprocess.Popen[bytes] | None = None


def _mac(kind: int, index: int, side: int) -> str:
    """A unique locally administered MAC (random ones repeat in a fresh guest)."""
    return f"02:66:{kind:02x}:{index >> 8:02x}:{index & 255:02x}:{side:02x}"


# ---------------------------------------------------------------------------------------------
# rtnetlink, in-process (a subprocess costs 0.3-1 s under TCG; timings want better)

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLM_F_REPLACE, _NLM_F_CREATE = 0x100, 0x400
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_MULTIPATH, _RTA_TABLE = 1, 4, 5, 9, 15
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_NLMSG = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")
_RTNH = struct.Struct("=HBBi")


@dataclass(frozen=True)
class Route:
    dst: str
    dst_len: int
    table: int
    protocol: int
    type: int
    gateways: tuple[str, ...]


def _attrs(data: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(data, off)
        if alen < 4:
            break
        yield atype & 0x3FFF, data[off + 4:off + alen]
        off += (alen + 3) & ~3


def _parse_route(body: bytes) -> Route:
    fam, dst_len, _src, _tos, table, proto, _scope, rtype, _fl = _RTMSG.unpack_from(body, 0)
    dst = "0.0.0.0"
    gws: list[str] = []
    for atype, val in _attrs(body, _RTMSG.size, len(body)):
        if atype == _RTA_DST:
            dst = socket.inet_ntop(fam, val)
        elif atype == _RTA_TABLE:
            table = struct.unpack("=I", val)[0]
        elif atype == _RTA_GATEWAY:
            gws.append(socket.inet_ntop(fam, val))
        elif atype == _RTA_MULTIPATH:
            off = 0
            while off + _RTNH.size <= len(val):
                nh_len = _RTNH.unpack_from(val, off)[0]
                for a2, v2 in _attrs(val, off + _RTNH.size, off + nh_len):
                    if a2 == _RTA_GATEWAY:
                        gws.append(socket.inet_ntop(fam, v2))
                off += (nh_len + 3) & ~3
    return Route(dst, dst_len, table, proto, rtype, tuple(sorted(gws)))


class Rtnl:
    """A NETLINK_ROUTE socket opened inside namespace `ns` (usable from any thread after)."""

    def __init__(self, ns: str) -> None:
        with nsh.in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = itertools.count(int(time.time()) & 0xFFFF)

    def close(self) -> None:
        self.sock.close()

    def _request(self, mtype: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        seq = next(self.seq)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(payload), mtype, flags, seq, 0) + payload)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _NLMSG.size <= len(data):
                mlen, rtype, _f, rseq, _pid = _NLMSG.unpack_from(data, off)
                body = data[off + _NLMSG.size:off + mlen]
                off += (mlen + 3) & ~3
                if rseq != seq:
                    continue
                if rtype == _NLMSG_DONE:
                    return out
                if rtype == _NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0]
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return out
                out.append((rtype, body))

    def routes(self, table: int | None = 254) -> list[Route]:
        """IPv4 routes of `table` (None: every table)."""
        msgs = self._request(_RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP,
                             _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))
        routes = [_parse_route(b) for t, b in msgs if t == _RTM_NEWROUTE]
        return [r for r in routes if table is None or r.table == table]

    def _route_msg(self, dst: str, plen: int, table: int, proto: int, rtype: int) -> bytes:
        addr = socket.inet_pton(socket.AF_INET, dst)
        body = _RTMSG.pack(socket.AF_INET, plen, 0, 0, table if table < 256 else 252, proto,
                           0, rtype, 0)
        body += _RTA.pack(8, _RTA_DST) + addr
        body += _RTA.pack(8, _RTA_TABLE) + struct.pack("=I", table)
        return body

    def replace_route(self, dst: str, plen: int, *, table: int, proto: int,
                      rtype: int = RTN_BLACKHOLE) -> None:
        self._request(_RTM_NEWROUTE, _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE,
                      self._route_msg(dst, plen, table, proto, rtype))

    def delete_route(self, dst: str, plen: int, *, table: int, proto: int,
                     rtype: int = RTN_BLACKHOLE) -> None:
        self._request(_RTM_DELROUTE, _NLM_F_REQUEST | _NLM_F_ACK,
                      self._route_msg(dst, plen, table, proto, rtype))


# ---------------------------------------------------------------------------------------------
# BIRD


def router_bird_config(spec: FleetSpec, log: Path, directors: Sequence[Director]) -> str:
    peers = "".join(
        f"protocol bgp d{d.index + 1} from director {{ neighbor {d.ip} as {spec.director_as}; }}\n"
        for d in directors)
    return f"""\
# ECMP router of the mhd fleet testbed (tests/vm/fleet.py).
log "{log}" all;
router id {spec.lan}.1;
protocol device {{ scan time 10; }}
# Install the best BGP route and every equal one as one multipath kernel route.
protocol kernel {{
    merge paths on limit 16;
    ipv4 {{ import none; export where source = RTS_BGP; }};
}}
template bgp director {{
    local {spec.lan}.1 as {spec.router_as};
    hold time {spec.hold_time}; keepalive time {spec.keepalive_time};
    connect retry time 2; error wait time 1, 10;
    graceful restart off;
    ipv4 {{ import all; export none; }};
}}
{peers}"""


def director_bird_config(spec: FleetSpec, log: Path, director: Director) -> str:
    return f"""\
# Director {director.index + 1} of the mhd fleet testbed (tests/vm/fleet.py); see
# etc/bird/mhd-director.conf for the commented version.
log "{log}" all;
router id {director.ip};
protocol device {{ scan time 10; }}
protocol kernel mhd {{
    kernel table {spec.table};
    learn;
    scan time 5;
    ipv4 {{ import where krt_source = {spec.route_proto}; export none; }};
}}
protocol bgp router1 {{
    local {director.ip} as {spec.director_as};
    neighbor {spec.lan}.1 as {spec.router_as};
    hold time {spec.hold_time}; keepalive time {spec.keepalive_time};
    connect retry time 2; error wait time 1, 10;
    graceful restart off;
    ipv4 {{ import none; export where proto = "mhd"; next hop self; }};
}}
"""


class Bird:
    """One BIRD daemon in the foreground in a namespace; config, socket and log in `rundir`."""

    def __init__(self, ns: str, name: str, rundir: Path, config: str) -> None:
        self.ns, self.name = ns, name
        self.conf = rundir / f"{name}.conf"
        self.sock = rundir / f"{name}.ctl"
        self.log = rundir / f"{name}.log"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.conf.write_text(self.config)
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        out = open(self.log.with_suffix(".out"), "ab")  # noqa: SIM115 (kept by Popen)
        try:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "bird", "-f", "-c", str(self.conf),
                 "-s", str(self.sock)], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FleetError(f"bird {self.name} exited with {self.proc.returncode}: "
                                 f"{self.tail()}")
            if self.sock.exists():
                try:
                    self.birdc("show", "status")
                    return
                except nsh.CommandError:
                    pass
            if time.monotonic() > deadline:
                raise FleetError(f"bird {self.name} did not open {self.sock}: {self.tail()}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop BIRD (SIGKILL: a crash; its BGP sessions' TCP connections close)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def birdc(self, *cmd: str, timeout: float = 30.0) -> str:
        """`birdc -s SOCK CMD` (the socket is a file: no need to enter the namespace)."""
        return nsh.run(["birdc", "-s", str(self.sock), *cmd], timeout=timeout).stdout

    def protocols(self) -> dict[str, tuple[str, str]]:
        """{name: (state, info)} from `show protocols` (state up/down/start; info e.g.
        "Established")."""
        out: dict[str, tuple[str, str]] = {}
        for line in self.birdc("show", "protocols").splitlines():
            w = line.split()
            if len(w) >= 5 and w[0] not in ("BIRD", "Name"):
                out[w[0]] = (w[3], " ".join(w[5:]))
        return out

    def tail(self, n: int = 20) -> str:
        texts = []
        for p in (self.log, self.log.with_suffix(".out")):
            with contextlib.suppress(OSError):
                texts.append(p.read_text(errors="replace"))
        return " | ".join("\n".join(texts).splitlines()[-n:])


# ---------------------------------------------------------------------------------------------
# the connection holder (fleet_conns.py hold, in the client namespace)


class ConnHolder:
    """`fleet_conns.py hold` running in the client namespace; JSON reports over a pipe."""

    def __init__(self, ns: str, dst: str, port: int, count: int, *, interval: float,
                 timeout: float, concurrency: int) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(CONNS_SCRIPT), "hold", "--dst", dst,
             "--port", str(port), "--count", str(count), "--interval", str(interval),
             "--timeout", str(timeout), "--concurrency", str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        self._buf = b""

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FleetError(f"connection holder: no report within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise FleetError(f"connection holder exited ({self.proc.wait()}): {err[-2000:]}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        report: dict[str, Any] = json.loads(line)
        return report

    def wait_opened(self, timeout: float = 600.0) -> dict[str, Any]:
        """Block until every connection was attempted; the first report."""
        while True:
            rep = self._line(timeout)
            if rep.get("event") == "opened":
                return rep

    def report(self, timeout: float = 120.0) -> dict[str, Any]:
        """Counts now (see fleet_conns.py for the fields)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"report\n")
        self.proc.stdin.flush()
        while True:
            rep = self._line(timeout)
            if rep.get("event") == "report":
                return rep

    def ports(self, timeout: float = 120.0) -> list[int]:
        """The local (client) ports of every connection that was opened, alive or broken."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"ports\n")
        self.proc.stdin.flush()
        while True:
            rep = self._line(timeout)
            if rep.get("event") == "ports":
                return [int(p) for p in rep["ports"]]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"close\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> ConnHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# the fleet


def _tcp_listening(ns: str, port: int) -> bool:
    with nsh.in_netns(ns), open("/proc/thread-self/net/tcp") as f:
        lines = f.read().splitlines()[1:]
    return any(w[1].endswith(f":{port:04X}") and w[3] == "0A" for w in (ln.split() for ln in lines))


@dataclass
class Fleet:
    spec: FleetSpec
    router: str
    client: str
    directors: list[Director]
    servers: list[Server]
    rundir: Path
    router_bird: Bird | None = None
    _rtnl: dict[str, Rtnl] = field(default_factory=dict)
    _holders: list[ConnHolder] = field(default_factory=list)

    _counter = itertools.count(1)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(cls, factory: nsh.NetnsFactory, spec: FleetSpec | None = None) -> Fleet:
        """Create and wire every namespace (no daemon yet).  The namespaces belong to
        `factory` (its cleanup deletes them); call `close()` first to stop the processes."""
        spec = spec or FleetSpec()
        rundir = Path(f"/run/mhd-fleet-{os.getpid()}-{next(cls._counter)}")
        rundir.mkdir(mode=0o700, parents=True)
        fleet = cls(spec=spec, router=factory("rt"), client=factory("cl"), directors=[],
                    servers=[], rundir=rundir)
        for i in range(spec.directors):
            fleet.directors.append(Director(i, factory("dir"), f"{spec.lan}.{11 + i}", f"d{i + 1}"))
        for j in range(spec.servers):
            fleet.servers.append(Server(j, factory("rs"), f"{spec.lan}.{101 + j}", f"s{j + 1}"))
        try:
            fleet._wire()
        except BaseException:
            fleet.close()
            raise
        return fleet

    def _wire(self) -> None:
        s = self.spec
        rt = self.router
        for ns in (rt, self.client, *(d.ns for d in self.directors), *(v.ns for v in self.servers)):
            for key in ("all", "default"):
                nsh.sysctl(ns, f"net.ipv4.conf.{key}.rp_filter", 0)
        for ns in (*(d.ns for d in self.directors), *(v.ns for v in self.servers)):
            # The VIP sits on lo: never answer or announce ARP for it on the LAN.
            nsh.sysctl(ns, "net.ipv4.conf.all.arp_ignore", 1)
            nsh.sysctl(ns, "net.ipv4.conf.all.arp_announce", 2)
        nsh.sysctl(rt, "net.ipv4.ip_forward", 1)
        nsh.sysctl(rt, "net.ipv4.fib_multipath_hash_policy", 1)  # L4: flows spread by port
        for d in self.directors:
            for key, value in s.director_sysctls:
                nsh.sysctl(d.ns, key, value)

        links = [(rt, "cl0", _mac(3, 0, 1), self.client, "eth0", _mac(3, 0, 2))]
        links += [(rt, d.port_name, _mac(1, d.index, 1), d.ns, "lan0", _mac(1, d.index, 2))
                  for d in self.directors]
        links += [(rt, v.port_name, _mac(2, v.index, 1), v.ns, "lan0", _mac(2, v.index, 2))
                  for v in self.servers]
        nsh.ip_batch_root(f"link add {a} netns {nsa} address {ma} type veth peer name {b}"
                          f" netns {nsb} address {mb}" for nsa, a, ma, nsb, b, mb in links)
        ports = [d.port_name for d in self.directors] + [v.port_name for v in self.servers]
        nsh.ip_batch(rt, [
            f"link add br0 address {_mac(0, 0, 1)} type bridge stp_state 0 forward_delay 0",
            *(f"link set {p} master br0" for p in ports),
            *(f"link set {p} up" for p in ports),
            f"addr add {s.lan}.1/24 dev br0",
            "link set br0 up",
            f"addr add {s.client_lan}.1/24 dev cl0",
            "link set cl0 up",
        ])
        nsh.ip_batch(self.client, [
            f"addr add {s.client_lan}.2/24 dev eth0", "link set eth0 up",
            f"route add default via {s.client_lan}.1",
        ])
        for d in self.directors:
            vip = [f"addr add {s.vip}/32 dev lo"] if s.director_vip_on_lo else []
            nsh.ip_batch(d.ns, [f"addr add {d.ip}/24 dev lan0", "link set lan0 up",
                                f"route add default via {s.lan}.1", *vip])
        for v in self.servers:
            nsh.ip_batch(v.ns, [f"addr add {v.ip}/24 dev lan0", "link set lan0 up",
                                f"route add default via {s.lan}.1", f"addr add {s.vip}/32 dev lo"])

    def close(self) -> None:
        """Stop every process the fleet started (holders, echo servers, BIRDs); remove the
        run directory.  Safe to call twice and after a partial build.  The namespaces are
        deleted by the factory's cleanup."""
        for h in self._holders:
            with contextlib.suppress(Exception):
                h.close()
        self._holders.clear()
        for v in self.servers:
            self.kill_server(v.index)
        for b in (self.router_bird, *(d.bird for d in self.directors)):
            if b is not None:
                b.kill(signal.SIGTERM)
        for r in self._rtnl.values():
            r.close()
        self._rtnl.clear()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------------------------

    def server_ips(self, order: Sequence[int] | None = None) -> list[str]:
        """The real servers' addresses, in `order` (indices) or index order."""
        idx = range(len(self.servers)) if order is None else order
        return [self.servers[j].ip for j in idx]

    def director_ips(self) -> list[str]:
        return [d.ip for d in self.directors]

    # -- BIRD and BGP --------------------------------------------------------------------------

    def start_birds(self) -> None:
        """Start the router's BIRD and every director's."""
        self.router_bird = Bird(self.router, "router", self.rundir,
                                router_bird_config(self.spec, self.rundir / "router.log",
                                                   self.directors))
        self.router_bird.start()
        for d in self.directors:
            self.start_bird(d.index)

    def start_bird(self, i: int) -> None:
        """(Re)start director i's BIRD."""
        d = self.directors[i]
        name = f"dir{i + 1}"
        d.bird = Bird(d.ns, name, self.rundir,
                      director_bird_config(self.spec, self.rundir / f"{name}.log", d))
        d.bird.start()

    def crash_bird(self, i: int) -> None:
        """SIGKILL director i's BIRD (its BGP session closes; the router drops its routes)."""
        bird = self.directors[i].bird
        if bird is not None:
            bird.kill(signal.SIGKILL)

    def bgp_states(self) -> dict[str, str]:
        """{router-side session name (d1..dN): BIRD info, e.g. "Established"}."""
        if self.router_bird is None:
            return {}
        protos = self.router_bird.protocols()
        return {f"d{d.index + 1}": protos.get(f"d{d.index + 1}", ("", "missing"))[1]
                for d in self.directors}

    def wait_bgp(self, directors: Sequence[int] | None = None, timeout: float = 120.0) -> float:
        """Wait until the router's sessions to `directors` (default all) are Established;
        returns the seconds waited."""
        want = [f"d{i + 1}" for i in (range(len(self.directors)) if directors is None else directors)]
        t0 = time.monotonic()
        while True:
            states = self.bgp_states()
            if all(states.get(n, "").startswith("Established") for n in want):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise FleetError(f"BGP sessions not established after {timeout:.0f} s: {states}")
            time.sleep(0.5)

    # -- routes ---------------------------------------------------------------------------

    def rtnl(self, ns: str) -> Rtnl:
        if ns not in self._rtnl:
            self._rtnl[ns] = Rtnl(ns)
        return self._rtnl[ns]

    def announce(self, i: int, vip: str | None = None) -> None:
        """Put `blackhole VIP/32 table T proto P` into director i's kernel (what mhd does)."""
        s = self.spec
        self.rtnl(self.directors[i].ns).replace_route(vip or s.vip, 32, table=s.table,
                                                      proto=s.route_proto)

    def withdraw(self, i: int, vip: str | None = None) -> None:
        """Delete director i's announcement route."""
        s = self.spec
        self.rtnl(self.directors[i].ns).delete_route(vip or s.vip, 32, table=s.table,
                                                     proto=s.route_proto)

    def withdraw_if_present(self, i: int, vip: str | None = None) -> bool:
        """`withdraw`, but no error when the route is not there; True if it was."""
        try:
            self.withdraw(i, vip)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return False
        return True

    def fib_gateways(self, vip: str | None = None) -> tuple[str, ...]:
        """Next hops of the router's main-table route to VIP/32, sorted (empty: no route)."""
        dst = vip or self.spec.vip
        for r in self.rtnl(self.router).routes(254):
            if r.dst == dst and r.dst_len == 32:
                return r.gateways
        return ()

    def wait_fib(self, want: int | Sequence[str], vip: str | None = None,
                 timeout: float = 60.0, since: float | None = None) -> float:
        """Wait until the router's route to VIP has `want` next hops (a count, or exactly these
        director addresses).  Returns the seconds from `since` (a time.monotonic() value,
        default: the call) until it was seen; polls every 20 ms in-process."""
        t0 = time.monotonic() if since is None else since
        if isinstance(want, int):
            def ok(g: tuple[str, ...]) -> bool:
                return len(g) == want
        else:
            target = tuple(sorted(want))

            def ok(g: tuple[str, ...]) -> bool:
                return g == target
        while True:
            g = self.fib_gateways(vip)
            now = time.monotonic()
            if ok(g):
                return now - t0
            if now - t0 > timeout:
                raise FleetError(f"router's route to {vip or self.spec.vip}: next hops {g}, "
                                 f"wanted {want}, after {timeout:.0f} s; BGP {self.bgp_states()}")
            time.sleep(0.02)

    # -- links -----------------------------------------------------------------------------

    def cut_link(self, i: int) -> None:
        """Take director i's bridge port down (the director vanishes: no FIN, no withdrawal;
        the router notices only when the BGP hold timer expires)."""
        nsh.run(["ip", "-n", self.router, "link", "set", self.directors[i].port_name, "down"])

    def restore_link(self, i: int) -> None:
        nsh.run(["ip", "-n", self.router, "link", "set", self.directors[i].port_name, "up"])

    # -- real servers --------------------------------------------------------------------------

    def start_servers(self, timeout: float = 120.0) -> None:
        """Start an echo server in every real server namespace; return once all listen."""
        for v in self.servers:
            if v.proc is None or v.proc.poll() is not None:
                with open(self.rundir / f"rs{v.index}.err", "ab") as err:
                    v.proc = subprocess.Popen(
                        ["ip", "netns", "exec", v.ns, sys.executable, str(CONNS_SCRIPT), "serve",
                         "--id", str(v.index), "--port", str(self.spec.port)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        deadline = time.monotonic() + timeout
        for v in self.servers:
            while not _tcp_listening(v.ns, self.spec.port):
                assert v.proc is not None
                if v.proc.poll() is not None:
                    text = (self.rundir / f"rs{v.index}.err").read_text(errors="replace")
                    raise FleetError(f"echo server {v.index} exited: {text[-2000:]}")
                if time.monotonic() > deadline:
                    raise FleetError(f"echo server {v.index} not listening after {timeout:.0f} s")
                time.sleep(0.1)

    def kill_server(self, j: int, sig: int = signal.SIGKILL) -> None:
        """Kill real server j's echo server (its connections are reset or closed)."""
        proc = self.servers[j].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)

    # -- IPVS by hand (the baseline; mhd replaces this) ------------------------------------------

    def ipvsadm_service(self, i: int, order: Sequence[int], *, flags: str = "mh-port",
                        scheduler: str = "mh") -> None:
        """Replace director i's IPVS rules: one TCP service VIP:PORT (`scheduler`, `flags`),
        the real servers `order` (indices) added one after the other in direct-routing
        mode, weight 1.  The kernel puts each new destination at the head of its list."""
        s = self.spec
        target = f"{s.vip}:{s.port}"
        rules = ["-C", f"-A -t {target} -s {scheduler}" + (f" -b {flags}" if flags else "")]
        rules += [f"-a -t {target} -r {self.servers[j].ip}:{s.port} -g -w 1" for j in order]
        nsh.ipvsadm(self.directors[i].ns, "-R", input="\n".join(rules) + "\n")

    def ipvs_dests(self, i: int) -> list[str]:
        """Director i's real servers of the TCP service VIP:PORT, in kernel order (the order its
        Maglev table is built from), read in-process from /proc/net/ip_vs; [] without the service."""
        s = self.spec
        want = f"{socket.inet_aton(s.vip).hex().upper()}:{s.port:04X}"
        with nsh.in_netns(self.directors[i].ns), open("/proc/thread-self/net/ip_vs") as f:
            lines = f.read().splitlines()[3:]
        dests: list[str] = []
        inside = False
        for line in lines:
            w = line.split()
            if not w:
                continue
            if w[0] != "->":
                inside = w[0] == "TCP" and len(w) > 1 and w[1] == want
            elif inside:
                dests.append(socket.inet_ntoa(bytes.fromhex(w[1].split(":")[0])))
        return dests

    # -- client ---------------------------------------------------------------------------

    def hold(self, count: int = 3000, *, interval: float = 10.0, timeout: float = 60.0,
             concurrency: int = 100) -> ConnHolder:
        """Start a connection holder in the client namespace (see fleet_conns.py); it is
        closed by `close()` if the caller does not close it first."""
        h = ConnHolder(self.client, self.spec.vip, self.spec.port, count, interval=interval,
                       timeout=timeout, concurrency=concurrency)
        self._holders.append(h)
        return h
