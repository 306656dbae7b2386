"""The prober when the director itself fails: a MemoryError anywhere in the loop (asyncio's own
callbacks, our timer and sweep callbacks, even the logging of the error) must neither stop the
probes nor count against a server. Found by running the prober under RLIMIT_AS
(`bench/bench_memory_pressure.py`): checks that were never probed again, HTTP probes whose
connection asyncio lost timing out as server failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest
from servers import LO, aio, tarpit, tcp_server, until

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing import prober as prober_module
from mhd.probing.faults import FaultWatch
from mhd.probing.prober import Prober, Target
from mhd.probing.tcp import Probes
from mhd.probing.tcp import log as tcp_log
from mhd.probing.timers import Timers
from mhd.probing.timers import log as timers_log


def _out_of_memory(*args: object, **kwargs: object) -> None:
    raise MemoryError


@aio
async def test_a_timer_callback_whose_error_cannot_even_be_logged_leaves_the_heap_armed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the heap was left unarmed and no timer of the daemon (every probe's due time)
    fired again until something new was scheduled."""
    timers = Timers(asyncio.get_running_loop())
    fired: list[str] = []

    def broken(_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(timers_log, "exception", _out_of_memory)  # logging the failure fails too
    now = asyncio.get_running_loop().time()
    timers.call_at(now + 0.01, broken, None)
    timers.call_at(now + 0.05, fired.append, "later")
    await asyncio.sleep(0.2)
    assert fired == ["later"]


@contextlib.contextmanager
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a connect to it
    neither completes nor fails until it gives up (a TCP probe times out)."""
    listener = socket.socket()
    listener.bind((LO, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((LO, port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


@aio
async def test_a_failed_timeout_sweep_is_armed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline sweep that fails half-way still times out the connects left in its queue."""
    monkeypatch.setattr(tcp_log, "exception", _out_of_memory)
    loop = asyncio.get_running_loop()
    probes = Probes(loop)
    results: list[CheckResult] = []
    calls = 0

    def done(_: object, result: CheckResult, ended: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MemoryError  # the first report fails, and so does logging it
        results.append(result)

    spec = CheckSpec(type="tcp", interval=1.0, timeout=0.1)
    with full_listener() as port:  # connects that never complete
        await asyncio.sleep(0.05)
        probes.start(spec, LO, port, "", done, None)
        probes.start(spec, LO, port, "", done, None)
        await asyncio.sleep(0.01)
        probes.start(spec, LO, port, "", done, None)  # a later deadline: a second sweep
        await until(lambda: len(results) == 2, within=2.0)
    assert all(r.timed_out for r in results)
    await probes.aclose()


@aio
async def test_the_audit_starts_a_lost_check_again(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(prober_module, "AUDIT_EVERY", 0.1)
    prober = Prober()
    spec = CheckSpec(type="tcp", interval=0.05, timeout=0.04, rise=1, fall=1)
    async with tcp_server() as port:
        target = Target("web", LO, port, spec)
        prober.set_targets([target])
        await prober.start()
        await until(lambda: prober.counters(target).probes >= 2)
        check = prober._where[target].check
        # What a MemoryError half-way through a callback leaves: no probe in flight, no alarm.
        prober._cancel(check)
        probes = prober.counters(target).probes
        await asyncio.sleep(0.3)  # past an audit
        await until(lambda: prober.counters(target).probes > probes + 1)
    await prober.stop()
    assert prober.lost >= 1
    assert any("lost by a failure of the director's own" in r.getMessage() for r in caplog.records)


@aio
async def test_a_timeout_during_a_local_fault_is_not_the_servers(caplog: pytest.LogCaptureFixture) -> None:
    """A MemoryError in one of asyncio's own callbacks (here: any callback) is seen by the loop's
    exception handler; a probe that times out across it is not counted, and the error is logged
    once, not once per callback."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    prober = Prober()
    spec = CheckSpec(type="http", interval=0.3, timeout=0.2, rise=1, fall=1)
    async with tcp_server(tarpit) as port:  # accepts, never answers: every probe times out
        target = Target("web", LO, port, spec)
        prober.set_targets([target], in_kernel=lambda t: True)  # starts up
        await prober.start()

        def out_of_memory() -> None:
            raise MemoryError

        stop = loop.time() + 1.0
        while loop.time() < stop:  # a fault every 20 ms, for longer than any probe takes
            loop.call_soon(out_of_memory)
            await asyncio.sleep(0.02)
        counters = prober.counters(target)
        assert counters.inconclusive >= 2 and counters.failures == 0
        assert prober.health(target).state == "up"
    await prober.stop()
    warned = [r for r in caplog.records if "the director is short of resources" in r.getMessage()]
    assert len(warned) == 1
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no traceback per callback


def test_the_fault_watch_passes_other_errors_on() -> None:
    loop = asyncio.new_event_loop()
    seen: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    watch = FaultWatch()
    watch.install(loop)
    loop.call_exception_handler({"message": "x", "exception": ValueError("not ours")})
    loop.call_exception_handler({"message": "y", "exception": MemoryError()})
    watch.uninstall()
    loop.call_exception_handler({"message": "z", "exception": MemoryError()})
    loop.close()
    assert [c["message"] for c in seen] == ["x", "z"]
    assert watch.at > float("-inf")


@aio
async def test_a_timer_scheduled_by_a_callback_does_not_delay_the_ones_already_waiting() -> None:
    """The re-arm after a firing must look at the heap's head: the first version of the `finally`
    above kept the timer a callback had armed for its own, later entry, and the probes already
    waiting fired up to an interval late (a quiet daemon's lag p99 went from ~20 ms to 980 ms)."""
    loop = asyncio.get_running_loop()
    timers = Timers(loop)
    now = loop.time()
    late: dict[str, float] = {}

    def record(name_due: tuple[str, float]) -> None:
        late[name_due[0]] = loop.time() - name_due[1]

    def reschedule(_: object) -> None:  # what a probe's callback does: its next slot, an interval on
        timers.call_at(now + 1.0, record, ("next slot", now + 1.0))

    timers.call_at(now + 0.01, reschedule, None)
    timers.call_at(now + 0.1, record, ("waiting", now + 0.1))
    await asyncio.sleep(1.2)
    assert set(late) == {"waiting", "next slot"}
    assert late["waiting"] < 0.5  # fired at its time, give or take the loop; not with the next slot
