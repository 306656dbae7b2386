"""The prober against real loopback servers: dedup, spread, reload, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import LO, aio, closed_port, pid_gone, tarpit, tcp_server, until

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult, Health, Transition
from mhd.probing.prober import CheckKey, Prober, Target, check_key, first_due, next_due, phase
from mhd.probing.tcp import Probes

FAST = CheckSpec(type="tcp", interval=0.05, timeout=0.04, rise=1, fall=1)


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[tuple[Target, Transition]] = []
        self.probes: list[tuple[CheckKey, float, float, CheckResult]] = []

    def on_transition(self, target: Target, transition: Transition, health: Health) -> None:
        assert health.state == transition.new
        self.transitions.append((target, transition))

    def on_probe(self, key: CheckKey, due: float, lag: float, result: CheckResult) -> None:
        self.probes.append((key, due, lag, result))

    def prober(self) -> Prober:
        return Prober(self.on_transition, on_probe=self.on_probe)


# --- pure scheduling helpers ------------------------------------------------------------------


@given(st.floats(0, 1e6), st.floats(0.1, 60), st.floats(0, 0.999))
def test_first_due_is_within_one_interval(now: float, interval: float, offset: float) -> None:
    due = first_due(now, interval, offset)
    assert now <= due < now + interval + 1e-6


@given(st.floats(0, 1e5), st.floats(0.1, 60), st.floats(0, 1e4))
def test_next_due_keeps_the_phase_and_skips_missed_slots(due: float, interval: float, late: float) -> None:
    now = due + late
    nxt = next_due(due, now, interval)
    assert nxt >= now or nxt == due + interval
    slots = (nxt - due) / interval
    assert abs(slots - round(slots)) < 1e-6  # no drift: always a whole number of intervals
    # the slot before it was missed (float rounding may skip one exactly on `now`)
    assert nxt - interval < max(now, due + interval) + 1e-6 or nxt == due + interval


def test_phases_spread_1000_servers_over_the_interval() -> None:
    spec = CheckSpec(type="tcp")
    keys = [check_key(Target("s", f"10.0.{i // 250}.{i % 250}", 80, spec)) for i in range(1000)]
    buckets = Counter(int(phase(k) * 10) for k in keys)
    assert len(buckets) == 10
    assert max(buckets.values()) < 150  # uniform: ~100 per tenth of the interval
    assert phase(keys[0]) == phase(check_key(Target("other", "10.0.0.0", 80, spec)))


def test_exec_checks_are_not_shared_between_services() -> None:
    spec = CheckSpec(type="exec", command=("true",))
    assert check_key(Target("a", LO, 80, spec)) != check_key(Target("b", LO, 80, spec))
    tcp = CheckSpec(type="tcp", port=9)
    assert check_key(Target("a", LO, 80, tcp)) == check_key(Target("b", LO, 443, tcp))


# --- live -------------------------------------------------------------------------------------


@aio
async def test_rise_fall_and_transition_callback(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    prober = rec.prober()
    caplog.set_level(logging.INFO, logger="mhd.health")
    # fall=2: a probe in flight while the server closes its listener may end "connection reset"
    # (its connection sat in the accept queue, which close() resets); the next probe starts
    # after the close, so the second failure in a row, which is the reason logged, is always
    # "connection refused".
    spec = CheckSpec(type="tcp", interval=0.05, timeout=0.04, rise=1, fall=2)
    async with tcp_server() as port:
        target = Target("web", LO, port, spec)
        prober.set_targets([target])
        await prober.start()
        await until(lambda: prober.health(target).state == "up")
    await until(lambda: prober.health(target).state == "down")
    await prober.stop()
    assert [(t.old, t.new) for _, t in rec.transitions] == [("unknown", "up"), ("up", "down")]
    records = [r for r in caplog.records if r.name == "mhd.health"]
    assert len(records) == 2  # each transition logged exactly once
    assert records[1].MHD_SERVICE == "web"  # type: ignore[attr-defined]
    server = records[1].MHD_SERVER  # type: ignore[attr-defined]
    assert server == f"{LO}:{port}"
    assert records[1].getMessage().endswith("(2 consecutive failures, last: connection refused)")
    counters = prober.counters(target)
    assert counters.probes >= 3 and counters.failures >= 2


@aio
async def test_shared_targets_are_probed_once_and_fanned_out() -> None:
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="http", interval=0.1, timeout=0.09, rise=1)
    async with tcp_server() as port:
        a, b = Target("a", LO, port, spec), Target("b", LO, port, spec)
        other = Target("c", LO, port, CheckSpec(type="tcp", interval=0.1, timeout=0.05, rise=1))
        prober.set_targets([a, b, other])
        assert prober.probe_count == 2
        await prober.start()
        await asyncio.sleep(0.55)
        await prober.stop()
    http_probes = [p for p in rec.probes if p[0][0] == spec]
    assert 1 <= len(http_probes) <= 7  # once per interval (6 at most), not once per service
    assert prober.counters(a).probes == prober.counters(b).probes == len(http_probes)
    assert {t.service for t, _ in rec.transitions} == {"a", "b", "c"}


@aio
async def test_servers_without_a_check_are_up_and_never_probed() -> None:
    rec = Recorder()
    prober = rec.prober()
    targets = [
        Target("s", f"127.0.0.{i}", 80, CheckSpec(type="none", interval=0.05, timeout=0.01)) for i in (1, 2)
    ]
    prober.set_targets(targets)
    await prober.start()
    await asyncio.sleep(0.3)
    await prober.stop()
    assert rec.probes == [] and rec.transitions == []
    assert {prober.health(t).state for t in targets} == {"up"}


@aio
async def test_due_times_spread_and_do_not_drift() -> None:
    rec = Recorder()
    prober = rec.prober()
    # `none` probes cost nothing; initial-state down makes the prober run them (see the next test).
    spec = CheckSpec(type="none", interval=0.2, timeout=0.1, initial_state="down")
    prober.set_targets(Target("s", f"127.0.{i // 200}.{i % 200 + 1}", 80, spec) for i in range(400))
    await prober.start()
    await asyncio.sleep(1.05)
    await prober.stop()
    starts = [(key, due) for key, due, _, _ in rec.probes]
    per_tenth = Counter(int((due % 0.2) / 0.02) for _, due in starts)
    assert len(per_tenth) == 10 and max(per_tenth.values()) < 2 * len(starts) / 10
    by_key: dict[CheckKey, list[float]] = {}
    for key, due in starts:
        by_key.setdefault(key, []).append(due)
    for dues in by_key.values():
        # Exact slots: no drift. A loaded machine may make the prober skip a slot (a probe due while
        # the previous one still ran), never shift one: every gap is a whole number of intervals.
        slots = [(b - a) / 0.2 for a, b in itertools.pairwise(dues)]
        assert all(round(s) >= 1 and abs(s - round(s)) < 1e-6 for s in slots), slots


@aio
async def test_reload_keeps_state_of_unchanged_targets() -> None:
    rec = Recorder()
    prober = rec.prober()
    async with tcp_server() as port:
        kept = Target("web", LO, port, FAST)
        removed = Target("old", LO, port, CheckSpec(type="tcp", interval=0.05, timeout=0.04))
        prober.set_targets([kept, removed])
        await prober.start()
        await until(lambda: prober.health(kept).state == "up")
        before = prober.health(kept).transitions
        added = Target("new", LO, port, CheckSpec(type="tcp", interval=0.07, timeout=0.05))
        prober.set_targets([kept, added], in_kernel=lambda t: t is added)
        assert prober.health(kept).state == "up"
        assert prober.health(kept).transitions == before
        assert prober.health(added).state == "up"  # already in the kernel: starts up
        with pytest.raises(KeyError):
            prober.health(removed)
        assert set(prober.snapshot()) == {kept, added}
        probes_now = len([p for p in rec.probes if p[0][0] == removed.spec])
        await asyncio.sleep(0.2)
        assert len([p for p in rec.probes if p[0][0] == removed.spec]) == probes_now
        await prober.stop()


@aio
async def test_stop_leaves_no_tasks_sockets_or_processes(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = CheckSpec(
        type="exec",
        command=("/bin/sh", "-c", f"sleep 30 & echo $! >> {pids}; wait"),
        interval=1.0,
        timeout=0.9,
    )
    fds = len(os.listdir("/proc/self/fd"))
    prober = Prober()
    async with tcp_server() as port:
        prober.set_targets([Target("x", LO, 1, hang), Target("t", LO, port, FAST), Target("r", LO, 9, FAST)])
        await prober.start()
        await until(lambda: pids.exists() and pids.read_text().strip() != "")
        prober.set_targets([Target("t", LO, port, FAST)])  # reload cancels the exec probe...
        await prober.stop()  # ...and stop waits for it
    assert asyncio.all_tasks() == {asyncio.current_task()}
    for pid in map(int, pids.read_text().split()):
        await until(lambda pid=pid: pid_gone(pid))
    await until(lambda: len(os.listdir("/proc/self/fd")) <= fds)


@aio
async def test_a_failing_callback_does_not_stop_probing() -> None:
    def boom(target: Target, transition: Transition, health: Health) -> None:
        raise RuntimeError("boom")

    prober = Prober(boom)
    target = Target("x", LO, closed_port(), FAST)
    prober.set_targets([target])
    await prober.start()
    await until(lambda: prober.counters(target).probes >= 3)
    await prober.stop()
    assert prober.health(target).state == "down"


# --- starvation guard -------------------------------------------------------------------------


@aio
async def test_a_blocked_loop_takes_no_server_down(caplog: pytest.LogCaptureFixture) -> None:
    """The loop stands still (a callback sleeping) while probes are in flight, longer than their
    timeout: no server may go down for it, and probing goes on."""
    rec = Recorder()
    prober = rec.prober()
    http = CheckSpec(type="http", interval=0.2, timeout=0.1, rise=1, fall=1)
    tcp = CheckSpec(type="tcp", interval=0.2, timeout=0.1, rise=1, fall=1)
    async with tcp_server(host="0.0.0.0") as port:
        targets = [Target("s", f"127.0.0.{i}", port, spec) for i in range(1, 21) for spec in (http, tcp)]
        prober.set_targets(targets)
        await prober.start()
        await until(lambda: all(prober.health(t).state == "up" for t in targets), within=10)
        loop = asyncio.get_running_loop()
        for i in range(6):  # blocks at different phases of the interval
            await asyncio.sleep(0.037 * i)
            loop.call_soon(time.sleep, 0.3)
        probes = len(rec.probes)
        await asyncio.sleep(0.5)
        assert len(rec.probes) > probes  # still probing
        await prober.stop()
    assert [t.new for _, t in rec.transitions] == ["up"] * len(targets)


@aio
async def test_a_timeout_caused_by_a_stall_is_rechecked_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Deterministic: the server, which shares this loop, blocks it while a probe waits for its
    answer, so the probe's deadline passes first. The timeout is not counted, a re-check runs at
    once (well before the next slot) and succeeds, and the stall is logged."""
    caplog.set_level(logging.WARNING, logger="mhd.prober")
    stall_next = [False]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if stall_next[0]:
            stall_next[0] = False
            time.sleep(0.3)  # the whole loop, prober included, stands still
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="http", interval=2.0, timeout=0.1, rise=1, fall=1)
    async with tcp_server(handler) as port:
        target = Target("web", LO, port, spec)
        prober.set_targets([target])
        await prober.start()
        await until(lambda: prober.health(target).state == "up", within=5)
        failures = prober.counters(target).failures
        stall_next[0] = True
        before = len(rec.probes)
        await until(lambda: len(rec.probes) >= before + 2, within=5)  # the slot, the re-check
        await prober.stop()
    stalled, recheck = (r for _, _, _, r in rec.probes[before : before + 2])
    assert [(r.ok, r.timed_out) for r in (stalled, recheck)] == [(False, True), (True, False)]
    assert recheck.at - stalled.at < 1.0  # re-checked at once, not at the next slot (2 s)
    counters = prober.counters(target)
    assert (counters.inconclusive, counters.failures) == (1, failures)
    assert prober.health(target).state == "up"
    assert prober.health(target).successes >= 2  # the stalled probe did not break the streak
    assert [t.new for _, t in rec.transitions] == ["up"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "mhd.prober"]
    assert len(warnings) == 1 and "event loop stalled for" in warnings[0], warnings


