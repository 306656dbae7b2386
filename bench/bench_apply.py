#!/usr/bin/env python3
"""Cold apply, incremental apply and daemon start, reload, periodic pass and memory, at any size.

Runs where IPVS is (as root): inside the test VM with
    tests/vm/run --shell-cmd '.venv/bin/python bench/bench_apply.py'                  # 1,000 x 16
    tests/vm/run --shell-cmd '.venv/bin/python bench/bench_apply.py --targets 100k \
        --services 6250 --servers 16 --rounds 1 --idle-window 60'                      # 100,000
Each figure is compared with a reference measured in the same run, because these machines are noisy:
`ipvsadm -R` of the same rules in a sibling network namespace.

Targets, `--targets 17k` (issue 2): cold apply <= 1.5x ipvsadm -R; incremental <= 1% of the cold
apply; daemon peak RSS <= 150 MB. `--targets 100k` (issue 15): cold apply (whole command) <= 1.0x
ipvsadm -R; daemon start on the applied kernel state writes nothing; one-weight reload <= 0.2 s;
the periodic whole pass at a 10 s interval costs <= 5 % of a core (`--idle-window`); peak RSS
<= 400 MB. Per-object time and memory are printed for the growth table (1,700 / 17,000 / 100,000).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mhd.config.validate import loads  # noqa: E402
from mhd.ctl.client import Client  # noqa: E402
from mhd.ipvs import IpvsClient  # noqa: E402
from mhd.reconcile import reconcile  # noqa: E402
from mhd.state import StateDir  # noqa: E402


def sh(*cmd: str, input: str | None = None) -> str:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=True).stdout


def netns(name: str) -> str:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def vip(i: int) -> str:
    return f"10.{50 + i // 250}.{i % 250}.1"


def server(i: int, j: int) -> str:
    return f"10.{100 + j}.{i // 250}.{i % 250 + 1}"


def rules(services: int, per: int) -> str:
    out = []
    for i in range(services):
        out.append(f"-A -t {vip(i)}:80 -s mh -b mh-port")
        out += [f"-a -t {vip(i)}:80 -r {server(i, j)}:80 -m -w 1" for j in range(per)]
    return "\n".join(out) + "\n"


def config(services: int, per: int, bump: int | None = None, weight: int = 2, sock: str = "",
           interval: float = 60) -> str:  # fmt: skip
    """The YAML; server 0 of service `bump` gets `weight` (a one-weight edit)."""
    lines = [f"reconcile-interval: {interval:g}s", f"api: {{listen: '', socket: '{sock}'}}", "services:"]
    for i in range(services):
        lines += [f"  - name: s{i}", f"    address: {vip(i)}", "    port: 80", "    mh-port: true",
                  "    check: {type: none}", "    servers:"]  # fmt: skip
        # Weight 1 is the default and left out: 100,000 servers must fit in MAX_BYTES (4 MiB).
        lines += [f"      - {{address: {server(i, j)}}}" if (i, j) != (bump, 0) else
                  f"      - {{address: {server(i, j)}, weight: {weight}}}" for j in range(per)]  # fmt: skip
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], input: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, input=input, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def in_process_apply(ns: str, text: str, state: Path) -> dict[str, float]:
    """The apply's stages, timed inside one process (no interpreter start-up)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    libc.setns(target, 0x40000000)
    try:
        t0 = time.perf_counter()
        cfg = loads(text, "bench.yaml")
        t1 = time.perf_counter()

        async def go() -> tuple[float, int]:
            client = await IpvsClient.open()
            try:
                s = time.perf_counter()
                outcome = await reconcile(client, cfg, StateDir(state))
                assert not outcome.failures, outcome.failures[:3]
                return time.perf_counter() - s, len(outcome.ops)
            finally:
                client.close()

        reconcile_s, ops = asyncio.run(go())
        return {"load": t1 - t0, "reconcile": reconcile_s, "ops": float(ops)}
    finally:
        libc.setns(own, 0x40000000)
        os.close(own)
        os.close(target)


