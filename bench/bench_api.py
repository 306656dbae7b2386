#!/usr/bin/env python3
"""The API under a burst of concurrent GET /v1/status while health checks run, on the host.

The daemon's real prober (TCP and HTTP checks of 8 servers on loopback addresses, one
`scripts/demo_server.py` process answering them), its real API (`mhd.api.server.start`: TCP and the unix
socket) and metrics, over a `FakeDaemon` state (no IPVS needed); a separate client process fires
the burst (as tests/vm/test_api_kernel.py does). Reported, for a quiet window and the burst:

- the daemon's own `mhd_check_lag_seconds` (due time -> probe start), as the VM test reads it;
- a finer stall probe: a loop callback every 2 ms noting how late it ran (the longest loop
  iterations, which is what delays probes);
- garbage collections: count and longest pause per generation (gc.callbacks);
- per-request latency seen by the client.

    flock /tmp/mhd-vm.lock .venv/bin/python bench/bench_api.py [--tcp 900] [--unix 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SERVERS = [f"127.0.0.{i}" for i in range(11, 19)]
PORT = 18080


def config_text(listen: str, sock: str) -> str:
    servers = ", ".join(f'"{s}:80"' for s in SERVERS)
    dservers = ", ".join(f'"{s}:53"' for s in SERVERS)
    return f"""
reconcile-interval: 5s
api: {{listen: '{listen}', socket: '{sock}'}}
services:
  - name: web
    address: 10.0.100.1
    port: 80
    protocol: tcp
    check: {{type: http, port: {PORT}, path: /healthz, interval: 1s, timeout: 900ms}}
    servers: [{servers}]
  - name: dns
    address: 10.0.100.1
    port: 53
    protocol: udp
    check: {{type: tcp, port: {PORT}, interval: 1s, timeout: 900ms}}
    servers: [{dservers}]
"""


# --- the client process ------------------------------------------------------------------------------


async def client_burst(n_tcp: int, n_unix: int, listen: str, sock: str) -> list[float]:
    import aiohttp

    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=600)

    async def one(session: aiohttp.ClientSession, url: str) -> float:
        await go.wait()
        t0 = loop.time()
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200 and response.content_type == "application/json", response.status
        return loop.time() - t0

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=timeout) as tcp,
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(sock, limit=0, force_close=True), timeout=timeout
        ) as unix,
    ):
        tasks = [one(tcp, f"http://{listen}/v1/status") for _ in range(n_tcp)]
        tasks += [one(unix, "http://mhd/v1/status") for _ in range(n_unix)]
        futures = [asyncio.ensure_future(t) for t in tasks]
        await asyncio.sleep(0.1)
        go.set()
        return list(await asyncio.gather(*futures))


def client_main(argv: list[str]) -> None:
    n_tcp, n_unix, listen, sock = int(argv[0]), int(argv[1]), argv[2], argv[3]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    t0 = time.monotonic()
    latencies = asyncio.run(client_burst(n_tcp, n_unix, listen, sock))
    print(json.dumps({"elapsed": time.monotonic() - t0, "latencies": latencies}))


# --- the daemon side -----------------------------------------------------------------------------------


class Probe:
    """Loop stalls (a callback every `every` s noting its lateness) and gc pauses, per window."""

    def __init__(self, every: float = 0.002) -> None:
        self.every = every
        self.late: list[float] = []
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_started = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.every
        self._handle = loop.call_at(self._due, self._tick, loop)
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._handle:
            self._handle.cancel()
        gc.callbacks.remove(self._on_gc)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.late.append(now - self._due)
        self._due = now + self.every
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._gc_started)

    def reset(self) -> None:
        self.late.clear()
        for v in self.gc.values():
            v.clear()

    def describe(self) -> str:
        late = sorted(self.late)
        q = lambda p: late[min(len(late) - 1, int(p * len(late)))] * 1000 if late else 0.0  # noqa: E731
        gcs = ", ".join(
            f"gen{g} {len(v)}x max {max(v) * 1000:.1f} ms sum {sum(v) * 1000:.0f} ms" for g, v in self.gc.items() if v
        )
        return (
            f"loop stalls p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms max {q(1.0):.1f} ms, "
            f">20 ms {sum(x > 0.02 for x in late)}x; gc: {gcs or 'none'}"
        )


def lag_window(before: dict[float, float], after: dict[float, float]) -> str:
    counts = sorted((le, after[le] - before.get(le, 0)) for le in after)
    total = counts[-1][1]
    if not total:
        return "no probes"
    within = dict(counts).get(0.1, 0) / total
    rank, lower, below, p99 = 0.99 * total, 0.0, 0.0, 0.0
    for le, c in counts:
        if c >= rank and c > below:
            p99 = le if le == float("inf") else lower + (le - lower) * (rank - below) / (c - below)
            break
        lower, below = le, c
    return f"{int(total)} probes, lag p99 {p99 * 1000:.1f} ms, {within:.1%} within 100 ms"


def lag_counts(metrics: Any) -> dict[float, float]:
    out = {}
    for metric in metrics.check_lag.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out[float(s.labels["le"])] = s.value
    return out


async def daemon_main(args: argparse.Namespace) -> None:
    from fakes import FakeDaemon

    from mhd.api import server as api

    if args.connections:
        api.MAX_CONNECTIONS, api.TCP_CONNECTIONS = args.connections, max(1, args.connections * 3 // 4)
    print(f"API connections at once: {api.MAX_CONNECTIONS} (TCP {api.TCP_CONNECTIONS})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    listen, sock = "127.0.0.1:19180", str(tmp / "mhd.sock")
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo_server.py"), "http", "0.0.0.0", str(PORT)])
    try:
        time.sleep(0.5)
        d = FakeDaemon(tmp, config_text(listen, sock))
        close = await api.start(d)
        metrics = next(h.__self__ for h in d.probe_hooks)  # type: ignore[attr-defined]
        gc.freeze()
        await d.prober.start()
        probe = Probe()
        probe.start()
        await asyncio.sleep(3)
        for r in range(args.rounds):
            probe.reset()
            before = lag_counts(metrics)
            await asyncio.sleep(args.quiet)
            print(f"round {r + 1} quiet:  {lag_window(before, lag_counts(metrics))}; {probe.describe()}")
            probe.reset()
            before = lag_counts(metrics)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client", str(args.tcp), str(args.unix), listen, sock,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            await asyncio.sleep(0.5)
            res = json.loads(out)
            lat = sorted(res["latencies"])
            print(
                f"round {r + 1} burst:  {args.tcp}+{args.unix} requests in {res['elapsed']:.2f}s, per request p50"
                f" {lat[len(lat) // 2] * 1000:.0f} ms p99 {lat[int(0.99 * len(lat))] * 1000:.0f} ms;"
                f" {lag_window(before, lag_counts(metrics))}; {probe.describe()}"
            )
        probe.stop()
        await d.prober.stop()
        await close()
    finally:
        server.kill()
        server.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tcp", type=int, default=900)
    p.add_argument("--unix", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quiet", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=0, help="override mhd.api.server.MAX_CONNECTIONS")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    if os.environ.get("MHD_BENCH_CPU"):
        os.sched_setaffinity(0, {int(os.environ["MHD_BENCH_CPU"])})
    asyncio.run(daemon_main(args))


if __name__ == "__main__":
    main()