@aio
async def test_timeouts_still_count_when_the_loop_is_responsive() -> None:
    """The guard hides nothing else: a server that accepts and never answers goes down."""
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="http", interval=0.1, timeout=0.05, rise=1, fall=2, initial_state="up")
    async with tcp_server(tarpit) as port:
        target = Target("web", LO, port, spec)
        prober.set_targets([target])
        await prober.start()
        await until(lambda: prober.health(target).state == "down")
        await prober.stop()
    assert rec.transitions[0][1].reason == "2 consecutive failures, last: timeout after 0.05s"


@aio
async def test_a_no_check_server_that_starts_down_is_probed_when_added_by_a_reload() -> None:
    """`none` checks are left unscheduled only while every server on them is up."""
    rec = Recorder()
    prober = rec.prober()
    up = Target("s", LO, 80, CheckSpec(type="none", interval=0.05, timeout=0.01))
    await prober.start()
    prober.set_targets([up])
    down = Target(
        "s", LO, 81, CheckSpec(type="none", interval=0.05, timeout=0.01, initial_state="down", rise=1)
    )
    shared = Target("t", LO, 80, up.spec)  # joins the unscheduled all-up check
    prober.set_targets([up, down, shared])
    await until(lambda: prober.health(down).state == "up")
    await prober.stop()
    assert prober.health(up).state == prober.health(shared).state == "up"
    assert {key[2] for key, _, _, _ in rec.probes} == {81}  # the all-up check was never probed


