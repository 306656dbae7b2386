"""The prober while the director runs out of memory: no server blamed, every check back after.

Each trial runs a prober in a child process over 1,020 healthy loopback servers (800 TCP, 200
HTTP, 20 exec; interval 0.5 s, timeout 0.4 s, rise 1, fall 1: one counted failure takes a server
down), lets it settle, then caps its address space (RLIMIT_AS) and fills it with ballast, so that
every allocation fails for 1.5 s: asyncio's own callbacks, our timers, probes, logging. Then the
ballast goes and the run waits until every check has passed again (up to 20 s).

Per trial it prints whether the process survived (CPython does not promise to: an allocation
failing inside the event loop itself ends `asyncio.run`, and mhd then exits with status 1 and
systemd restarts it, IPVS untouched), and if it did: servers taken down, failures counted, probes
left inconclusive, checks the audit had to start again, and checks not back after 20 s.

    .venv/bin/python bench/bench_memory_pressure.py --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_prober import _serve  # the same loopback listeners as the low-fd test

CHILD = r"""
import asyncio, contextlib, json, logging, resource, sys
from mhd.config.checkspec import CheckSpec
from mhd.probing.prober import Prober, Target

tcp_port, http_port = int(sys.argv[1]), int(sys.argv[2])
logging.disable(logging.CRITICAL)  # the run's own logging would only add allocations
spec = dict(interval=0.5, timeout=0.4, rise=1, fall=1)
targets = [Target(f"t{i}", f"127.0.{i // 200}.{i % 200 + 1}", tcp_port, CheckSpec(type="tcp", **spec))
           for i in range(800)]
targets += [Target(f"h{i}", f"127.1.{i // 200}.{i % 200 + 1}", http_port, CheckSpec(type="http", **spec))
            for i in range(200)]
targets += [Target(f"x{i}", f"127.2.0.{i + 1}", 80, CheckSpec(type="exec", command=("/bin/true",), **spec))
            for i in range(20)]


def vmsize():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))


async def main():
    downs = []
    prober = Prober(lambda target, transition, health: downs.append(target.server))
    prober.set_targets(targets, in_kernel=lambda target: True)
    await prober.start()
    await asyncio.sleep(1.5)
    resource.setrlimit(resource.RLIMIT_AS, (vmsize() + 64 * 2**20, resource.RLIM_INFINITY))
    ballast = []
    for size in (1 << 20, 1 << 12, 64):
        with contextlib.suppress(MemoryError):
            while True:
                ballast.append(bytearray(size))
    await asyncio.sleep(1.5)
    ballast.clear()
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    ok = lambda t: bool(prober.health(t).last and prober.health(t).last.ok)
    loop = asyncio.get_running_loop()
    until = loop.time() + 20
    await asyncio.sleep(1.5)
    while not all(ok(t) for t in targets) and loop.time() < until:
        await asyncio.sleep(0.25)
    counters = [prober.counters(t) for t in targets]
    print(json.dumps({
        "downs": len(downs),
        "failures": sum(c.failures for c in counters),
        "inconclusive": sum(c.inconclusive for c in counters),
        "restarted": getattr(prober, "lost", -1),  # -1: a prober without the audit
        "not_back": sum(not ok(t) for t in targets),
    }), flush=True)
    await asyncio.wait_for(prober.stop(), 10)

asyncio.run(main())
"""


def trial(ports: list[str]) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, *ports], env=env, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        return {"survived": False, "exit": "hung"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"survived": False, "exit": out.returncode}
    return {"survived": True, "exit": out.returncode, **json.loads(lines[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    listeners = []
    for answer in (None, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"):
        listener = socket.create_server(("0.0.0.0", 0), backlog=4096)
        threading.Thread(target=_serve, args=(listener, answer), daemon=True).start()
        listeners.append(listener)
    ports = [str(listener.getsockname()[1]) for listener in listeners]
    results = []
    for i in range(args.trials):
        r = trial(ports)
        results.append(r)
        print(f"trial {i + 1}: {json.dumps(r)}", flush=True)
    survived = [r for r in results if r["survived"]]
    print(f"survived {len(survived)} of {len(results)} (the others: exit {[r['exit'] for r in results if not r['survived']]})")
    for key in ("downs", "failures", "inconclusive", "restarted", "not_back"):
        print(f"  {key}: {sum(int(r[key]) for r in survived)} in all ({[r[key] for r in survived]})")  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
