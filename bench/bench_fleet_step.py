"""The daemon's fleet step after a pass, at 1,000 services x 16 servers, on the host (no kernel):
without `announce:` (nothing to walk) and with it (the per-server health walk for the policy).

    .venv/bin/python bench/bench_fleet_step.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fakes import FakeDaemon  # noqa: E402


def config(announce: bool, services: int = 1000, servers: int = 16) -> str:
    lines = ["announce: {table: 100}"] if announce else []
    lines.append("services:")
    for i in range(services):
        lines += [f"  - name: s{i}", f"    address: 10.50.{i // 250}.{i % 250 + 1}", "    port: 80",
                  "    check: {type: tcp}", "    servers:"]  # fmt: skip
        lines += [f"      - 10.{60 + i // 250}.{i % 250}.{j + 1}" for j in range(servers)]
    return "\n".join(lines) + "\n"


def per_step(announce: bool, rounds: int = 10) -> float:
    d = FakeDaemon(Path(tempfile.mkdtemp()), config(announce))
    asyncio.run(d.step_fleet())  # the first builds every digest
    t = time.perf_counter()
    for _ in range(rounds):
        asyncio.run(d.step_fleet())
    return (time.perf_counter() - t) / rounds


if __name__ == "__main__":
    for announce in (False, True):
        print(f"fleet step, 16,000 servers, announce: {announce}: {per_step(announce) * 1000:.1f} ms")
