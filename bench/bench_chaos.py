#!/usr/bin/env python3
"""Chaos at full size (issue 11): SIGKILLs anywhere and kernel faults, 1,000 mh services x 16 servers.

Runs where IPVS is (as root), in the test VM, in the background with its output to a file:
    tests/vm/run --shell-cmd "$MHD_PYTHON bench/bench_chaos.py > .vm-out/chaos.txt 2>&1"
(see bench/README.md). Each chain flushes mhd's services (mhd's state dir keeps owning them), so
the next start is a cold apply of 17,000 objects, kills the daemon at a random moment of it, then
goes on with kills at random moments of restarts, reloads and health transitions; after the last
restart it waits for the kernel to equal a clean apply and checks the state dir. A watcher reads
the kernel all along (weight-0 destinations, foreign services). Then a fault phase: netlink errors
inside the daemon and an ipvsadm editor outside, stopped, and convergence without a restart.

Prints the counts; exit 0 when every invariant held (0 differences, 0 weight-0 destinations, foreign
services untouched, state dir intact, the daemon alive through the faults and idle afterwards).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "vm")]

import netns as nsh  # noqa: E402
from chaos import Chaos, Layout  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--servers", type=int, default=16)
    p.add_argument("--checked", type=int, default=10, help="services with a TCP check (health transitions)")
    p.add_argument("--chains", type=int, default=10)
    p.add_argument(
        "--kills", type=int, default=10, help="kills per chain (plus one in steady state between chains)"
    )
    p.add_argument(
        "--exec-every",
        type=int,
        default=3,
        help="every Nth chain ends with a real `python -m mhd.daemon` start (0: never)",
    )
    p.add_argument("--fault-seconds", type=float, default=120.0)
    p.add_argument(
        "--rate", type=float, default=0.01, help="chance of a fault per write request, window, dump"
    )
    p.add_argument("--interval", default="60s", help="the daemon's reconcile-interval")
    p.add_argument(
        "--mix",
        default="2,1,1",
        help="odds of a kill in a start-up pass, a reload, a health transition (after the first, cold)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="seconds: start no further chain once a chain more would end past this (0: none)",
    )
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mhd-chaos-"))
    director, reference = "chaos-dir", "chaos-ref"
    for ns in (director, reference):
        nsh.delete_netns(ns)
        nsh.create_netns(ns)
    t0 = time.monotonic()
    layout = Layout(args.services, args.servers, args.checked)
    chaos = Chaos(director, reference, work, layout, nsh.venv_python(), args.seed,
                  say=lambda m: print(m, flush=True), interval=args.interval)  # fmt: skip
    print(
        f"set-up (foreign services, clean applies of both variants): {time.monotonic() - t0:.0f}s", flush=True
    )
    last, aborted = 0.0, ""
    chaos.mix = tuple(float(x) for x in args.mix.split(","))
    try:
        chaos.calibrate()
        for n in range(args.chains):
            began = time.monotonic()
            if args.budget and n and began - t0 + last > args.budget:
                print(f"budget: stopping after {n} chains")
                break
            exec_final = bool(args.exec_every) and n % args.exec_every == args.exec_every - 1
            chaos.chain(args.kills, converge_timeout=600, exec_final=exec_final)
            print(f"chain {n + 1} at {time.monotonic() - t0:.0f}s:", chaos.counts.summary(chaos.watcher)
                  .replace("\n", "; "), flush=True)  # fmt: skip
            last = time.monotonic() - began
        if args.fault_seconds:
            chaos.fault_phase(args.fault_seconds, args.rate, converge_timeout=600)
    except AssertionError as exc:  # the daemon died, or never converged: report, with the counts so far
        aborted = str(exc)
        print(f"ABORTED: {aborted[:4000]}", flush=True)
    finally:
        chaos.close()
        for ns in (director, reference):
            nsh.delete_netns(ns)
    c, w = chaos.counts, chaos.watcher
    print(f"\n== chaos, {args.services} x {args.servers}, seed {args.seed}, {time.monotonic() - t0:.0f}s ==")
    print(c.summary(w))
    results = [
        ("the run went through (no daemon death, no timeout)", not aborted),
        ("final differences from a clean apply", c.differences == 0),
        ("no weight-0 destination ever seen", not w.zero_weight),
        ("foreign services never changed", not w.foreign_changed),
        ("state dir intact", not c.state_problems),
        (
            "idle after the faults (no busy loop)",
            chaos.cpu_fractions[2] < max(0.9, chaos.cpu_fractions[0] * 1.5),
        ),
    ]
    for problem in c.state_problems[:5] + w.zero_weight[:5] + w.foreign_changed[:5]:
        print(f"  {problem}")
    for name, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