class DaemonRun(NamedTuple):
    ready_s: float  # from the command to "ready" in its log (API open)
    writes: int  # netlink writes of its first pass (-1: not in the log)
    reloads: list[float]
    idle_cpu: float  # share of one core over the idle window (nan: not measured)
    passes: int  # whole passes in that window (reconcile count from the daemon's metrics)
    rss: float  # peak RSS, MB


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def daemon_run(ns: str, cfg: Path, state: Path, n: int, per: int, interval: float, idle: float) -> DaemonRun:
    """mhd started on the applied config: its start, reloads, periodic passes and peak RSS.

    A reload is timed from POST /v1/reload until its answer, which the daemon sends after the pass
    that wrote the change: YAML re-read, diff, the scoped pass's dump, plan and netlink write.
    Reloads run with whole passes a minute apart, so that none waits for one; then, with `idle` > 0,
    the daemon's CPU over `idle` seconds of nothing but its whole passes every `interval` (no
    checks: the services have `check: none`)."""
    sock = str(cfg.with_suffix(".sock"))
    bump = n // 2
    cfg.write_text(config(n, per, bump=bump, sock=sock))
    log = cfg.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "mhd.daemon", "-c", str(cfg), "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ | {"MHD_LOG_LEVEL": "debug"},
        )  # fmt: skip
    try:
        while "ready: " not in log.read_text():  # API open: a request now measures only itself
            if proc.poll() is not None or time.perf_counter() - start > 1800:
                raise SystemExit(f"mhd did not start:\n{log.read_text()}")
            time.sleep(0.2)
        ready_s = time.perf_counter() - start
        found = re.search(r"(\d+) netlink writes at start", log.read_text())
        writes = int(found.group(1)) if found else -1
        print(f"daemon: ready in {ready_s:.1f}s, {writes} netlink writes at start")
        while not Path(sock).exists():
            time.sleep(0.2)
        client = Client(sock)
        reloads = []
        for weight in range(3, 9):  # one weight changes per reload
            cfg.write_text(config(n, per, bump=bump, weight=weight, sock=sock))
            reloads.append(reload_until_done(client, log))
        shown = sh("ip", "netns", "exec", ns, "ipvsadm", "-Ln", "-t", f"{vip(bump)}:80")
        assert re.search(rf"{re.escape(server(bump, 0))}:80\s+Masq\s+8\b", shown), shown
        adopted = re.findall(r"read and adopted in ([0-9.]+)s", log.read_text())
        print(f"their YAML read + adoption (daemon log): {', '.join(f'{t}s' for t in adopted)}")
        passes = re.findall(r"reconciled 1 services: (\d+) operations in ([0-9.]+)s", log.read_text())
        print(f"daemon reloads (POST /v1/reload -> answer): {', '.join(f'{x:.3f}s' for x in reloads)}")
        print(f"their scoped passes (daemon log): {', '.join(f'{n} op in {t}s' for n, t in passes)}")
        idle_cpu, whole = float("nan"), 0
        if idle > 0:  # the interval changes by a reload; the old one runs out first
            cfg.write_text(config(n, per, bump=bump, weight=8, sock=sock, interval=interval))
            reload_until_done(client, log)
            idle_cpu, whole = idle_share(client, proc.pid, idle)
            print(f"idle, whole passes every {interval:g}s: {whole} passes in {idle:.0f}s, {idle_cpu:.1%} of a core")
        durations = re.findall(r"pass over all services: kernel read, planned and written in ([0-9.]+)s", log.read_text())
        print(f"whole passes (daemon log, kernel read + plan): {', '.join(f'{t}s' for t in durations) or 'none logged'}")
        status_text = Path(f"/proc/{proc.pid}/status").read_text()
        # `ip netns exec` execs the program, so the pid is python's own.
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status_text).group(1)) / 1024  # type: ignore[union-attr]
        return DaemonRun(ready_s, writes, reloads, idle_cpu, whole, hwm)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(600)


def reload_until_done(client: Client, log: Path) -> float:
    """Seconds from POST /v1/reload until the daemon has read and adopted the file. The answer
    comes after the reload's scoped pass; a reload queued behind a whole pass that no longer gives
    way (an interval late: one whole pass at 100,000 under TCG is longer than the interval) gets
    the API's 504 after 60 s and is still carried out: then the time is the log's, and said."""
    done = log.read_text().count("read and adopted in")
    t0 = time.perf_counter()
    status, doc = client.request("POST", "/v1/reload")
    if status == 200:
        assert doc["ok"], doc
        return time.perf_counter() - t0
    assert status == 504, (status, doc)
    while log.read_text().count("read and adopted in") <= done:
        assert time.perf_counter() - t0 < 900, "a queued reload was not carried out in 15 minutes"
        time.sleep(0.5)
    took = time.perf_counter() - t0
    print(f"a reload was answered 504 (queued behind a whole pass) and adopted after {took:.1f}s")
    return took


