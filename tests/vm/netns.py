"""Helpers for the real-kernel integration tests (tests/vm): namespaces, topology, ipvsadm, flows.

Everything here needs root and a kernel with IPVS; conftest.py skips the suite otherwise.
Only the standard library is used, so that importing this module inside the slow TCG guest
costs nothing (importing pyroute2 there takes ~17 s).

Namespaces are plain `ip netns` namespaces (files under /run/netns).  Commands run in them
with `ip netns exec`; hot paths (sending thousands of datagrams, reading /proc) instead enter
the namespace in-process with setns(2) on the calling thread (`in_netns`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import itertools
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
DEFAULT_TIMEOUT = 300.0

Flow = tuple[str, int]
"""A client (source address, source port) pair; addresses in ipaddress' compressed form."""


class CommandError(RuntimeError):
    """A command failed; the message carries its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = stderr.strip() or stdout.strip()
        super().__init__(f"{' '.join(self.cmd)!r} exited with {returncode}: {detail}")


# ---------------------------------------------------------------------------------------------
# running commands


def run(
    cmd: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; raise CommandError on failure if `check`."""
    proc = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


def ns_exec(
    ns: str,
    *cmd: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside namespace `ns` (`ip netns exec`); raise CommandError on failure."""
    return run(["ip", "netns", "exec", ns, *cmd], input=input, check=check, timeout=timeout,
               env=env)


def ns_run(ns: str, *cmd: str, input: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run `cmd` inside namespace `ns` and return its stdout; raise CommandError on failure."""
    return ns_exec(ns, *cmd, input=input, timeout=timeout).stdout


def ns_sh(ns: str, script: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run a shell script inside namespace `ns`, return stdout; raise CommandError on failure."""
    return ns_run(ns, "sh", "-ec", script, timeout=timeout)


def ip_batch(ns: str, commands: Iterable[str], *, family: str | None = None) -> None:
    """Feed `ip -batch -` in namespace `ns` (fast: one process for thousands of commands)."""
    text = "\n".join(commands) + "\n"
    args = ["ip", "-n", ns]
    if family:
        args.append(family)
    run([*args, "-batch", "-"], input=text)


def ip_batch_root(commands: Iterable[str]) -> None:
    """`ip -batch -` in the namespace of this process (e.g. to create veths across namespaces)."""
    run(["ip", "-batch", "-"], input="\n".join(commands) + "\n")


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set a net.* sysctl inside namespace `ns` (in-process, no subprocess)."""
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(f"{value}\n")


# ---------------------------------------------------------------------------------------------
# entering a namespace in-process

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, nstype)
        return
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the calling thread into network namespace `ns` for the duration of the block.

    Sockets created inside stay in `ns` after the block; files under /proc/thread-self/net
    show `ns`.  Only this thread moves: do not use from code that hands work to other threads.
    """
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, CLONE_NEWNET)
            try:
                yield
            finally:
                _setns(saved, CLONE_NEWNET)
        finally:
            os.close(saved)
    finally:
        os.close(target)


# ---------------------------------------------------------------------------------------------
# namespaces


def netns_exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def create_netns(ns: str, *, lo_up: bool = True) -> str:
    """Create namespace `ns`; bring its loopback up (IPVS refuses every destination with
    EINVAL, "address not unicast", in a namespace whose lo is down)."""
    run(["ip", "netns", "add", ns])
    if lo_up:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    return ns


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split()]


def delete_netns(ns: str, *, kill_grace: float = 5.0) -> None:
    """Kill whatever still runs in `ns` (TERM, then KILL after `kill_grace` s), delete it."""
    if not netns_exists(ns):
        return
    pids = netns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + kill_grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
        if not pids:
            break
    run(["ip", "netns", "del", ns], check=False)


class NetnsFactory:
    """Creates uniquely named namespaces and deletes them all in `cleanup()`.

    `factory("dir")` -> "dir-<pid>-<n>".  Names stay short (interface names do not contain them).
    """

    _counter = itertools.count(1)

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, prefix: str = "ns", *, lo_up: bool = True) -> str:
        name = f"{prefix}-{os.getpid()}-{next(self._counter)}"
        create_netns(name, lo_up=lo_up)
        self.created.append(name)
        return name

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for ns in reversed(self.created):
            try:
                delete_netns(ns)
            except Exception as exc:
                errors.append(exc)
        self.created.clear()
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------------------------------
# links and addresses


def _family(addr: str) -> str:
    return "-6" if ":" in addr else "-4"


def add_address(ns: str, dev: str, cidr: str) -> None:
    """Add an address; IPv6 addresses get `nodad` so they are usable at once."""
    extra = ["nodad"] if ":" in cidr else []
    run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])


def add_dummy(ns: str, name: str, addrs: Iterable[str] = ()) -> str:
    run(["ip", "-n", ns, "link", "add", name, "type", "dummy"])
    for a in addrs:
        add_address(ns, name, a)
    run(["ip", "-n", ns, "link", "set", name, "up"])
    return name


def veth(
    ns_a: str,
    ns_b: str,
    *,
    name_a: str = "veth0",
    name_b: str = "veth0",
    addrs_a: Iterable[str] = (),
    addrs_b: Iterable[str] = (),
    mac_a: str | None = None,
    mac_b: str | None = None,
) -> tuple[str, str]:
    """A veth pair with one end in each namespace, addresses (CIDR, v4 or v6) added, both up."""
    cmd = ["ip", "link", "add", name_a, "netns", ns_a]
    if mac_a:
        cmd += ["address", mac_a]
    cmd += ["type", "veth", "peer", "name", name_b, "netns", ns_b]
    if mac_b:
        cmd += ["address", mac_b]
    run(cmd)
    for ns, dev, addrs in ((ns_a, name_a, addrs_a), (ns_b, name_b, addrs_b)):
        for a in addrs:
            add_address(ns, dev, a)
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    return name_a, name_b


def link_servers(director: str, servers: str, link: str, route: str, *, name: str = "tosrv",
                 peer: str = "todir") -> None:
    """Wire `director` to a namespace of real servers: a veth (`name` LINK.1/24 in the director,
    `peer` LINK.2/24 in `servers`) and a route to `route` (the servers' addresses, e.g. on
    their loopback) via LINK.2.  `link` is three octets, "10.66.1"."""
    veth(director, servers, name_a=name, name_b=peer, addrs_a=[f"{link}.1/24"],
         addrs_b=[f"{link}.2/24"])
    run(["ip", "-n", director, "route", "add", route, "via", f"{link}.2"])


def add_addresses(ns: str, dev: str, addrs: Iterable[str]) -> int:
    """Add many addresses (CIDR strings) to `dev` with one `ip -batch`; returns the count.

    Measured under TCG: see tests/vm/README.md.  Beyond a few thousand IPv4 addresses per
    device prefer `add_anyip` (the kernel walks the device's address list on every add)."""
    cmds = []
    for a in addrs:
        cmds.append(f"addr add {a} dev {dev}" + (" nodad" if ":" in a else ""))
    if cmds:
        ip_batch(ns, cmds)
    return len(cmds)


def add_anyip(ns: str, prefix: str, dev: str = "lo") -> None:
    """Make every address of `prefix` local in `ns` with one `local` route (AnyIP).

    IPv4 sockets can then bind to any address of the prefix.  IPv6 bind checks assigned
    addresses only, so this also sets net.ipv6.ip_nonlocal_bind=1 for IPv6 prefixes."""
    fam = _family(prefix)
    run(["ip", "-n", ns, fam, "route", "add", "local", prefix, "dev", dev])
    if fam == "-6":
        sysctl(ns, "net.ipv6.ip_nonlocal_bind", 1)


def add_neigh(ns: str, dev: str, addr: str, lladdr: str) -> None:
    run(["ip", "-n", ns, "neigh", "replace", addr, "lladdr", lladdr, "dev", dev,
         "nud", "permanent"])


# ---------------------------------------------------------------------------------------------
# topology


@dataclass
class Topology:
    """A director namespace with VIPs, a client namespace routed to them.

    Layout (defaults)::

        client ns                                    director ns
        lo: local route 10.200.0.0/16, fd02::/64     vip0 (dummy): 10.0.100.1/32, fd00:100::1/128
        veth0 10.0.0.2/24, fd00::2/64  <==veth==>   veth0 10.0.0.1/24, fd00::1/64
        default via 10.0.0.1 / fd00::1              rs0 (dummy): 10.1.255.254/16, fd01::ffff/64
                                                    routes to 10.200.0.0/16, fd02::/64 via client

    The VIPs are local to the director, so a datagram to VIP:port reaches IPVS' LOCAL_IN hook
    and is scheduled: the connection entry appears in the director's /proc/net/ip_vs_conn
    even though no real server exists.  Real servers should be taken from `rs_net`/`rs_net6`
    (e.g. 10.1.0.1..): they are on-link on the dummy `rs0`, which silently eats whatever IPVS
    forwards (NAT, DR and tunnel alike), with no ARP/NDP (dummy is NOARP).  Static neighbour
    entries on the veth make the first datagram go out without waiting for ARP/NDP (an
    unresolved neighbour queues only a few packets and drops the rest).
    Clients: any address of `client_net`/`client_net6` can be bound in the client namespace
    (AnyIP local routes), no per-address setup needed.
    """

    director: str
    client: str
    vip: str = "10.0.100.1"
    vip6: str = "fd00:100::1"
    director_ip: str = "10.0.0.1"
    client_ip: str = "10.0.0.2"
    director_ip6: str = "fd00::1"
    client_ip6: str = "fd00::2"
    rs_net: str = "10.1.0.0/16"
    rs_net6: str = "fd01::/64"
    client_net: str = "10.200.0.0/16"
    client_net6: str = "fd02::/64"
    extra: dict[str, str] = field(default_factory=dict)

    def rs(self, i: int, v6: bool = False) -> str:
        """The i-th real-server address (i >= 1) on the director's rs0 subnet."""
        net = ipaddress.ip_network(self.rs_net6 if v6 else self.rs_net)
        return str(net.network_address + i)

    def flows(self, n: int, **kw: int) -> list[Flow]:
        """`make_flows(n, network=client_net, ...)`."""
        return make_flows(n, self.client_net, **kw)

    def flows6(self, n: int, **kw: int) -> list[Flow]:
        return make_flows(n, self.client_net6, **kw)


def make_topology(director: str, client: str) -> Topology:
    """Wire up the default `Topology` between two existing namespaces (3 `ip -batch` runs)."""
    t = Topology(director=director, client=client)
    dmac, cmac = "02:4d:48:44:00:01", "02:4d:48:44:00:02"
    rs_net = ipaddress.ip_network(t.rs_net)
    rs_net6 = ipaddress.ip_network(t.rs_net6)
    ip_batch_root([f"link add veth0 netns {director} address {dmac} type veth"
                   f" peer name veth0 netns {client} address {cmac}"])
    ip_batch(director, [
        f"addr add {t.director_ip}/24 dev veth0",
        f"addr add {t.director_ip6}/64 dev veth0 nodad",
        "link set veth0 up",
        "link add vip0 type dummy",
        f"addr add {t.vip}/32 dev vip0",
        f"addr add {t.vip6}/128 dev vip0 nodad",
        "link set vip0 up",
        "link add rs0 type dummy",
        f"addr add {rs_net.broadcast_address - 1}/{rs_net.prefixlen} dev rs0",
        f"addr add {rs_net6.network_address + 0xffff}/{rs_net6.prefixlen} dev rs0 nodad",
        "link set rs0 up",
        f"route add {t.client_net} via {t.client_ip}",
        f"route add {t.client_net6} via {t.client_ip6}",
        f"neigh replace {t.client_ip} lladdr {cmac} dev veth0 nud permanent",
        f"neigh replace {t.client_ip6} lladdr {cmac} dev veth0 nud permanent",
    ])
    ip_batch(client, [
        f"addr add {t.client_ip}/24 dev veth0",
        f"addr add {t.client_ip6}/64 dev veth0 nodad",
        "link set veth0 up",
        f"route add default via {t.director_ip}",
        f"route add ::/0 via {t.director_ip6}",
        f"neigh replace {t.director_ip} lladdr {dmac} dev veth0 nud permanent",
        f"neigh replace {t.director_ip6} lladdr {dmac} dev veth0 nud permanent",
        f"route add local {t.client_net} dev lo",
        f"route add local {t.client_net6} dev lo",
    ])
    sysctl(client, "net.ipv6.ip_nonlocal_bind", 1)
    return t


# ---------------------------------------------------------------------------------------------
# ipvsadm


def ipvsadm(ns: str, *args: str, input: str | None = None) -> str:
    """Run ipvsadm in `ns`, return stdout; raise CommandError (with ipvsadm's message)."""
    return ns_run(ns, "ipvsadm", *args, input=input)


def ipvsadm_save(ns: str, *, kernel_order: bool = True) -> str:
    """`ipvsadm -Sn` text, each service's destinations in KERNEL order (newest first).

    ipvsadm itself sorts destinations (and services) by address, and refuses --nosort with
    -S; so the destination lines of `ipvsadm -Sn` are reordered here as `ipvsadm -Ln --nosort`
    lists them.  Services stay in ipvsadm's sorted order (the kernel's service order is a
    hash-table order that differs between namespaces and carries no meaning).  The lines
    themselves are ipvsadm's, byte for byte.  kernel_order=False: plain `ipvsadm -Sn`.
    """
    for _ in range(5):
        saved = ipvsadm(ns, "-Sn")
        if not kernel_order:
            return saved
        listed = {s.key: s for s in parse_ipvsadm_list(ipvsadm_list(ns))}
        services = parse_ipvsadm_save(saved)
        out: list[str] = []
        consistent = {s.key for s in services} == set(listed)
        for svc in services:
            if not consistent:
                break
            out.append(svc.line)
            by_addr = {(d.addr, d.port): d.line for d in svc.dests}
            order = [(d.addr, d.port) for d in listed[svc.key].dests]
            if set(order) != set(by_addr) or len(order) != len(by_addr):
                consistent = False
                break
            out.extend(by_addr[k] for k in order)
        if consistent:
            return "".join(line + "\n" for line in out)
        time.sleep(0.2)  # changed between the two reads: try again
    raise RuntimeError(f"IPVS configuration in {ns} kept changing while being read")


def ipvsadm_list(ns: str) -> str:
    """`ipvsadm -Ln --nosort` (kernel order, with connection counters)."""
    return ipvsadm(ns, "-Ln", "--nosort")


@dataclass
class Dest:
    addr: str
    port: int
    fwd: str  # "masq" | "route" | "tunnel" | "local" | "bypass"
    weight: int
    upper: int = 0  # -x upper connection threshold (0 = none)
    lower: int = 0  # -y
    active: int | None = None  # from -Ln only
    inactive: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # e.g. {"tun-type": "ipip"}
    line: str = ""  # the -Sn line it was parsed from


@dataclass
class Service:
    proto: str  # "tcp" | "udp" | "sctp" | "fwm"
    addr: str | None  # None for fwmark services
    port: int | None
    fwmark: int | None = None
    af: int = 4  # 4 or 6 (fwmark services: -6 in -Sn)
    scheduler: str = ""
    flags: frozenset[str] = frozenset()  # scheduler flags, e.g. {"mh-port", "mh-fallback"}
    persistent: int | None = None  # seconds
    netmask: str | None = None
    pe: str | None = None
    ops: bool = False
    dests: list[Dest] = field(default_factory=list)  # in the order printed
    line: str = ""  # the -Sn line it was parsed from

    @property
    def key(self) -> str:
        """"udp 10.0.100.1:53", "tcp [fd00::1]:80", "fwm 7"."""
        if self.proto == "fwm":
            return f"fwm {self.fwmark}" + (" v6" if self.af == 6 else "")
        return f"{self.proto} {_hostport(self.addr or '', self.port or 0)}"

    def dest_addrs(self) -> list[str]:
        return [d.addr for d in self.dests]


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _split_hostport(s: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", s)
    if not m:
        raise ValueError(f"bad address:port {s!r}")
    if m.group(1) is not None:
        return str(ipaddress.ip_address(m.group(1))), int(m.group(2) or 0)
    return str(ipaddress.ip_address(m.group(3))), int(m.group(4) or 0)


_FWD_SAVE = {"-m": "masq", "-g": "route", "-i": "tunnel"}
_FWD_LIST = {"masq": "masq", "route": "route", "tunnel": "tunnel", "local": "local",
             "bypass": "bypass"}
_VALUELESS = frozenset({"-m", "-g", "-i", "-6", "-o", "--ops", "--tun-nocsum", "--tun-csum",
                        "--tun-remcsum"})
_PROTO_SAVE = {"-t": "tcp", "-u": "udp", "--sctp-service": "sctp", "-f": "fwm"}


def parse_ipvsadm_save(text: str) -> list[Service]:
    """Parse `ipvsadm -Sn` output into Services (services and destinations in printed order)."""
    services: dict[str, Service] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        cmd, rest = tok[0], tok[1:]
        if cmd not in ("-A", "-a"):
            raise ValueError(f"line {lineno}: unexpected {line!r}")
        svc_kind, svc_val = rest[0], rest[1]
        proto = _PROTO_SAVE[svc_kind]
        opts: dict[str, str] = {}
        flags: set[str] = set()
        i = 2
        while i < len(rest):
            o = rest[i]
            if o in _VALUELESS:
                flags.add(o)
                i += 1
            elif o == "-p" and (i + 1 == len(rest) or rest[i + 1].startswith("-")):
                opts[o] = "300"
                i += 1
            else:
                opts[o] = rest[i + 1]
                i += 2
        if proto == "fwm":
            addr, port, fwmark = None, None, int(svc_val)
            af = 6 if "-6" in flags else 4
            key = f"fwm {fwmark}" + (" v6" if af == 6 else "")
        else:
            addr, port = _split_hostport(svc_val)
            fwmark = None
            af = 6 if ":" in addr else 4
            key = f"{proto} {_hostport(addr, port)}"
        if cmd == "-A":
            services[key] = Service(
                proto=proto, addr=addr, port=port, fwmark=fwmark, af=af,
                scheduler=opts.get("-s", ""),
                flags=frozenset(f for f in opts.get("-b", "").split(",") if f),
                persistent=int(opts["-p"]) if "-p" in opts else None,
                netmask=opts.get("-M"), pe=opts.get("--pe"),
                ops="-o" in flags or "--ops" in flags, line=line.strip(),
            )
        else:
            if key not in services:
                raise ValueError(f"line {lineno}: destination before its service: {line!r}")
            daddr, dport = _split_hostport(opts["-r"])
            fwd = next((_FWD_SAVE[f] for f in ("-m", "-g", "-i") if f in flags), "route")
            extra = {k.lstrip("-"): v for k, v in opts.items()
                     if k not in ("-r", "-w", "-x", "-y")}
            extra.update({f.lstrip("-"): "" for f in flags if f.startswith("--tun")})
            services[key].dests.append(Dest(
                addr=daddr, port=dport, fwd=fwd, weight=int(opts.get("-w", "1")),
                upper=int(opts.get("-x", "0")), lower=int(opts.get("-y", "0")), extra=extra,
                line=line.strip()))
    return list(services.values())


_LIST_SVC = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)(\s+IPv6)?\s+(\S+)(.*)$")
_LIST_DEST = re.compile(r"^\s+->\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_ipvsadm_list(text: str) -> list[Service]:
    """Parse `ipvsadm -Ln` output (the header lines are skipped)."""
    out: list[Service] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("IP Virtual Server", "Prot LocalAddress")) \
                or "RemoteAddress:Port" in line:
            continue
        m = _LIST_SVC.match(line)
        if m:
            proto = m.group(1).lower()
            target, sched, tail = m.group(2), m.group(4), m.group(5)
            flags: frozenset[str] = frozenset()
            fm = re.match(r"\s*\(([^)]*)\)", tail)
            if fm:
                flags = frozenset(f for f in fm.group(1).split(",") if f)
                tail = tail[fm.end():]
            words = tail.split()
            kw: dict[str, str] = {}
            ops = False
            j = 0
            while j < len(words):
                if words[j] == "ops":
                    ops = True
                    j += 1
                else:
                    kw[words[j]] = words[j + 1] if j + 1 < len(words) else ""
                    j += 2
            if proto == "fwm":
                svc = Service(proto="fwm", addr=None, port=None, fwmark=int(target),
                              af=6 if m.group(3) else 4, scheduler=sched, flags=flags)
            else:
                addr, port = _split_hostport(target)
                svc = Service(proto=proto, addr=addr, port=port, af=6 if ":" in addr else 4,
                              scheduler=sched, flags=flags)
            svc.persistent = int(kw["persistent"]) if "persistent" in kw else None
            svc.netmask = kw.get("mask")
            svc.pe = kw.get("pe")
            svc.ops = ops
            out.append(svc)
            continue
        d = _LIST_DEST.match(line)
        if d and out:
            addr, port = _split_hostport(d.group(1))
            out[-1].dests.append(Dest(
                addr=addr, port=port, fwd=_FWD_LIST.get(d.group(2).lower(), d.group(2).lower()),
                weight=int(d.group(3)), active=int(d.group(4)), inactive=int(d.group(5))))
            continue
        raise ValueError(f"unexpected ipvsadm -L line: {line!r}")
    return out


def ipvs_services(ns: str) -> dict[str, Service]:
    """The services of `ns` by `Service.key`, destinations in KERNEL order (newest first)."""
    return {s.key: s for s in parse_ipvsadm_save(ipvsadm_save(ns))}


def get_udp_timeout(ns: str) -> tuple[int, int, int]:
    """(tcp, tcpfin, udp) timeouts in seconds, from `ipvsadm -L --timeout`."""
    m = re.search(r"(\d+)\s+(\d+)\s+(\d+)\s*$", ipvsadm(ns, "-L", "--timeout").strip())
    if not m:
        raise ValueError("cannot parse ipvsadm --timeout output")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ---------------------------------------------------------------------------------------------
# flows and connection entries


def make_flows(n: int, network: str = "10.200.0.0/16", *, addresses: int = 256,
               first_port: int = 10000, start: int = 0) -> list[Flow]:
    """`n` distinct client (address, port) pairs from `network`.

    Flow i (counting from `start`) uses address number 1 + (i % addresses) of the network and
    port first_port + i // addresses.  Disjoint sets: make_flows(n, start=k) for k >= previous n.
    """
    net = ipaddress.ip_network(network)
    if addresses < 1 or addresses > net.num_addresses - 2:
        raise ValueError("addresses out of range for the network")
    last = start + n - 1
    if n and first_port + last // addresses > 65535:
        raise ValueError("not enough ports: raise `addresses` or lower `first_port`")
    base = net.network_address
    return [(str(base + 1 + (i % addresses)), first_port + i // addresses)
            for i in range(start, start + n)]


def send_udp_flows(ns: str, flows: Iterable[Flow], dst: str, dport: int,
                   payload: bytes = b"mhd") -> int:
    """From namespace `ns`, send one UDP datagram to dst:dport from each (addr, port) flow.

    One socket per flow (socket/bind/sendto/close): the kernel sees a new 4-tuple each time.
    The source addresses must be bindable in `ns` (e.g. `add_anyip`).  Returns the number sent.
    """
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    target = (dst, dport)
    sent = 0
    with in_netns(ns):
        sock = socket.socket
        for addr, port in flows:
            s = sock(fam, socket.SOCK_DGRAM)
            try:
                s.bind((addr, port))
                s.sendto(payload, target)
            finally:
                s.close()
            sent += 1
    return sent


@dataclass(frozen=True)
class ConnEntry:
    proto: str  # "TCP", "UDP", "SCTP", "IP" (templates of fwmark services) ...
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: str
    expires: int
    pe: str = ""


@functools.lru_cache(maxsize=65536)
def _proc_addr(tok: str) -> str:
    if ":" in tok:  # %pI6: eight groups of four hex digits
        return str(ipaddress.IPv6Address(tok))
    v = int(tok, 16)
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


def parse_ip_vs_conn(text: str) -> list[ConnEntry]:
    """Parse /proc/net/ip_vs_conn.

    Line format (net/netfilter/ipvs/ip_vs_conn.c): Pro FromIP FPrt ToIP TPrt DestIP DPrt
    State Expires [PEName PEData]; IPv4 addresses as 8 hex digits (host order of the value,
    i.e. 0A000001 = 10.0.0.1), IPv6 ones as %pI6 (full, colon separated); ports as 4 hex
    digits.  Client and destination families may differ (IPv4 service, IPv6 tunnel dest).
    """
    out: list[ConnEntry] = []
    for line in text.splitlines()[1:]:
        t = line.split()
        if len(t) < 9:
            continue
        out.append(ConnEntry(
            proto=t[0], caddr=_proc_addr(t[1]), cport=int(t[2], 16),
            vaddr=_proc_addr(t[3]), vport=int(t[4], 16),
            daddr=_proc_addr(t[5]), dport=int(t[6], 16),
            state=t[7], expires=int(t[8]), pe=" ".join(t[9:])))
    return out


def read_ip_vs_conn(ns: str) -> list[ConnEntry]:
    """The connection entries of namespace `ns` (read in-process, no subprocess)."""
    with in_netns(ns), open("/proc/thread-self/net/ip_vs_conn") as f:
        text = f.read()
    return parse_ip_vs_conn(text)


def conn_map(ns: str, *, proto: str | None = "UDP", vaddr: str | None = None,
             vport: int | None = None) -> dict[Flow, tuple[str, int]]:
    """{(client addr, client port): (real server addr, port)} from `ns`'s ip_vs_conn.

    Templates (persistence; client port 0) are left out.  Filter by protocol and VIP/port;
    a client seen twice under the filter (e.g. talking to two VIPs) raises ValueError."""
    vnorm = str(ipaddress.ip_address(vaddr)) if vaddr else None
    out: dict[Flow, tuple[str, int]] = {}
    for e in read_ip_vs_conn(ns):
        if e.cport == 0 or (proto and e.proto != proto):
            continue
        if (vnorm and e.vaddr != vnorm) or (vport is not None and e.vport != vport):
            continue
        key = (e.caddr, e.cport)
        if key in out and out[key] != (e.daddr, e.dport):
            raise ValueError(f"client {key} has two entries: {out[key]} and {e}")
        out[key] = (e.daddr, e.dport)
    return out


def softnet_drops() -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (all CPUs, all
    namespaces: /proc/net/softnet_stat, second column)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def udp_flow_map(client: str, director: str, flows: Sequence[Flow], vip: str, vport: int,
                 *, retries: int = 2) -> dict[Flow, tuple[str, int]]:
    """Send one datagram per flow from `client` to vip:vport and return, for the flows sent,
    the real server IPVS in `director` chose: {flow: (rs addr, rs port)}.

    A flow absent from the result got no connection entry (no service, no destination, ...).
    A flow that already had an entry keeps its old mapping: IPVS schedules only new
    connections.  Use fresh flows (`make_flows(start=...)`) or `expire_udp_conns` first.

    Flows without an entry are sent again, up to `retries` times: on a loaded TCG guest a
    datagram now and then is dropped before IPVS sees it (input backlog full, see
    `softnet_drops`).  Resending is harmless: the scheduler's answer for a flow depends only
    on the flow and the current table."""
    wanted = {(str(ipaddress.ip_address(a)), p) for a, p in flows}
    todo: Sequence[Flow] = flows
    for attempt in range(retries + 1):
        send_udp_flows(client, todo, vip, vport)
        seen = conn_map(director, proto="UDP", vaddr=vip, vport=vport)
        result = {f: rs for f, rs in seen.items() if f in wanted}
        if len(result) == len(wanted) or attempt == retries:
            return result
        todo = sorted(wanted - result.keys())
    return result


def expire_udp_conns(client: str, director: str, flows: Sequence[Flow], vip: str, vport: int,
                     *, wait: float = 30.0) -> None:
    """Make the UDP connection entries of `flows` go away without touching the service.

    IPVS has no "flush connections" call.  But a UDP entry's timeout is re-read from the
    namespace's UDP timeout (ipvsadm --set) on every packet.  So: set the UDP timeout to 1 s,
    resend one datagram per flow (refreshing each entry with the 1 s timeout; it goes to
    the same real server as before), wait until no UDP entry for vip:vport is left, then
    restore the timeout.  Costs one resend plus a few seconds.
    """
    tcp, fin, udp = get_udp_timeout(director)
    ipvsadm(director, "--set", str(tcp), str(fin), "1")
    try:
        send_udp_flows(client, flows, vip, vport)
        deadline = time.monotonic() + wait
        while conn_map(director, proto="UDP", vaddr=vip, vport=vport):
            if time.monotonic() > deadline:
                raise TimeoutError(f"UDP connection entries for {vip}:{vport} did not expire")
            time.sleep(0.5)
    finally:
        ipvsadm(director, "--set", str(tcp), str(fin), str(udp))


# ---------------------------------------------------------------------------------------------
# environment


def repo_root() -> Path:
    return Path(os.environ.get("MHD_REPO") or Path(__file__).resolve().parents[2])


def venv_python() -> str:
    """The project venv's python (MHD_PYTHON, else $MHD_VENV/bin/python, else <repo>/.venv)."""
    if os.environ.get("MHD_PYTHON"):
        return os.environ["MHD_PYTHON"]
    venv = os.environ.get("MHD_VENV") or str(repo_root() / ".venv")
    py = Path(venv, "bin", "python")
    return str(py) if py.exists() else "python3"


def mhd_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(repo_root())
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def mhd_cmd(ns: str, *args: str, check: bool = True, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the operator tool, `python -m mhd.ctl ARGS`, inside namespace `ns`.

    Uses the venv python with the checkout on PYTHONPATH.  Returns the CompletedProcess
    (stdout, stderr, returncode); raises CommandError if `check` and it fails.
    Under TCG each call pays a Python start-up (seconds; more if it imports pyroute2)."""
    return ns_exec(ns, venv_python(), "-m", "mhd.ctl", *args, check=check, input=input,
                   timeout=timeout, env=mhd_env())


# ---------------------------------------------------------------------------------------------
# availability


def ipvs_unavailable_reason() -> str | None:
    """None if this process can run the suite, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "tests/vm need root (network namespaces, IPVS); run tests/vm/run"
    if not Path("/proc/net/ip_vs").exists():
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    if not Path("/proc/net/ip_vs").exists():
        return "this kernel has no IPVS (/proc/net/ip_vs missing); run tests/vm/run to boot one"
    for tool in ("ip", "ipvsadm"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                          check=False).returncode != 0:
            return f"{tool} is not installed"
    return None
