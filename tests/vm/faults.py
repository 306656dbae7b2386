"""Fault injection for the chaos runs (tests/vm/test_chaos.py, bench/bench_chaos.py).

Netlink faults are injected *inside* the daemon, under the IPVS client's socket layer
(`mhd.netlink.GenlSocket`), by the test-only launcher tests/vm/faulty_daemon.py, which patches
it and then runs `mhd.daemon.main`. What the daemon sees is what a kernel under stress could
send it:

- a write refused with ENOMEM, EBUSY, ESRCH or EEXIST (the request is not carried out);
- a short batch: only the first part of a window reaches the kernel, then the send fails
  (ENOBUFS), and the acks of the part that was carried out are left unread in the socket for
  the next request to skip;
- a dump refused with ENOMEM or EBUSY.

Faults stop for good once the file `stop` names exists, so a run can check that the daemon
converges afterwards; the counts go to the JSON file `counts` names, rewritten at each fault.

The other faults (SIGKILL, another process editing IPVS with ipvsadm, servers failing) come
from outside the daemon: see `IpvsadmEditor` here and tests/vm/chaos.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRITE_ERRORS = (errno.ENOMEM, errno.EBUSY, errno.ESRCH, errno.EEXIST)
DUMP_ERRORS = (errno.ENOMEM, errno.EBUSY)


@dataclass
class FaultPlan:
    """What to inject: `rate` is the chance of each write request failing, and of each window and
    each dump meeting a fault of its own; seeded, so a run can be repeated."""

    seed: int = 0
    rate: float = 0.05
    stop: Path | None = None
    counts: Path | None = None
    rng: random.Random = field(init=False)
    tally: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tally = {"requests": 0, "dumps": 0, "short-batch": 0}
        self.tally.update({errno.errorcode[c]: 0 for c in WRITE_ERRORS})
        self.tally.update({f"dump-{errno.errorcode[c]}": 0 for c in DUMP_ERRORS})

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """`seed=1,rate=0.05,stop=/path,counts=/path` (every part optional)."""
        values = dict(part.split("=", 1) for part in spec.split(",") if part)
        return cls(
            seed=int(values.get("seed", 0)),
            rate=float(values.get("rate", 0.05)),
            stop=Path(values["stop"]) if "stop" in values else None,
            counts=Path(values["counts"]) if "counts" in values else None,
        )

    def active(self) -> bool:
        return self.rate > 0 and not (self.stop is not None and self.stop.exists())

    def hit(self) -> bool:
        return self.active() and self.rng.random() < self.rate

    def count(self, what: str, n: int = 1) -> None:
        self.tally[what] += n
        if self.counts is not None and what not in ("requests", "dumps"):
            self.save()

    def save(self) -> None:
        assert self.counts is not None
        tmp = self.counts.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.tally))
        os.replace(tmp, self.counts)

    def injected(self) -> int:
        return sum(n for k, n in self.tally.items() if k not in ("requests", "dumps"))


def install(plan: FaultPlan) -> None:
    """Patch `mhd.netlink.GenlSocket` (every IPVS client in this process) to inject `plan`."""
    from mhd import netlink as nl

    original_transact = nl.GenlSocket.transact
    original_dump = nl.GenlSocket.dump

    async def transact(
        self: nl.GenlSocket, family: int, requests: list[tuple[int, bytes]]
    ) -> list[nl.NetlinkError | None]:
        plan.count("requests", len(requests))
        results: list[nl.NetlinkError | None] = [None] * len(requests)
        sent: list[int] = []
        for i in range(len(requests)):
            if plan.hit():
                code = plan.rng.choice(WRITE_ERRORS)
                results[i] = nl.NetlinkError(code, "injected by tests/vm/faults.py")
                plan.count(errno.errorcode[code])
            else:
                sent.append(i)
        if len(sent) > 1 and plan.hit():
            await _short_batch(self, family, [requests[i] for i in sent[: plan.rng.randrange(1, len(sent))]])
            plan.count("short-batch")
            raise OSError(errno.ENOBUFS, "injected short batch (tests/vm/faults.py)")
        for i, result in zip(
            sent, await original_transact(self, family, [requests[i] for i in sent]), strict=True
        ):
            results[i] = result
        return results

    async def dump(
        self: nl.GenlSocket, family: int, cmd: int, payload: bytes = b"", *, dump: bool = True
    ) -> Any:
        plan.count("dumps")
        if family != nl.GENL_ID_CTRL and plan.hit():
            code = plan.rng.choice(DUMP_ERRORS)
            plan.count(f"dump-{errno.errorcode[code]}")
            raise nl.NetlinkError(code, "injected by tests/vm/faults.py")
        return await original_dump(self, family, cmd, payload, dump=dump)

    nl.GenlSocket.transact = transact  # type: ignore[method-assign]
    nl.GenlSocket.dump = dump  # type: ignore[method-assign]
    if plan.counts is not None:
        plan.save()


async def _short_batch(sock: Any, family: int, requests: Sequence[tuple[int, bytes]]) -> None:
    """Send the first requests of a window as the real client would, and read none of their acks."""
    from mhd import netlink as nl

    async with sock.lock:
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK
        data = b"".join(genl for genl in (
            nl.genl_message(family, cmd, flags, sock._next_seq(), payload) for cmd, payload in requests
        ))  # fmt: skip
        sock.writes += len(requests)
        await sock._send(data)


def read_counts(path: Path) -> dict[str, int]:
    try:
        counts: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return counts


# --- another process editing the same services ---------------------------------------------------


class IpvsadmEditor(threading.Thread):
    """Edits the daemon's services behind its back, with `ipvsadm -R` batches in a loop, until
    stopped: deletes and re-weights destinations, adds strays, changes schedulers, deletes whole
    services. Weights it sets are never 0 (a weight-0 destination anywhere is an error of mhd's)."""

    def __init__(self, ns: str, services: Sequence[tuple[str, Sequence[str]]], seed: int) -> None:
        super().__init__(daemon=True, name="ipvsadm-editor")
        self.ns, self.services, self.rng = ns, services, random.Random(seed)
        self.stopping = threading.Event()
        self.batches = self.edits = self.refused = 0

    def batch(self) -> list[str]:
        """A few edits; services as ("tcp 10.50.0.1:80", ["10.100.0.1:80", ...])."""
        lines = []
        for _ in range(self.rng.randint(1, 4)):
            key, servers = self.rng.choice(self.services)
            proto, vip = key.split()
            flag = {"tcp": "-t", "udp": "-u"}[proto]
            rs = self.rng.choice(servers)
            roll = self.rng.random()
            if roll < 0.35:
                lines.append(f"-d {flag} {vip} -r {rs}")
            elif roll < 0.6:
                lines.append(f"-e {flag} {vip} -r {rs} -m -w {self.rng.randint(5, 9)}")
            elif roll < 0.8:
                lines.append(
                    f"-a {flag} {vip} -r 10.250.{self.rng.randrange(250)}.{self.rng.randrange(1, 250)}:80 -m -w 2"
                )
            elif roll < 0.92:
                lines.append(f"-E {flag} {vip} -s rr")
            else:
                lines.append(f"-D {flag} {vip}")
        return lines

    def run(self) -> None:
        while not self.stopping.is_set():
            lines = self.batch()
            proc = subprocess.run(
                ["ip", "netns", "exec", self.ns, "ipvsadm", "-R"], input="\n".join(lines) + "\n",
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            self.batches += 1
            self.edits += len(lines)
            self.refused += proc.returncode != 0  # raced with the daemon: ipvsadm -R stops there
            self.stopping.wait(self.rng.uniform(0.0, 0.5))

    def stop(self) -> None:
        self.stopping.set()
        self.join()