def pass_age(client: Client) -> float:
    """Seconds since the daemon's last completed pass (`GET /healthz`: a small answer, unlike /metrics).
    503 is an answer too: after the interval is shortened, the old one runs out beyond the new limit."""
    status, doc = client.request("GET", "/healthz")
    assert status in (200, 503) and "last_reconcile_age" in doc, (status, doc)
    return float(doc["last_reconcile_age"])


def idle_share(client: Client, pid: int, window: float) -> tuple[float, int]:
    """(share of a core, whole passes) of the daemon over `window` seconds in which it does nothing
    but its periodic passes. The window opens just after the first such pass (so no reload is in
    it); passes are counted by the age of the last one dropping, polled every second."""
    age = pass_age(client)
    while (now := pass_age(client)) >= age:
        age = now
        time.sleep(1)
    c0, t0, passes, age = cpu_seconds(pid), time.perf_counter(), 0, now
    while time.perf_counter() - t0 < window:
        time.sleep(1)
        now = pass_age(client)
        passes += now < age
        age = now
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    return (c1 - c0) / (t1 - t0), passes


def flush(*namespaces: str) -> None:
    """Empty IPVS in every bench namespace before a timed run. Since Linux 6.2 the kernel's rate
    estimators (kthreads) walk every service and destination of every namespace; 17,000 objects
    left by the previous run take CPU from the one being timed (in the 2-vCPU guest, measurably)."""
    for ns in namespaces:
        sh("ip", "netns", "exec", ns, "ipvsadm", "-C")


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(a / b for a, b in pairs)


