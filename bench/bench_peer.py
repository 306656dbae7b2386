#!/usr/bin/env python3
"""mhd side by side with keepalived (Debian's, checker process only), in one boot, same rules.

Runs where IPVS is (as root), e.g. inside the test VM:
    tests/vm/run --shell-cmd '.venv/bin/python bench/bench_peer.py'
Each director is a sibling network namespace; both get the same services and servers.

1. Start to converged (1,000 mh services x 16 servers, NAT, no checks): keepalived -C against the mhd
   daemon and a one-shot `mhctl apply`, each timed from the command to the kernel holding every
   destination (observed from inside the namespace through /proc/net/ip_vs).
2. One-weight reload: `kill -HUP keepalived` against `mhctl reload`, until the kernel shows the weight.
3. Memory at 16,000 servers (keepalived: both processes), and what each leaves in the kernel on stop.
4. Health checking, 10,000 real servers, 1 s interval, TCP: a C acceptor (bench/acceptor.c) answers
   every check and records when it came, so one observer measures both checkers: checks per second,
   CPU per check (the checker's utime+stime over the window), interval lag p50/p99, and failure
   detection (256 servers made unreachable: time until each leaves IPVS) p50/p99.

Targets (issue 15): converge ratio <= 1.0, reload ratio <= 0.2, memory <= 3x, CPU per TCP check <=
keepalived's, p99 lag lower than keepalived's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from bench_apply import REPO, config, flush, netns, server, sh, vip

PY = sys.executable
T = TypeVar("T")
HZ = os.sysconf("SC_CLK_TCK")


# --- configurations ------------------------------------------------------------------------------
def keepalived_conf(services: int, per: int, *, bump: int | None = None, weight: int = 2,
                    check: bool = False, base: str = "") -> str:  # fmt: skip
    """keepalived.conf with the rules of bench_apply.config (or, with `check`, of health_config)."""
    out = ["global_defs {", "    router_id bench", "}"]
    for i in range(services):
        out += [f"virtual_server {vip(i)} 80 {{", "    lvs_sched mh", "    mh-port", "    lvs_method NAT",
                "    protocol TCP"]  # fmt: skip
        if check:
            out.append("    delay_loop 1")
        for j in range(per):
            addr = health_server(i, j) if check else server(i, j)
            w = weight if (i, j) == (bump, 0) else 1
            out.append(f"    real_server {addr} 80 {{")
            out.append(f"        weight {w}")
            if check:
                out += ["        TCP_CHECK {", "            connect_timeout 0.9", "            retry 0",
                        "            delay_before_retry 1", "        }"]  # fmt: skip
            out.append("    }")
        out.append("}")
    return "\n".join(out) + "\n"


def health_server(i: int, j: int) -> str:
    n = i * 16 + j
    return f"10.200.{n // 250}.{n % 250 + 1}"


def health_config(services: int, per: int, sock: str) -> str:
    # min-healthy 0: a service whose servers all fail is emptied, as keepalived does (mhd's default keeps one).
    lines = ["reconcile-interval: 60s", f"api: {{listen: '', socket: '{sock}'}}",
             "defaults:", "  check: {type: tcp, interval: 1s, timeout: 0.9s, rise: 1, fall: 1}",
             "  min-healthy: 0", "services:"]  # fmt: skip
    for i in range(services):
        lines += [f"  - name: s{i}", f"    address: {vip(i)}", "    port: 80", "    mh-port: true", "    servers:"]
        lines += [f"      - {{address: {health_server(i, j)}}}" for j in range(per)]
    return "\n".join(lines) + "\n"


# --- observing a namespace -------------------------------------------------------------------------
# The watchers run inside the namespace and print "ready" once they poll (under TCG their imports
# take seconds). The kernel is read over netlink, one service at a time: reading all of
# /proc/net/ip_vs costs ~0.1 s at 17,000 destinations, which polling would take from the daemons.
WATCH_PRELUDE = r"""
import asyncio, ipaddress, socket, sys, time
from mhd.ipvs import IpvsClient
from mhd.model import ServiceKey

def key(vip):
    return ServiceKey(socket.AF_INET, protocol=socket.IPPROTO_TCP, address=ipaddress.ip_address(vip), port=80)

def total():
    # (destinations, services not yet `mh`): mhd creates a service with `none` and switches it to
    # `mh` once its servers are in, so until then the service does not hash to them.
    dests = staged = 0
    with open("/proc/net/ip_vs") as f:
        for line in f:
            if line.startswith("  -> "):
                dests += "RemoteAddress" not in line
            elif line.startswith(("TCP ", "UDP ")):
                staged += line.split()[2] != "mh"
    return dests, staged
