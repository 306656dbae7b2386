"""The daemon's Python cost per pass and per reload at 1,700 to 100,000 objects, on the host.

Times are CPU seconds of this process (`time.process_time`): steadier than wall time on a shared
machine. IPVS here is the planner's model of it (`apply_ops`), so this measures what mhd itself spends:
desired state, plan, state dir, fleet step; the real kernel's dump is the VM benchmarks' part
(`bench_apply.py`). Issue 15 asks a periodic full pass to cost <= 5 % of a core at a 10 s
interval at 100,000 destinations, i.e. <= 0.5 s; and a one-weight reload <= 0.2 s. The last column
reloads a file regenerated with a weight changed in every 20th service (config management).

    .venv/bin/python bench/bench_pass.py                      # 100 x 16, 1,000 x 16, 6,250 x 16
    .venv/bin/python bench/bench_pass.py --shapes 6250x16 --rounds 5

Compare two trees in one run (these machines are noisy): run each tree's own copy of this file, alternately
(bench_apply puts its own tree first on sys.path).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from bench_apply import config, server  # noqa: E402
from fakes import FakeRoutes, ModelKernel  # noqa: E402
from kernel_replies import dest_reply, service_reply  # noqa: E402

from mhd import netlink as nl  # noqa: E402
from mhd.announcer import Announcer  # noqa: E402
from mhd.daemon import Daemon  # noqa: E402
from mhd.ipvs import CMD, IpvsClient, service_id_attr  # noqa: E402
from mhd.kernel import KernelInfo  # noqa: E402
from mhd.model import Service, ServiceKey  # noqa: E402
from mhd.state import StateDir  # noqa: E402


def spread(text: str, n: int, weight: int) -> str:
    """`text` with the first server of every 20th service at `weight`: edits all over the file, as
    when config management regenerates it."""
    for i in range(7, n, 20):
        text = text.replace(f"{{address: {server(i, 0)}}}", f"{{address: {server(i, 0)}, weight: {weight}}}")
    return text


async def reload_cost(d: Daemon, path: Path, text: str) -> float:
    """CPU seconds from writing `text` to the end of the main loop's turn that reloads it."""
    path.write_text(text)
    t = time.process_time()
    answer = d.request_reload()
    await d.iterate(time.monotonic() + 3600)  # the reload, its scoped pass, the fleet step
    assert answer.result().ok
    spent = time.process_time() - t
    assert d.fleet is not None
    await d.fleet.tables_settled()
    return spent


class CannedDump:
    """The replies the kernel would send for a table, split from their datagrams as `GenlSocket.dump`
    splits them: the part of a whole pass that `ModelKernel` (a dict copy) leaves out."""

    def __init__(self, table: dict[ServiceKey, Service]) -> None:
        def datagram(replies: list[memoryview]) -> bytes:
            return b"".join(
                nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(r), 0x20, nl.NLM_F_MULTI, 1, 0) + bytes(r) for r in replies
            )

        zeros = [0] * 10
        self.services = datagram([service_reply(s, zeros) for s in table.values()])
        self.dests = {  # by the request's payload, as the kernel finds the service
            service_id_attr(s.key): datagram([dest_reply(d, zeros, (0, 0, 0)) for d in s.dests])
            for s in table.values()
        }
        self.writes = 0

    async def dump(self, family: int, cmd: int, payload: bytes = b"", *, dump: bool = True) -> list[memoryview]:
        data = self.services if cmd == CMD["GET_SERVICE"] else self.dests[payload]
        return [body for _kind, _flags, _seq, body in nl.messages(data)]


async def dump_cost(table: dict[ServiceKey, Service], rounds: int) -> float:
    """CPU seconds of `IpvsClient.services()` reading a whole dump of `table` (median of rounds)."""
    client = IpvsClient()
    client.sock.close()
    client.sock = CannedDump(table)  # type: ignore[assignment]
    costs = []
    for _ in range(rounds):
        t = time.process_time()
        got = await client.services()
        costs.append(time.process_time() - t)
        assert got == table, "the canned dump does not decode to the table it was built from"
    return statistics.median(costs)


async def measure(n: int, per: int, rounds: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="mhd-bench-pass-"))
    path = work / "mhd.yaml"
    path.write_text(config(n, per, interval=3600))
    d = Daemon(str(path), str(work / "state"))
    d.kernel = KernelInfo("6.1.0-bench", True, "intree", 12, "default")
    d.client = ModelKernel()  # type: ignore[assignment]
    d.state = StateDir(work / "state")
    d.state.lock()  # as the daemon: owned services and drains from memory
    d.fleet = Announcer(d.state, open_routes=FakeRoutes, sysctl_root=work / "no-proc")
    t = time.process_time()
    cfg = d.load_config()
    gc.freeze()  # as the daemon after its load, and again after its first pass
    d.adopt(cfg)
    loaded = time.process_time() - t
    t = time.process_time()
    await d.reconcile_once()
    first = time.process_time() - t
    await d.fleet.tables_settled()
    gc.freeze()  # as the daemon after its first pass
    passes, reloads, spread_reloads = [], [], []
    for r in range(rounds):
        t = time.process_time()
        await d.reconcile_once()
        passes.append(time.process_time() - t)
        reloads.append(await reload_cost(d, path, config(n, per, bump=n // 2, weight=3 + r, interval=3600)))
    base = config(n, per, bump=n // 2, weight=3 + rounds, interval=3600)
    for r in range(rounds):  # each of these changes the weight of every 20th service again
        spread_reloads.append(await reload_cost(d, path, spread(base, n, 5 + r)))
    dump = await dump_cost(d.client.table, rounds)  # type: ignore[attr-defined]
    d.state.unlock()
    return {
        "dump": dump,
        "load": loaded,
        "first": first,
        "pass": statistics.median(passes),
        "reload": statistics.median(reloads),
        "spread": statistics.median(spread_reloads),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="100x16,1000x16,6250x16", help="services x servers, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="passes and reloads per shape (medians printed)")
    args = p.parse_args()
    print("objects | load + adopt | first pass | periodic pass (per object) | its dump's decoding (per object)"
          " | one-weight reload | 1 in 20 services reloaded")  # fmt: skip
    for shape in args.shapes.split(","):
        n, per = (int(x) for x in shape.split("x"))
        m = asyncio.run(measure(n, per, args.rounds))
        objects = n * (per + 1)
        print(
            f"{objects:>7,} | {m['load']:.2f} s | {m['first']:.2f} s | {m['pass'] * 1000:.0f} ms"
            f" ({m['pass'] / objects * 1e6:.1f} us) | {m['dump'] * 1000:.0f} ms ({m['dump'] / objects * 1e6:.1f} us)"
            f" | {m['reload'] * 1000:.0f} ms | {m['spread'] * 1000:.0f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
