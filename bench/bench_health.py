#!/usr/bin/env python3
"""Health-check throughput, schedule lag and resource flatness on one core.

Why these numbers: a director checks every real server of every service; 10,000 TCP servers at
a 1 s interval must not fall behind (a late check is a late failover), and the daemon runs for
months, so fds and RSS must stay flat.

Two separate processes serve N TCP listeners (127.1.x.y:9000, accept and close) and N HTTP
listeners (127.2.x.y:9000) on the other CPUs; this process runs the real `mhd.probing.prober.Prober`,
with the daemon's Prometheus probe hook (`mhd.api.metrics.Metrics.on_probe`) attached as in the
daemon, pinned to one CPU, and measures over a soak window after one interval of warm-up:

* checks/s, the lag between each probe's due time and its start (p50, p99),
* CPU seconds of this process per 1,000 checks (user and system apart),
* open fds and RSS, sampled every few seconds.

Reference, measured in the same run on the same CPU against the same servers just before each
phase: the kernel floor, a plain blocking loop of ``socket(); setsockopt(SO_LINGER 0);
connect(); close()`` (TCP) or the same plus one request and answer (HTTP). CPU per check is
reported as a multiple of it, which stays comparable across runs on a noisy shared host where
absolute figures drift. On loopback the server's half of the handshake runs inside the client's
connect() (softirq on the client's CPU), so both the floor and the prober pay for it.

With ``--rps`` (root) it runs in a private network namespace whose loopback does its receive
work on the other CPUs, so that the servers' half of the handshakes leaves the prober's CPU, as
it does on a real director; the floor is then measured the same way.

Usage: .venv/bin/python bench/bench_health.py [--tcp 10000] [--http 3000] [--interval 1.0]
       [--soak 60] [--cpu 0] [--no-metrics] [--rps]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mhd.api.metrics import Metrics
from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing.prober import CheckKey, Prober, Target

PORT = 9000
LAG_BUCKET = 1e-4  # seconds: the lag histogram has 0.1 ms resolution up to 2 s
LAG_BUCKETS = 20_000
HTTP_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
LINGER_RST = struct.pack("ii", 1, 0)


def address(net: int, i: int) -> str:
    return f"127.{net}.{i // 250}.{i % 250 + 1}"


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the server process -----------------------------------------------------------------------


def accept_and_close(listener: socket.socket) -> None:
    """Drain the accept queue, closing at once: no transport, so fds cannot pile up."""
    for _ in range(64):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EMFILE or a reset connection: the next readiness event retries
        conn.close()


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.transport.write(HTTP_ANSWER)
            self.transport.close()


async def serve(n_tcp: int, n_http: int) -> None:
    loop = asyncio.get_running_loop()
    for i in range(n_tcp):
        listener = socket.create_server((address(1, i), PORT), backlog=64, reuse_port=False)
        listener.setblocking(False)
        loop.add_reader(listener, accept_and_close, listener)
    for i in range(n_http):
        await loop.create_server(Http, address(2, i), PORT, backlog=64, reuse_address=True)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away


def start_servers(n_tcp: int, n_http: int, cpu: int = 0) -> list[subprocess.Popen[bytes]]:
    """One process per kind, on every CPU but the prober's ``cpu``: each stays well under its fd
    limit and gets its own CPU time."""
    kinds = [(n_tcp, 0)] if n_tcp else []
    return [start_server(t, h, cpu) for t, h in kinds + ([(0, n_http)] if n_http else [])]


def start_server(n_tcp: int, n_http: int, cpu: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve", "--tcp", str(n_tcp), "--http", str(n_http), "--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit("server failed to start")
    return proc


# --- measurement ------------------------------------------------------------------------------


@dataclass
class Window:
    """Counters of the measured window; constant memory so that RSS stays meaningful."""

    measuring: bool = False
    probes: int = 0
    failures: int = 0
    details: dict[str, int] = field(default_factory=dict)
    lags: list[int] = field(default_factory=lambda: [0] * LAG_BUCKETS)

    def on_probe(self, key: CheckKey, due: float, lag: float, result: CheckResult) -> None:
        if not self.measuring:
            return
        self.probes += 1
        self.lags[min(max(int(lag / LAG_BUCKET), 0), LAG_BUCKETS - 1)] += 1
        if not result.ok:
            self.failures += 1
            self.details[result.detail] = self.details.get(result.detail, 0) + 1

    def percentile(self, p: float) -> float:
        rank, seen = p * self.probes, 0
        for i, count in enumerate(self.lags):
            seen += count
            if seen >= rank and count:
                return (i + 1) * LAG_BUCKET
        return LAG_BUCKETS * LAG_BUCKET


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_delay() -> float:
    """Seconds this thread was runnable but waiting for a CPU (taken by other processes)."""
    with open(f"/proc/self/task/{os.getpid()}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    t = os.times()
    return t.user, t.system


# --- the reference: the kernel floor, same run, same CPU, same servers ------------------------


def floor_tcp(peer: tuple[str, int]) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.connect(peer)


def floor_http(peer: tuple[str, int]) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.connect(peer)
        s.sendall(HTTP_REQUEST)
        while s.recv(4096):
            pass


def reference(op: Callable[[tuple[str, int]], None], addresses: list[str], seconds: float = 2.0) -> float:
    """CPU seconds per ``op``, in a plain blocking loop over the servers for ``seconds``."""
    n, t0, cpu0 = 0, time.monotonic(), time.process_time()
    while time.monotonic() - t0 < seconds:
        for address in addresses[n % len(addresses) :][:200]:
            op((address, PORT))
            n += 1
    return (time.process_time() - cpu0) / n


# --- one phase --------------------------------------------------------------------------------


@dataclass
class Figures:
    name: str
    offered: float
    rate: float
    p50: float
    p99: float
    cpu_per_1000: float
    user_per_1000: float
    system_per_1000: float
    floor_per_1000: float  # the reference
    failures: int  # counted by the state machine
    details: dict[str, int]  # every failed probe by detail, counted or not
    inconclusive: int  # not counted: the loop stalled, or a local fault (mhd.health.inconclusive)
    cpu_share: float  # CPU seconds used per wall second
    waited: float  # seconds waiting for the CPU per wall second: > 0.05 means contended
    fd_samples: list[int]
    rss_samples: list[float]


def counted(prober: Prober, targets: list[Target]) -> tuple[int, int]:
    """Failures counted by the state machine so far, and timeouts left uncounted (stalls)."""
    counters = [prober.counters(t) for t in targets]
    return sum(c.failures for c in counters), sum(c.inconclusive for c in counters)


def metrics_hook() -> Metrics:
    """The daemon's own per-probe Prometheus hook (two histogram observations a probe)."""
    stand_in = types.SimpleNamespace(last_reload=None, probe_hooks=[], hooks=[])
    return Metrics(stand_in)  # type: ignore[arg-type]