"""

# Until the last service has all its servers (cheap), then until /proc/net/ip_vs holds them all,
# in services that are all `mh`.
WAIT_DESTS = WATCH_PRELUDE + r"""
async def main():
    last, per, want, deadline = key(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), time.time() + float(sys.argv[4])
    client = await IpvsClient.open()
    print("ready", flush=True)
    while time.time() < deadline:
        try:
            full = len(await client.dests(last)) >= per
        except Exception:  # no such service yet (the kernel answers an empty dump, but be safe)
            full = False
        if full:
            dests, staged = total()
            full = dests >= want and not staged
        if full:
            print(time.time())
            return 0
        await asyncio.sleep(0.05)
    return 1
sys.exit(asyncio.run(main()))
"""

WAIT_WEIGHT = WATCH_PRELUDE + r"""
async def main():
    svc, dest, weight, deadline = key(sys.argv[1]), sys.argv[2], int(sys.argv[3]), time.time() + float(sys.argv[4])
    client = await IpvsClient.open()
    print("ready", flush=True)
    while time.time() < deadline:
        if any(str(d.key.address) == dest and d.weight == weight for d in await client.dests(svc)):
            print(time.time())
            return 0
        await asyncio.sleep(0.01)
    return 1
sys.exit(asyncio.run(main()))
"""

# Each destination under `prefix` that leaves, and when; "ready" once the first reading is taken.
WATCH_GONE = r"""
import sys, time
prefix, count, deadline = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
seen, gone = None, {}
while time.time() < deadline and len(gone) < count:
    with open("/proc/net/ip_vs") as f:
        now = {l.split()[1] for l in f if l.startswith("  -> ") and l.split()[1].startswith(prefix)}
    t = time.time()
    if seen is None:
        seen = now
        print("ready", flush=True)
    for d in seen - now:
        gone.setdefault(d, t)
    time.sleep(0.05)