# --- the director's own faults ----------------------------------------------------------------

LOW_FD_PROBER = r"""
import asyncio, contextlib, json, logging, os, resource, sys
from mhd.config.checkspec import CheckSpec
from mhd.probing.prober import Prober, Target

tcp_port, http_port = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
warnings = []
logging.getLogger("mhd.prober").addHandler(logging.Handler())
logging.getLogger("mhd.prober").handlers[0].emit = warnings.append
spec = dict(interval=0.5, timeout=0.4, rise=1, fall=1)
targets = [Target(f"t{i}", f"127.0.{i // 200}.{i % 200 + 1}", tcp_port, CheckSpec(type="tcp", **spec))
           for i in range(800)]
targets += [Target(f"h{i}", f"127.1.{i // 200}.{i % 200 + 1}", http_port, CheckSpec(type="http", **spec))
            for i in range(200)]
targets += [Target(f"x{i}", f"127.2.0.{i + 1}", 80, CheckSpec(type="exec", command=("/bin/true",), **spec))
            for i in range(20)]

async def main():
    downs = []
    prober = Prober(lambda target, transition, health: downs.append(target.server))
    prober.set_targets(targets, in_kernel=lambda target: True)
    fds = len(os.listdir("/proc/self/fd"))
    # For three intervals the rest of the director holds every descriptor but one: a TCP probe
    # gets its socket and no epoll, an HTTP probe may get through.
    ballast = []
    with contextlib.suppress(OSError):
        while True:
            ballast.append(os.open("/dev/null", os.O_RDONLY))
    os.close(ballast.pop())
    await prober.start()
    await asyncio.sleep(1.5)
    starved = sum(prober.counters(t).inconclusive for t in targets)
    for fd in ballast:
        os.close(fd)
    # Then descriptors to spare: every check runs again (at least three intervals; longer only on a
    # machine too loaded to run 1,020 probes in them).
    ok = lambda: all(prober.health(t).last and prober.health(t).last.ok for t in targets)
    loop = asyncio.get_running_loop()
    until = loop.time() + 20
    await asyncio.sleep(1.5)
    while not ok() and loop.time() < until:
        await asyncio.sleep(0.25)
    await prober.stop()
    counters = [prober.counters(t) for t in targets]
    print(json.dumps({
        "downs": downs,
        "probes": sum(c.probes for c in counters),
        "failures": sum(c.failures for c in counters),
        "starved": starved,
        "ok_at_end": sum(bool(prober.health(t).last and prober.health(t).last.ok) for t in targets),
        "fds_before": fds,
        "fds_after": len(os.listdir("/proc/self/fd")),
        "warnings": sum("could not run" in w.getMessage() for w in warnings),
    }))

asyncio.run(main())
"""