async def measure(
    name: str, targets: list[Target], interval: float, soak: float, floor: float, with_metrics: bool
) -> Figures:
    window = Window()
    hooks = [window.on_probe] + ([metrics_hook().on_probe] if with_metrics else [])

    def on_probe(key: CheckKey, due: float, lag: float, result: CheckResult) -> None:
        for hook in hooks:  # as Daemon._on_probe does
            hook(key, due, lag, result)

    prober = Prober(on_probe=on_probe)
    prober.set_targets(targets)
    await prober.start()
    await asyncio.sleep(interval * 1.5)  # warm-up: every target has fired once
    samples: tuple[list[int], list[float]] = ([], [])
    window.measuring = True
    counted0 = counted(prober, targets)
    (user0, sys0), t0, wait0 = cpu_times(), time.monotonic(), run_delay()
    step = max(soak / 12, 1.0)
    while (elapsed := time.monotonic() - t0) < soak:
        samples[0].append(fds())
        samples[1].append(rss_mib())
        await asyncio.sleep(min(step, soak - elapsed))
    window.measuring = False
    (user1, sys1), wall, waited = cpu_times(), time.monotonic() - t0, run_delay() - wait0
    failures, inconclusive = (b - a for a, b in zip(counted0, counted(prober, targets), strict=True))
    await prober.stop()
    user, system = user1 - user0, sys1 - sys0
    per_1000 = 1000 / max(window.probes, 1)
    return Figures(
        name, len(targets) / interval, window.probes / wall, window.percentile(0.5),
        window.percentile(0.99), (user + system) * per_1000, user * per_1000, system * per_1000,
        floor * 1000, failures, window.details, inconclusive, (user + system) / wall,
        waited / wall, *samples,
    )  # fmt: skip


def flat(samples: list[int] | list[float], slack: float, level: Callable[..., float] = max) -> bool:
    """No growth after warm-up: the second half's ``level`` (peak, or for fds the baseline
    between bursts of probes in flight) stays within ``slack`` of the first half's."""
    half = len(samples) // 2
    return not samples or level(samples[half:]) <= level(samples[: half or 1]) + slack


