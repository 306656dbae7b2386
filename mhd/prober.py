"""Runs every health check concurrently in the caller's asyncio loop.

One long-lived task per distinct check, i.e. per ``(spec, address, probe port)``: a server shared
by several services with the same check definition is probed once and the result is fanned out to
each service's own `Health` (exec checks also key on the service, because the script sees
``MHD_SERVICE`` and may answer differently per service).

Scheduling: each check fires at ``phase + k * interval`` on the loop clock, where ``phase`` comes
from a hash of the check, so that 1,000 servers configured at once do not fire at once, and the
same server keeps the same phase across restarts of the loop. Due times advance by exactly one
interval (no drift from probe duration); a probe can never overrun because ``timeout < interval``,
and if the loop was starved the missed slots are skipped rather than fired in a burst.

Due times are kept on the shared `mhd.checkers.Timers` rather than one ``asyncio.sleep()`` per
check: with 10,000 checks, asyncio's own timer heap compares `TimerHandle`s in Python (~14
comparisons per push and pop), which costs more CPU than the TCP probe itself. It wakes at most
once per `TICK` (1 ms), which bounds the added lag.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mhd.checkers import CheckResult, Timers, probe, timers
from mhd.checkspec import CheckSpec
from mhd.health import Health, Transition, initial, observe

log = logging.getLogger("mhd.health")


@dataclass(frozen=True, slots=True)
class Target:
    """One real server of one service, with the check that decides its health."""

    service: str
    address: str
    port: int
    spec: CheckSpec

    @property
    def server(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


CheckKey = tuple[CheckSpec, str, int, str]  # spec, address, probe port, service ("" unless exec)
TransitionHook = Callable[[Target, Transition, Health], None]
ProbeHook = Callable[[CheckKey, float, float, CheckResult], None]  # key, due (loop.time()), lag (s)


@dataclass(slots=True)
class Counters:
    """Per-target probe counters, for metrics."""

    probes: int = 0
    failures: int = 0
    last_lag: float = 0.0  # seconds between the due time and the start of the last probe
    last_duration: float = 0.0


@dataclass(slots=True)
class _Slot:
    health: Health
    counters: Counters = field(default_factory=Counters)


@dataclass(slots=True)
class _Check:
    key: CheckKey
    slots: dict[Target, _Slot] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


def check_key(target: Target) -> CheckKey:
    """What makes two targets the same probe."""
    spec = target.spec
    service = target.service if spec.type == "exec" else ""
    return (spec, target.address, spec.probe_port(target.port), service)


def phase(key: CheckKey) -> float:
    """Deterministic offset in [0, 1) of the interval (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def first_due(now: float, interval: float, offset: float) -> float:
    """The first instant >= now that is ``offset * interval`` past a multiple of interval."""
    base = offset * interval
    return now + (base - now) % interval


def next_due(due: float, now: float, interval: float) -> float:
    """The slot after ``due``; slots already past ``now`` are skipped, keeping the phase."""
    due += interval
    if due < now:
        due += math.ceil((now - due) / interval) * interval
    return due


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # cancelled by stop() before the task ran its finally
        fut.set_result(None)


class Prober:
    """Schedules the probes, keeps each target's `Health` and reports transitions."""

    def __init__(
        self,
        on_transition: TransitionHook | None = None,
        *,
        on_probe: ProbeHook | None = None,
    ) -> None:
        self._on_transition = on_transition
        self._on_probe = on_probe
        self._checks: dict[CheckKey, _Check] = {}
        self._where: dict[Target, _Check] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._running = False

    # --- configuration ------------------------------------------------------------------------

    def set_targets(
        self, targets: Iterable[Target], *, in_kernel: Callable[[Target], bool] | None = None
    ) -> None:
        """Replace the target set; unchanged targets keep their health and their schedule.

        ``in_kernel(target)`` tells whether a *new* target is already a kernel destination
        (it then starts up, see `mhd.health.initial`).
        """
        wanted = dict.fromkeys(targets)
        for target in [t for t in self._where if t not in wanted]:
            self._remove(target)
        for target in wanted:
            if target not in self._where:
                self._add(target, bool(in_kernel and in_kernel(target)))

    def update_targets(
        self, removed: Iterable[Target], added: Iterable[Target], *, in_kernel: Callable[[Target], bool]
    ) -> None:
        """`set_targets` for a known difference: a reload that touched one service of 1,000 costs
        what that service costs, not a pass over every target."""
        for target in removed:
            if target in self._where:
                self._remove(target)
        for target in added:
            if target not in self._where:
                self._add(target, in_kernel(target))

    def _add(self, target: Target, in_kernel: bool) -> None:
        key = check_key(target)
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = _Check(key)
            if self._running:
                self._spawn(check)
        check.slots[target] = _Slot(initial(in_kernel, target.spec))
        self._where[target] = check

    def _remove(self, target: Target) -> None:
        check = self._where.pop(target)
        del check.slots[target]
        if not check.slots:
            del self._checks[check.key]
            self._cancel(check)

    # --- status -------------------------------------------------------------------------------

    def health(self, target: Target) -> Health:
        return self._where[target].slots[target].health

    def counters(self, target: Target) -> Counters:
        return self._where[target].slots[target].counters

    def snapshot(self) -> dict[Target, Health]:
        return {t: slot.health for c in self._checks.values() for t, slot in c.slots.items()}

    @property
    def probe_count(self) -> int:
        """Distinct probes scheduled (after dedup)."""
        return len(self._checks)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        for check in self._checks.values():
            if check.task is None:
                self._spawn(check)

    async def stop(self) -> None:
        """Cancel every probe and wait for them: exec probes kill and reap their children."""
        self._running = False
        for check in self._checks.values():
            self._cancel(check)
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def _spawn(self, check: _Check) -> None:
        loop = asyncio.get_running_loop()
        check.task = loop.create_task(self._loop(check, timers(loop)))

    def _cancel(self, check: _Check) -> None:
        task, check.task = check.task, None
        if task is not None and not task.done():
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    # --- probing ------------------------------------------------------------------------------

    async def _loop(self, check: _Check, alarm: Timers) -> None:
        spec, address, port, service = check.key
        loop = asyncio.get_running_loop()
        interval = spec.interval
        due = first_due(loop.time(), interval, phase(check.key))
        while True:
            wake: asyncio.Future[None] = loop.create_future()
            token = alarm.call_at(due, _wake, wake)
            try:
                await wake
            finally:
                token[0] = None  # cancelled (reload/stop): nothing left on the heap to fire
            lag = loop.time() - due
            result = await probe(spec, address, port, service=service)
            self._deliver(check, due, lag, result)
            due = next_due(due, loop.time(), interval)

    def _deliver(self, check: _Check, due: float, lag: float, result: CheckResult) -> None:
        if self._on_probe is not None:
            try:
                self._on_probe(check.key, due, lag, result)
            except Exception:
                log.exception("on_probe hook failed")
        spec = check.key[0]
        for target, slot in list(check.slots.items()):
            counters = slot.counters
            counters.probes += 1
            counters.failures += not result.ok
            counters.last_lag = lag
            counters.last_duration = result.latency
            slot.health, transition = observe(slot.health, result, spec)
            if transition is not None:
                self._report(target, transition, slot.health)

    def _report(self, target: Target, transition: Transition, health: Health) -> None:
        log.info(
            "%s %s: %s -> %s (%s)",
            target.service, target.server, transition.old, transition.new, transition.reason,
            extra={"MHD_SERVICE": target.service, "MHD_SERVER": target.server},
        )  # fmt: skip
        if self._on_transition is None:
            return
        try:
            self._on_transition(target, transition, health)
        except Exception:
            log.exception("on_transition hook failed for %s %s", target.service, target.server)
