#!/usr/bin/env python3
"""Failure detection time with the fast interval against without, on a real kernel (issue 14).

Runs where IPVS is (as root), e.g. in the test VM:
    tests/vm/run --shell-cmd "$MHD_PYTHON bench/bench_detect.py --kills 30"

A director namespace runs the real mhd daemon with 20 services x 8 real servers (TCP check,
interval 2s, timeout 400ms, fall 3, rise 2); each service has a port of its own, so the 160 checks
are 160 distinct probes. The servers are listening sockets that this process holds in a sibling
namespace (accepting and closing). A kill closes one listener (later probes are refused) at a
random moment, and the time until its destination leaves the kernel is measured by polling that
service over netlink every 20 ms; the listener is then reopened and the server readmitted before
the next kill. The same kills, in the same order and with the same pauses, run twice in one boot:
with ``fast-interval`` set (500ms by default) and without it (the default: the interval).

Expectation: the first failed probe comes after U(0, interval) (refused at once), and fall - 1
more are needed, so fall x interval at worst without the fast interval, and interval + (fall - 1)
x fast-interval with it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "vm")]

import netns as nsh  # noqa: E402
from bench_failover import wait  # noqa: E402
from bench_health import accept_and_close  # noqa: E402

from mhd.ipvs import IpvsClient  # noqa: E402
from mhd.model import ServiceKey, parse_ip  # noqa: E402

DIRECTOR, SERVERS_NS = "dt-dir", "dt-srv"
VIP, BASE_PORT, POLL = "10.88.0.100", 8000, 0.02


def server(j: int) -> str:
    return f"10.77.0.{j + 1}"


def setup(per: int) -> None:
    for ns in (DIRECTOR, SERVERS_NS):
        nsh.delete_netns(ns)
        nsh.create_netns(ns)
    nsh.link_servers(DIRECTOR, SERVERS_NS, "10.66.0", "10.77.0.0/24")
    nsh.add_addresses(SERVERS_NS, "lo", [f"{server(j)}/32" for j in range(per)])
    nsh.add_address(DIRECTOR, "lo", f"{VIP}/32")


def config(services: int, per: int, args: argparse.Namespace, fast: str | None) -> str:
    check = f"type: tcp, interval: {args.interval:g}s, timeout: {args.timeout:g}s, fall: {args.fall}, rise: {args.rise}"
    if fast is not None:
        check += f", fast-interval: {fast}"
    lines = [
        "reconcile-interval: 60s",
        "api: {listen: '', socket: ''}",
        f"defaults: {{check: {{{check}}}}}",
        "services:",
    ]
    for i in range(services):
        port = BASE_PORT + i
        addrs = ", ".join(f'"{server(j)}:{port}"' for j in range(per))
        lines.append(f"  - {{name: s{i:02d}, address: {VIP}, port: {port}, servers: [{addrs}]}}")
    return "\n".join(lines) + "\n"


class Servers:
    """The real servers: one listener per (service, server) in the servers' namespace."""

    def __init__(self, services: int, per: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.sockets: dict[tuple[int, int], socket.socket] = {}
        for i in range(services):
            for j in range(per):
                self.up(i, j)

    def up(self, i: int, j: int) -> None:
        with nsh.in_netns(SERVERS_NS):
            listener = socket.create_server((server(j), BASE_PORT + i), backlog=64)
        listener.setblocking(False)
        self.loop.add_reader(listener, accept_and_close, listener)
        self.sockets[i, j] = listener

    def down(self, i: int, j: int) -> None:
        listener = self.sockets.pop((i, j))
        self.loop.remove_reader(listener)
        listener.close()

    def close(self) -> None:
        for key in list(self.sockets):
            self.down(*key)


async def all_present(client: IpvsClient, total: int, limit: float) -> float:
    start = time.monotonic()
    while sum(len(s.dests) for s in (await client.services()).values()) < total:
        if time.monotonic() - start > limit:
            raise SystemExit(f"not every destination reached the kernel within {limit:g}s")
        await asyncio.sleep(1.0)
    return time.monotonic() - start


def log_window(log: Path, start: float, end: float) -> list[str]:
    """The daemon's log lines stamped within [start, end] (wall clock; asctime has ms)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if start <= stamp <= end:
            out.append(line)
    return out


async def kills(args: argparse.Namespace, late: float, log: Path) -> list[float]:
    """The kills of one run, against the daemon already started; detection times in seconds.
    A kill detected later than `late` s prints the daemon's log over its span."""
    rng = random.Random(args.seed)  # the same victims and pauses in both runs
    servers = Servers(args.services, args.per)
    with nsh.in_netns(DIRECTOR):
        client = await IpvsClient.open()
    out = []
    try:
        took = await all_present(client, args.services * args.per, 600)
        print(f"  every destination in IPVS after {took:.0f}s; settling {args.settle:g}s", flush=True)
        await asyncio.sleep(args.settle)
        for k in range(args.kills):
            i, j = rng.randrange(args.services), rng.randrange(args.per)
            key = ServiceKey(2, protocol=6, address=parse_ip(VIP), port=BASE_PORT + i)
            await asyncio.sleep(rng.uniform(0, args.interval))  # a random phase of the interval
            killed = time.time()
            servers.down(i, j)
            out.append(await wait(client, key, server(j), False, 60, every=POLL))
            servers.up(i, j)
            back = await wait(client, key, server(j), True, 60, every=POLL)
            print(f"  kill {k + 1}: s{i:02d} {server(j)} removed after {out[-1]:.3f}s, readmitted after {back:.3f}s", flush=True)  # fmt: skip
            if out[-1] > late:
                print(
                    f"  late (> {late:.2f}s); killed at {datetime.fromtimestamp(killed).time()}, the daemon's log:"
                )
                for line in log_window(log, killed - 0.5, time.time()):
                    print(f"    {line}")
    finally:
        client.close()
        servers.close()
    return out


def run(args: argparse.Namespace, fast: str | None, late: float, work: Path) -> list[float]:
    name = f"fast-{fast}" if fast else "no-fast"
    cfg = work / f"{name}.yaml"
    cfg.write_text(config(args.services, args.per, args, fast))
    nsh.ipvsadm(DIRECTOR, "-C")
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115
    mhd = subprocess.Popen(
        ["ip", "netns", "exec", DIRECTOR, nsh.venv_python(), "-m", "mhd.daemon", "-c", str(cfg), "--state-dir", str(work / name)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=nsh.mhd_env(),
    )  # fmt: skip
    start = time.monotonic()
    try:
        return asyncio.run(kills(args, late, work / f"{name}.log"))
    except BaseException:
        print((work / f"{name}.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        mhd.send_signal(signal.SIGTERM)
        mhd.wait(60)
        log.close()
        print(f"  ({name}: {time.monotonic() - start:.0f}s with the daemon's start)", flush=True)


def figures(times: list[float]) -> tuple[float, float, float]:
    """p50, p99 (inclusive method: within the samples), max."""
    return statistics.median(times), statistics.quantiles(times, n=100, method="inclusive")[98], max(times)


def parse_duration(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=30, help="kills per run (each run does the same ones)")
    p.add_argument("--services", type=int, default=20)
    p.add_argument("--per", type=int, default=8, help="real servers per service")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument(
        "--timeout", type=float, default=0.4, help="below the fast interval (the config requires it)"
    )
    p.add_argument("--fall", type=int, default=3)
    p.add_argument("--rise", type=int, default=2)
    p.add_argument("--fast", default="500ms", help="the fast-interval of the first run")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument(
        "--settle", type=float, default=20.0, help="seconds between the start-up and the first kill"
    )
    args = p.parse_args()
    setup(args.per)
    work = Path(tempfile.mkdtemp(prefix="mhd-detect-"))
    fast_s = parse_duration(args.fast)
    rows = []
    try:
        for fast, pace in ((args.fast, fast_s), (None, args.interval)):
            print(f"run: fast-interval {fast or 'unset (= interval)'}", flush=True)
            base = (args.fall - 1) * pace  # after the first failed probe
            times = run(args, fast, base + args.interval + 0.5, work)
            rows.append((fast or "unset", figures(times), (base + args.interval / 2, base + 0.99 * args.interval, base + args.interval)))  # fmt: skip
    finally:
        for ns in (DIRECTOR, SERVERS_NS):
            nsh.delete_netns(ns)
        # IPVS's estimator kthreads calibrate when the first service appears (Linux >= 6.2)
        ipvs = [line for line in nsh.run(["dmesg"], check=False).stdout.splitlines() if "IPVS" in line]
        print("kernel:", *ipvs[-12:], sep="\n  ")
    print(f"\n{args.kills} kills per run, {args.services} services x {args.per} servers, TCP check, interval "
          f"{args.interval:g}s, timeout {args.timeout:g}s, fall {args.fall}, rise {args.rise}; seconds from the kill to "
          f"the destination leaving IPVS (theory: U(0, interval) + (fall - 1) x pace)")  # fmt: skip
    print("fast-interval | p50 | p99 | max | theory p50 / p99 / max")
    for fast, (p50, p99, top), (t50, t99, tmax) in rows:
        print(f"{fast} | {p50:.3f} | {p99:.3f} | {top:.3f} | {t50:.2f} / {t99:.2f} / {tmax:.2f}")
    (f50, f99, fmax), (n50, n99, nmax) = rows[0][1], rows[1][1]
    print(f"ratio without / with: p50 {n50 / f50:.2f}x, p99 {n99 / f99:.2f}x, max {nmax / fmax:.2f}x "
          f"(theory p50 {rows[1][2][0] / rows[0][2][0]:.2f}x, max {rows[1][2][2] / rows[0][2][2]:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