TARGETS = {  # cold ratio (whole command), reload (fraction of the cold command, or seconds), RSS MB
    "17k": {"cold": 1.5, "reload_share": 0.01, "rss": 150.0},
    "100k": {"cold": 1.0, "reload_s": 0.2, "rss": 400.0, "idle": 0.05},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--servers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="cold-apply rounds; the median ratio is judged")
    p.add_argument("--targets", choices=sorted(TARGETS), default="17k", help="issue 2's (17k) or issue 15's (100k)")
    p.add_argument("--idle-window", type=float, default=0.0,
                   help="seconds of the daemon's CPU to measure with only its periodic whole passes (0: skip)")
    p.add_argument("--reconcile-interval", type=float, default=10.0, help="the interval for --idle-window")
    args = p.parse_args()
    target = TARGETS[args.targets]
    n, per = args.services, args.servers
    objects = n * (per + 1)
    work = Path(tempfile.mkdtemp(prefix="mhd-bench-"))
    ref, mine, mine2 = netns("bench-ref"), netns("bench-mhd"), netns("bench-mhd2")
    cfg = work / "mhd.yaml"
    cfg.write_text(config(n, per))

    # Cold applies, in rounds: each timed run starts with IPVS empty in every namespace.
    whole: list[tuple[float, float]] = []  # (mhctl apply, ipvsadm -R of the same round)
    inproc: list[tuple[float, float]] = []
    same = True
    for r in range(args.rounds):
        flush(ref, mine, mine2)
        ref_s, _ = timed(["ip", "netns", "exec", ref, "ipvsadm", "-R"], input=rules(n, per))
        expected = sorted(sh("ip", "netns", "exec", ref, "ipvsadm", "-Sn").splitlines())
        flush(ref)
        cold_s, out = timed(["ip", "netns", "exec", mine, sys.executable, "-m", "mhd.ctl", "apply", "-q",
                             str(cfg), "--state-dir", str(work / f"state{r}")])  # fmt: skip
        same &= sorted(sh("ip", "netns", "exec", mine, "ipvsadm", "-Sn").splitlines()) == expected
        flush(mine)
        stages = in_process_apply(mine2, config(n, per), work / f"inproc{r}")
        inproc_s = stages["load"] + stages["reconcile"]
        whole.append((cold_s, ref_s))
        inproc.append((inproc_s, ref_s))
        print(f"round {r + 1}: ipvsadm -R of {objects} objects {ref_s:.2f}s; mhctl apply whole command"
              f" {cold_s:.2f}s ({cold_s / ref_s:.2f}x, {out.strip()}); in-process {inproc_s:.2f}s"
              f" ({inproc_s / ref_s:.2f}x: load {stages['load']:.2f}s + reconcile {stages['reconcile']:.2f}s,"
              f" {stages['ops']:.0f} ops)")  # fmt: skip
    print(f"same rules as ipvsadm -R in every round: {same}")
    # The largest child so far is `mhctl apply` (ipvsadm and ip are small).
    ctl_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # Incremental, on the last round's in-process state (the only objects left in the guest).
    last = work / f"inproc{args.rounds - 1}"
    cfg.write_text(config(n, per, bump=n // 2))
    inc_s, out = timed(["ip", "netns", "exec", mine2, sys.executable, "-m", "mhd.ctl", "apply", str(cfg),
                        "--state-dir", str(last)])  # fmt: skip
    print(f"mhctl apply (one weight changed, whole command): {inc_s:.2f}s -> {out.strip().splitlines()[-1]}")

    run = daemon_run(mine2, cfg, last, n, per, args.reconcile_interval, args.idle_window)

    cold_med = statistics.median(c for c, _ in whole)
    inproc_med = statistics.median(c for c, _ in inproc)
    ratio, inproc_ratio = median_ratio(whole), median_ratio(inproc)
    reload_med = statistics.median(run.reloads)
    print(f"per object ({objects}): cold mhctl apply {cold_med / objects * 1e6:.0f} us, in-process"
          f" {inproc_med / objects * 1e6:.0f} us, ipvsadm -R {statistics.median(r for _, r in whole) / objects * 1e6:.0f}"
          f" us, daemon start {run.ready_s / objects * 1e6:.0f} us; daemon peak RSS {run.rss * 1024 / objects:.2f}"
          f" KiB, mhctl apply peak RSS {ctl_rss * 1024 / objects:.2f} KiB ({ctl_rss:.0f} MB)")  # fmt: skip
    results = [
        ("cold apply, in-process / ipvsadm -R (median of rounds)", f"{inproc_ratio:.2f}x", None),
        ("cold apply, whole command incl. Python start-up / ipvsadm -R (median of rounds)", f"{ratio:.2f}x",
         ratio <= target["cold"]),
        ("daemon start on the applied kernel state: netlink writes", str(run.writes),
         run.writes == 0 if "idle" in target else None),
        ("daemon start until ready (API open)", f"{run.ready_s:.1f}s", None),
    ]  # fmt: skip
    if "reload_s" in target:
        results.append(("daemon reload of one weight (median)", f"{reload_med:.3f}s", reload_med <= target["reload_s"]))
    else:
        results.append(("incremental: daemon reload of one weight (median) / cold mhctl apply, whole command (median)",
                        f"{reload_med / cold_med:.2%}", reload_med / cold_med <= target["reload_share"]))  # fmt: skip
    results += [
        ("(not judged) the same / the in-process cold apply (median)", f"{reload_med / inproc_med:.2%}", None),
        ("(not judged) one-shot mhctl apply of that edit, which must dump everything / cold apply",
         f"{inc_s / cold_med:.1%}", None),
        ("daemon peak RSS", f"{run.rss:.0f} MB", run.rss <= target["rss"]),
        ("(not judged) mhctl apply peak RSS", f"{ctl_rss:.0f} MB", None),
        ("same rules as ipvsadm -R", str(same), same),
    ]  # fmt: skip
    if args.idle_window > 0:
        results.append((f"periodic whole passes every {args.reconcile_interval:g}s ({run.passes} in"
                        f" {args.idle_window:g}s): share of a core", f"{run.idle_cpu:.1%}",
                        run.idle_cpu <= target["idle"] if "idle" in target else None))  # fmt: skip
    for name, value, ok in results:
        print(f"{'INFO' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {value}")
    for ns in (ref, mine, mine2):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return 0 if all(ok is not False for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