def report(f: Figures, min_rate: float, max_p99: float | None, soak: float) -> bool:
    ratio = f.cpu_per_1000 / f.floor_per_1000
    print(f"\n== {f.name}: {f.offered:,.0f} checks/s offered")
    print(f"  sustained      {f.rate:,.0f} checks/s")
    print(f"  failures       {f.failures} counted, {f.inconclusive} not counted (loop stalled or local fault)")
    if f.details:
        print(f"  failed probes  {dict(sorted(f.details.items(), key=lambda kv: -kv[1])[:3])}")
    print(f"  due-time lag   p50 {f.p50 * 1000:.1f} ms, p99 {f.p99 * 1000:.1f} ms")
    print(
        f"  CPU            {f.cpu_per_1000:.4f} s per 1,000 checks (user {f.user_per_1000:.4f}, "
        f"system {f.system_per_1000:.4f}), {f.cpu_share:.0%} of the core"
    )
    print(
        f"  reference      kernel floor {f.floor_per_1000:.4f} s per 1,000 (blocking loop, same CPU"
        f" and servers): the prober costs {ratio:.2f}x the floor"
    )
    print(f"  capacity       ~{1000 / f.cpu_per_1000:,.0f} checks/s on a whole core at this CPU per check")
    print(f"  waiting on CPU {f.waited:.0%} of the time (other processes on the core)")
    if f.waited > 0.05:
        print("  WARNING        the core was contended: lag and rate figures are not meaningful")
    print(f"  open fds       {f.fd_samples}")
    print(f"  RSS MiB        {[round(r, 1) for r in f.rss_samples]}")
    verdicts = {
        f"rate >= {min_rate:,.0f}/s": f.rate >= min_rate,
        "counted failures < 0.1%": f.failures <= f.rate * soak * 0.001,
        "fds flat": flat(f.fd_samples, 64, min),  # a leak raises the baseline; probes in flight come and go
        "RSS flat": flat(f.rss_samples, 2.0),
    }
    if max_p99 is not None:
        verdicts[f"p99 lag <= {max_p99 * 1000:.0f} ms"] = f.p99 <= max_p99
    for what, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    return all(verdicts.values())


async def bench(args: argparse.Namespace) -> bool:
    spec_tcp = CheckSpec(type="tcp", interval=args.interval, timeout=args.interval / 2, rise=2)
    spec_http = CheckSpec(type="http", interval=args.interval, timeout=args.interval / 2, path="/")
    tcp_addresses = [address(1, i) for i in range(args.tcp)]
    http_addresses = [address(2, i) for i in range(args.http)]
    ok = True
    if tcp_addresses:
        floor = reference(floor_tcp, tcp_addresses)
        targets = [Target("bench-tcp", a, PORT, spec_tcp) for a in tcp_addresses]
        f = await measure("TCP", targets, args.interval, args.soak, floor, args.metrics)
        ok &= report(f, 0.99 * args.tcp / args.interval, 0.100, args.soak)
    if http_addresses:
        floor = reference(floor_http, http_addresses)
        targets = [Target("bench-http", a, PORT, spec_http) for a in http_addresses]
        f = await measure("HTTP", targets, args.interval, args.soak, floor, args.metrics)
        ok &= report(f, min(3000.0, 0.99 * args.http / args.interval), 0.100, args.soak)
    return ok


IN_NETNS = "MHD_BENCH_NETNS"


def in_private_netns(cpu: int) -> int:
    """Run this command again in a new network namespace whose loopback hands every received
    packet to the other CPUs (RPS): the servers' half of each handshake, which loopback otherwise
    runs inside the prober's connect(), and the SYN-ACKs, then cost the prober's CPU nothing, as
    when the servers are other machines and the NIC's receive work lands on other cores."""
    mask = sum(1 << c for c in range(os.cpu_count() or 1) if c != cpu)
    if not mask:
        raise SystemExit("--rps needs a second CPU")
    script = f'ip link set lo up && echo {mask:x} > /sys/class/net/lo/queues/rx-0/rps_cpus && exec "$@"'
    argv = ["unshare", "--net", "sh", "-c", script, "sh", sys.executable, *sys.argv]
    return subprocess.run(argv, env={**os.environ, IN_NETNS: "1"}, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tcp", type=int, default=10_000, help="TCP servers (default 10000)")
    parser.add_argument("--http", type=int, default=3_000, help="HTTP servers (default 3000)")
    parser.add_argument("--interval", type=float, default=1.0, help="check interval, seconds")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds per phase (max 600)")
    parser.add_argument(
        "--cpu", type=int, default=None, help="CPU for the prober (default: the lowest allowed)"
    )
    parser.add_argument(
        "--no-metrics", dest="metrics", action="store_false", help="without the daemon's Prometheus hook"
    )
    parser.add_argument(
        "--rps",
        action="store_true",
        help="in a private network namespace whose loopback receive path runs on the other CPUs (root)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile()
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus) if args.cpu is None else args.cpu
    if args.rps and not os.environ.get(IN_NETNS):
        return in_private_netns(cpu)
    if args.serve:
        others = set(range(os.cpu_count() or 1)) - {cpu}
        if others:
            os.sched_setaffinity(0, others)
        asyncio.run(serve(args.tcp, args.http))
        return 0
    args.soak = min(args.soak, 600.0)
    servers = start_servers(args.tcp, args.http, cpu)
    os.sched_setaffinity(0, {cpu})  # one core for the prober
    where = "; loopback receive path on the others (RPS, private netns)" if args.rps else ""
    print(f"prober on CPU {cpu}, servers on the others{where}; soak {args.soak:g}s per phase", flush=True)
    try:
        ok = asyncio.run(bench(args))
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    print(f"\nOVERALL {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
