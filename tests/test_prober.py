"""The prober against real loopback servers: dedup, spread, reload, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhd.checkers import CheckResult
from mhd.checkspec import CheckSpec
from mhd.health import Health, Transition
from mhd.prober import CheckKey, Prober, Target, check_key, first_due, next_due, phase

LO = "127.0.0.1"


# Small copies of test_checkers' helpers: tests/ is not a package, so no cross-imports.


def aio(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(20):  # unlike wait_for, no extra task: tests count tasks
            await fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(bounded(*args, **kwargs))

    return wrapper


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
    return port


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def tcp_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(answer, LO, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"  # a zombie of init is gone for us
    except FileNotFoundError:
        return True


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


async def until(cond: object, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


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
    async with tcp_server() as port:
        target = Target("web", LO, port, FAST)
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
    assert "connection refused" in records[1].getMessage()
    counters = prober.counters(target)
    assert counters.probes >= 2 and counters.failures >= 1


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
async def test_due_times_spread_and_do_not_drift() -> None:
    rec = Recorder()
    prober = rec.prober()
    spec = CheckSpec(type="none", interval=0.2, timeout=0.1)
    prober.set_targets(Target("s", f"127.0.{i // 200}.{i % 200 + 1}", 80, spec) for i in range(400))
    await prober.start()
    await asyncio.sleep(1.05)
    await prober.stop()
    starts = [(key, due) for key, due, _, _ in rec.probes]
    per_tenth = Counter(int((due % 0.2) / 0.02) for _, due in starts)
    assert len(per_tenth) == 10 and max(per_tenth.values()) < 2 * len(starts) / 10
    lags = sorted(lag for _, _, lag, _ in rec.probes)
    assert lags[len(lags) // 2] < 0.01
    by_key: dict[CheckKey, list[float]] = {}
    for key, due in starts:
        by_key.setdefault(key, []).append(due)
    for dues in by_key.values():
        gaps = [b - a for a, b in itertools.pairwise(dues)]
        assert all(abs(g - 0.2) < 1e-6 for g in gaps)  # exact slots: no drift


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