def _serve(listener: socket.socket, answer: bytes | None) -> None:
    """Accept (and answer) until the listener is closed."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            if answer is not None:
                conn.recv(4096)
                conn.sendall(answer)


def test_a_director_out_of_file_descriptors_takes_no_server_down() -> None:
    """1,020 healthy servers (TCP, HTTP, exec), a prober with RLIMIT_NOFILE 256 of which all
    descriptors but one are taken for three intervals: probes fail with EMFILE, none of that
    counts against a server, and every check runs again once descriptors are free."""
    listeners = []
    for answer in (None, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"):
        listener = socket.create_server(("0.0.0.0", 0), backlog=4096)
        threading.Thread(target=_serve, args=(listener, answer), daemon=True).start()
        listeners.append(listener)
    ports = [str(listener.getsockname()[1]) for listener in listeners]
    try:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        out = subprocess.run(
            [sys.executable, "-c", LOW_FD_PROBER, *ports], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        for listener in listeners:
            listener.close()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["starved"] >= 800, report  # every TCP server met the shortage...
    assert (report["downs"], report["failures"]) == ([], 0), report  # ...and none was blamed for it
    assert report["ok_at_end"] == 1020, report  # once it was over, every check ran again
    assert report["fds_after"] <= report["fds_before"], report
    assert report["warnings"] == 1, report  # rate-limited: one a minute


@aio
async def test_a_failing_server_is_probed_fast_until_down_then_slowly() -> None:
    """Due times (the schedule, not measured durations): one failure switches to the fast
    interval, fall decides, then the down interval applies; recovery probes fast again."""
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(
        type="tcp", interval=0.4, timeout=0.05, rise=2, fall=3, fast_interval=0.1, down_interval=0.6
    )
    port = closed_port()
    prober.set_targets([Target("s", LO, port, spec)], in_kernel=lambda target: True)
    await prober.start()
    await until(lambda: len(rec.probes) >= 5, 5.0)
    async with tcp_server(host=LO, port=port):  # the server comes back
        await until(lambda: len(rec.transitions) >= 2, 5.0)
    await prober.stop()
    dues = [due for _, due, _, _ in rec.probes]
    oks = [result.ok for _, _, _, result in rec.probes]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(dues)]
    first_ok = oks.index(True)
    assert oks[:3] == [False] * 3 and all(not ok for ok in oks[:first_ok])
    assert gaps[:3] == [0.1, 0.1, 0.6]  # failing: fast; down after 3: slow
    assert gaps[first_ok] == 0.1  # one success of a down server: fast until rise decides
    assert [(t.old, t.new) for _, t in rec.transitions] == [("up", "down"), ("down", "up")]


@aio
async def test_a_probe_that_cannot_even_start_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the engine's start raises once (it reports its own errors as results, so
    this stands for a bug); the check must not stop for ever."""
    calls = 0
    real_start = Probes.start

    def start_failing_once(self: Probes, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        return real_start(self, *args)

    monkeypatch.setattr(Probes, "start", start_failing_once)
    rec = Recorder()
    prober = rec.prober()
    async with tcp_server() as port:
        prober.set_targets([Target("s", LO, port, FAST)])
        await prober.start()
        await until(lambda: len(rec.probes) >= 2)
        await prober.stop()
    assert calls >= 3 and all(result.ok for _, _, _, result in rec.probes)


@aio
async def test_targets_added_by_a_reload_are_spread_over_the_interval() -> None:
    """Issue 14: no thundering herd after a reload either; each new check's first probe falls at
    its own hashed phase of the interval, not at the moment of the reload."""
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="none", interval=0.2, timeout=0.1, initial_state="down")
    prober.set_targets([Target("old", LO, 80, spec)])
    await prober.start()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    reloaded = loop.time()
    prober.set_targets(Target("s", f"127.1.{i // 200}.{i % 200 + 1}", 80, spec) for i in range(400))
    took = loop.time() - reloaded  # each first due time is within one interval of its own _add
    await asyncio.sleep(0.25)
    await prober.stop()
    firsts: dict[CheckKey, float] = {}
    for key, due, _, _ in rec.probes:
        firsts.setdefault(key, due)
    offsets = [due - reloaded for key, due in firsts.items() if key[1] != LO]
    assert len(offsets) == 400 and all(0 <= o < 0.2 + took for o in offsets)
    per_tenth = Counter(int((due % 0.2) / 0.02) for key, due in firsts.items() if key[1] != LO)
    assert len(per_tenth) == 10 and max(per_tenth.values()) < 2 * 400 / 10


@aio
async def test_servers_without_a_check_share_one_record_and_no_probe() -> None:
    """Issue 15: a director of 100,000 servers without checks kept a check, a dict and a key for
    each (~450 bytes a server). Those that can never be probed share one record per setting; each
    keeps its own health and counters, none is probed, and the record goes with the last of them."""
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="none", interval=0.05, timeout=0.01)
    first = [Target(f"s{i % 3}", f"127.0.1.{i + 1}", 80, spec) for i in range(200)]
    prober.set_targets(first)
    await prober.start()
    more = [Target("late", f"127.0.2.{i + 1}", 80, spec) for i in range(50)]  # a reload adds these
    prober.set_targets(first + more)
    await asyncio.sleep(0.2)
    assert len(prober._checks) == 1 and prober.probe_count == 0
    assert {prober.health(t).state for t in first + more} == {"up"}
    assert prober.sharing(first[0]) == ("s0",)  # nothing probed, so nothing shared
    assert prober.counters(first[0]) is not prober.counters(first[1])
    prober.set_targets([])
    await prober.stop()
    assert rec.probes == [] and rec.transitions == [] and prober._checks == {}