print(" ".join(f"{t:.3f}" for t in gone.values()))
"""


def in_ns(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", script, *args], stdout=subprocess.PIPE, text=True)


def watching(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    """A watcher that has printed "ready": it polls now."""
    watcher = in_ns(ns, script, *args)
    assert watcher.stdout is not None
    if watcher.stdout.readline().strip() != "ready":
        raise SystemExit(f"{ns}: the watcher did not start")
    return watcher


def dests(ns: str) -> int:
    text = sh("ip", "netns", "exec", ns, "cat", "/proc/net/ip_vs")
    return sum(1 for line in text.splitlines() if line.startswith("  -> ") and "RemoteAddress" not in line)


def rss_mb(pids: list[int], field: str = "VmHWM") -> float:
    total = 0
    for pid in pids:
        m = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        total += int(m.group(1)) if m else 0
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / HZ


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Keepalived:
    def __init__(self, ns: str, work: Path, text: str) -> None:
        self.ns, self.conf = ns, work / f"{ns}.conf"
        self.conf.write_text(text)
        self.pid_file = Path(f"/run/bench-{ns}.pid")
        self.log = open(work / f"{ns}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "keepalived", "-C", "-n", "-l", "-f", str(self.conf),
             "-p", str(self.pid_file), "-c", f"/run/bench-{ns}-checkers.pid"],
            stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)


class Mhd:
    def __init__(self, ns: str, work: Path, text: str) -> None:
        self.ns, self.conf, self.sock = ns, work / f"{ns}.yaml", f"/run/bench-{ns}.sock"
        self.conf.write_text(text.replace("__SOCK__", self.sock))
        self.logfile = work / f"{ns}.log"
        self.log = open(self.logfile, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PY, "-m", "mhd.daemon", "-c", str(self.conf), "--state-dir",
             str(work / f"{ns}-state")], stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip

    def ready(self, timeout: float = 900) -> None:
        start = time.time()
        while "ready: " not in self.logfile.read_text():
            if self.proc.poll() is not None or time.time() - start > timeout:
                raise SystemExit(f"mhd did not start:\n{self.logfile.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)


def converge(ns: str, want: int, last: str, per: int, start_cmd: Callable[[], T]) -> tuple[float, T]:
    """Seconds from starting `start_cmd()` until `ns` holds `want` destinations (`per` in service `last`)."""
    watcher = watching(ns, WAIT_DESTS, last, str(per), str(want), "1500")
    t0 = time.time()
    handle = start_cmd()
    out, _ = watcher.communicate(timeout=1600)
    if watcher.returncode:
        raise SystemExit(f"{ns}: never reached {want} destinations")
    return float(out) - t0, handle


def weight_shown(ns: str, svc: str, dest: str, weight: int, act: Callable[[], object]) -> float:
    watcher = watching(ns, WAIT_WEIGHT, svc, dest, str(weight), "120")
    t0 = time.time()
    act()
    out, _ = watcher.communicate(timeout=200)
    if watcher.returncode:
        raise SystemExit(f"{ns}: weight {weight} never shown for {dest}")
    return float(out) - t0


# --- 1-3: start, reload, memory, stop ---------------------------------------------------------------
def apply_part(args: argparse.Namespace, work: Path, report: list[tuple[str, str, bool | None]]) -> None:
    n, per = args.services, args.servers
    want = n * per
    ka_ns, mh_ns, ctl_ns = netns("peer-ka"), netns("peer-mhd"), netns("peer-ctl")
    bump, bumped, last = n // 2, server(n // 2, 0), vip(n - 1)

    ka_s, ka = converge(ka_ns, want, last, per, lambda: Keepalived(ka_ns, work, keepalived_conf(n, per)))
    mh_s, mh = converge(mh_ns, want, last, per, lambda: Mhd(mh_ns, work, config(n, per, sock="__SOCK__")))
    mh.ready()
    cfg = work / "apply.yaml"
    cfg.write_text(config(n, per))
    ctl_s, ctl = converge(ctl_ns, want, last, per, lambda: subprocess.Popen(
        ["ip", "netns", "exec", ctl_ns, PY, "-m", "mhd.ctl", "apply", "-q", str(cfg), "--state-dir",
         str(work / "ctl-state")], cwd=REPO))  # fmt: skip
    ctl.wait(600)  # its last writes (state dir) before the flush
    flush(ctl_ns)
    print(f"start to converged, {want} destinations: keepalived {ka_s:.2f}s, mhd daemon {mh_s:.2f}s,"
          f" mhctl apply {ctl_s:.2f}s")  # fmt: skip
    report.append(("start to converged: mhd daemon / keepalived", f"{mh_s / ka_s:.2f}x", mh_s / ka_s <= 1.0))
    report.append(("start to converged: mhctl apply / keepalived", f"{ctl_s / ka_s:.2f}x", None))

    # The same act for both: the file edited, then SIGHUP; and `mhctl reload` (a fresh Python that asks
    # the API and waits for the answer) for what an operator types.
    ka_r, mh_r, ctl_r = [], [], []
    try:
        for weight in range(3, 3 + 2 * args.reloads, 2):
            ka.conf.write_text(keepalived_conf(n, per, bump=bump, weight=weight))
            ka_r.append(weight_shown(ka_ns, vip(bump), bumped, weight, lambda: os.kill(ka.proc.pid, signal.SIGHUP)))
            mh.conf.write_text(config(n, per, bump=bump, weight=weight, sock=mh.sock))
            mh_r.append(weight_shown(mh_ns, vip(bump), bumped, weight, lambda: os.kill(mh.proc.pid, signal.SIGHUP)))
            time.sleep(1)  # the daemon answers READY=1 after the pass; let it settle before the next edit
            mh.conf.write_text(config(n, per, bump=bump, weight=weight + 1, sock=mh.sock))
            ctl_r.append(weight_shown(mh_ns, vip(bump), bumped, weight + 1, lambda: subprocess.run(
                ["ip", "netns", "exec", mh_ns, PY, "-m", "mhd.ctl", "reload", "--socket", mh.sock],
                cwd=REPO, check=True, capture_output=True)))  # fmt: skip
            print(f"reload to weight {weight}: keepalived SIGHUP {ka_r[-1]:.2f}s, mhd SIGHUP {mh_r[-1]:.2f}s;"
                  f" to {weight + 1}: mhctl reload {ctl_r[-1]:.2f}s", flush=True)  # fmt: skip
    except SystemExit:  # leave nothing running that would load the next measurement
        print(f"mhd's log, the end:\n{mh.logfile.read_text()[-4000:]}", flush=True)
        ka.stop()
        mh.stop()
        raise
    ka_med, mh_med, ctl_med = statistics.median(ka_r), statistics.median(mh_r), statistics.median(ctl_r)
    print(f"one-weight edit + SIGHUP until the kernel shows it: keepalived {', '.join(f'{x:.2f}' for x in ka_r)} s;"
          f" mhd {', '.join(f'{x:.2f}' for x in mh_r)} s; `mhctl reload` command {', '.join(f'{x:.2f}' for x in ctl_r)} s")  # fmt: skip
    report.append(("one-weight reload (SIGHUP): mhd / keepalived (medians)", f"{mh_med / ka_med:.2f}x",
                   mh_med / ka_med <= 0.2))  # fmt: skip
    report.append(("one-weight reload: `mhctl reload` command / keepalived SIGHUP (medians)",
                   f"{ctl_med / ka_med:.2f}x", None))  # fmt: skip

    ka_mem, mh_mem = rss_mb(ka.pids()), rss_mb([mh.proc.pid])
    print(f"peak RSS at {want} servers: keepalived {ka_mem:.0f} MB ({len(ka.pids())} processes), mhd {mh_mem:.0f} MB")
    report.append(("memory: mhd / keepalived (peak RSS)", f"{mh_mem / ka_mem:.2f}x", mh_mem / ka_mem <= 3.0))

    ka.stop()
    mh.stop()
    left_ka, left_mh = dests(ka_ns), dests(mh_ns)
    print(f"after stop: keepalived leaves {left_ka} destinations, mhd {left_mh} (of {want})")
    report.append(("stop leaves IPVS as it is: mhd", f"{left_mh}/{want}", left_mh == want))
    report.append(("(peer) keepalived after stop", f"{left_ka}/{want}", None))
    flush(ka_ns, mh_ns)
    for ns in (ka_ns, mh_ns, ctl_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- 4: health checking ----------------------------------------------------------------------------
def link(a: str, b: str, a_ip: str, b_ip: str, idx: int) -> None:
    ia, ib = f"h{idx}a", f"h{idx}b"
    sh("ip", "link", "add", ia, "address", f"02:00:00:00:{idx:02x}:01", "netns", a, "type", "veth",
       "peer", ib, "address", f"02:00:00:00:{idx:02x}:02", "netns", b)  # fmt: skip
    sh("ip", "-n", a, "addr", "add", f"{a_ip}/24", "dev", ia)
    sh("ip", "-n", b, "addr", "add", f"{b_ip}/24", "dev", ib)
    sh("ip", "-n", a, "link", "set", ia, "up")
    sh("ip", "-n", b, "link", "set", ib, "up")


def checks_of(records: Path, src: str, t0: float, t1: float) -> tuple[int, list[float]]:
    """Checks from `src` in [t0, t1), and the interval lag (gap - 1 s) of each consecutive pair."""
    want = int.from_bytes(bytes(int(o) for o in src.split(".")), "big")
    by_dst: dict[str, list[float]] = defaultdict(list)
    count = 0
    with open(records) as f:
        for line in f:
            t, s, d = line.split()
            if int(s) == want and t0 <= float(t) < t1:
                by_dst[d].append(float(t))
                count += 1
    lags = [b - a - 1.0 for ts in by_dst.values() for a, b in itertools.pairwise(ts)]
    return count, lags


def log_after(logfile: Path, since: float, until: float) -> list[str]:
    """What mhd's log says between `since` and `until` (epoch seconds, the guest's clock) about the
    detection: its transitions to down, stalled-loop and lost-probe warnings, and its passes, each
    with its offset from `since`. Transitions are summarised (first, last, count)."""
    downs: list[float] = []
    lines: list[str] = []
    for line in logfile.read_text(errors="replace").splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
        if stamp is None:
            continue
        at = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000
        if not since <= at <= until:
            continue
        if "-> down" in line:
            downs.append(at - since)
        elif any(w in line for w in ("stalled", "lost", "reconciled", "a reload", "WARNING", "ERROR")):
            lines.append(f"  +{at - since:.2f}s {line[24:][:160]}")
    if downs:
        lines.insert(0, f"  {len(downs)} transitions to down, the first at +{downs[0]:.2f}s, the last at +{downs[-1]:.2f}s")
    return lines[:40]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def health_part(args: argparse.Namespace, work: Path, report: list[tuple[str, str, bool | None]]) -> None:
    services, per = args.health_servers // 16, 16
    total = services * per
    srv, ka_ns, mh_ns = netns("peer-srv"), netns("peer-hka"), netns("peer-hmh")
    link(ka_ns, srv, "10.9.1.1", "10.9.1.254", 1)
    link(mh_ns, srv, "10.9.2.1", "10.9.2.254", 2)
    for ns, gw in ((ka_ns, "10.9.1.254"), (mh_ns, "10.9.2.254")):
        sh("ip", "-n", ns, "route", "add", "10.200.0.0/16", "via", gw)
    sh("ip", "-n", srv, "route", "add", "local", "10.200.0.0/16", "dev", "lo", "table", "local")
    sh("ip", "netns", "exec", srv, "sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535")
    acceptor = work / "acceptor"
    sh("gcc", "-O2", "-o", str(acceptor), str(REPO / "bench" / "acceptor.c"))
    records = work / "checks.txt"
    acc = subprocess.Popen(["ip", "netns", "exec", srv, str(acceptor), "80", str(records)])
    failed_net, failed = "10.200.1.0/24", "0AC801"  # 10.200.1.x: 250 servers
    n_failed = sum(1 for i in range(services) for j in range(per) if health_server(i, j).startswith("10.200.1."))
    results = {}
    for name, ns, src in (("keepalived", ka_ns, "10.9.1.1"), ("mhd", mh_ns, "10.9.2.1")):
        if name == "keepalived":
            proc: Keepalived | Mhd = Keepalived(ns, work, keepalived_conf(services, per, check=True))
        else:
            proc = Mhd(ns, work, health_config(services, per, "__SOCK__"))
        converge_s, _ = converge(ns, total, vip(services - 1), per, lambda: None)
        if isinstance(proc, Mhd):
            proc.ready()  # the prober starts after the first pass, the API and the Maglev model
        time.sleep(args.warmup)
        pids = proc.pids() if isinstance(proc, Keepalived) else [proc.proc.pid]
        c0, t0 = cpu_s(pids), time.time()
        time.sleep(args.window)
        c1, t1 = cpu_s(pids), time.time()
        watcher = watching(ns, WATCH_GONE, failed, str(n_failed), "60")
        tf = time.time()
        sh("ip", "-n", srv, "route", "add", "prohibit", failed_net, "table", "local")
        gone = [float(x) - tf for x in watcher.communicate(timeout=120)[0].split()]
        if isinstance(proc, Mhd):
            print("mhd's log during the detection:", *log_after(proc.logfile, tf, time.time()), sep="\n")
        sh("ip", "-n", srv, "route", "del", "prohibit", failed_net, "table", "local")
        proc.stop()
        results[name] = (ns, src, t0, t1, c1 - c0, gone, converge_s)
        flush(ns)
    acc.send_signal(signal.SIGTERM)
    acc.wait(120)
    figures = {}
    for name, (_ns, src, t0, t1, cpu, gone, converge_s) in results.items():
        count, lags = checks_of(records, src, t0, t1)
        rate = count / (t1 - t0)
        per_check = cpu / count * 1000 if count else float("nan")
        figures[name] = (per_check, pct(lags, 0.99))
        print(f"{name}: {rate:.0f} checks/s of {total} servers at 1 s (converged in {converge_s:.1f}s);"
              f" CPU {per_check:.3f} ms per check; lag p50 {pct(lags, 0.5) * 1000:.1f} ms, p99"
              f" {pct(lags, 0.99) * 1000:.1f} ms; detection of {len(gone)}/{n_failed} failures p50"
              f" {pct(gone, 0.5):.2f}s p99 {pct(gone, 0.99):.2f}s")  # fmt: skip
    (ka_cpu, ka_lag), (mh_cpu, mh_lag) = figures["keepalived"], figures["mhd"]
    report.append(("CPU per TCP check: mhd / keepalived", f"{mh_cpu / ka_cpu:.2f}x", mh_cpu <= ka_cpu))
    report.append(("check lag p99: mhd vs keepalived", f"{mh_lag * 1000:.1f} ms vs {ka_lag * 1000:.1f} ms",
                   mh_lag < ka_lag))  # fmt: skip
    for ns in (srv, ka_ns, mh_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--servers", type=int, default=16)
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--health-servers", type=int, default=10000)
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--only", choices=("apply", "health"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mhd-peer-"))
    version = subprocess.run(["keepalived", "--version"], capture_output=True, text=True)
    print(f"peer: {(version.stdout + version.stderr).splitlines()[0]}")
    report: list[tuple[str, str, bool | None]] = []
    if args.only in (None, "apply"):
        apply_part(args, work, report)
    if args.only in (None, "health"):
        health_part(args, work, report)
    for name, value, ok in report:
        print(f"{'INFO' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {value}")
    return 0 if all(ok is not False for *_, ok in report) else 1


if __name__ == "__main__":
    sys.exit(main())
