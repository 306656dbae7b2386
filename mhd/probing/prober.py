"""Runs every health check concurrently in the caller's asyncio loop.

One schedule per distinct check, i.e. per ``(spec, address, probe port)``: a server shared by
several services with the same check definition is probed once and the result is fanned out to
each service's own `Health` (exec checks also key on the service, because the script sees
``MHD_SERVICE`` and may answer differently per service).

Scheduling: each check fires at ``phase + k * interval`` on the loop clock, where ``phase`` comes
from a hash of the check, so that 1,000 servers configured at once do not fire at once, and the
same server keeps the same phase across restarts of the loop. Due times advance by exactly one
interval (no drift from probe duration); a probe can never overrun because ``timeout < interval``,
and if the loop was starved the missed slots are skipped rather than fired in a burst. The
interval is the spec's, or its ``fast_interval`` while a server's streak runs against its state
and its ``down_interval`` while it is down (`mhd.health.probe_interval`; both off by default).

No task per check: due times are entries on the shared `mhd.probing.timers.Timers` (one loop timer over
a heap of tuples, waking at most once per `TICK`, 1 ms), whose callback starts the probe through
`mhd.probing.tcp.Probes`, whose callback delivers the result and schedules the next slot. With
10,000 TCP checks a second, a long-lived task per check awaiting its due time and its probe cost
more CPU than the kernel's own work for the connect.

Starvation guard: a probe that timed out while this process's loop stood still for more than a
quarter of the timeout (`mhd.health.inconclusive`, measured by `Timers.stalled`) says nothing
about the server. It is not counted; the check is re-run at once (once per slot, when that can
finish before the next slot), and a warning says the loop was stalled.

The director's own faults: a probe that could not run because this host is short of file
descriptors, memory or socket buffers, or lost its source address (`CheckResult.local`, see
`mhd.probing.errors.LOCAL_ERRNOS`) is not counted either; it is retried at the next slot. Both
kinds are counted as inconclusive (`Counters.inconclusive`, the ``mhd_check_inconclusive``
metric) and warned about at most once a minute each.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult, Health, Transition, inconclusive, initial, observe, probe_interval
from mhd.probing.checkers import preload
from mhd.probing.faults import FaultWatch
from mhd.probing.tcp import Probes
from mhd.probing.timers import Timers, Token, timers

log = logging.getLogger("mhd.health")
stall_log = logging.getLogger("mhd.prober")


@dataclass(frozen=True, slots=True)
class Target:
    """One real server of one service, with the check that decides its health."""

    service: str
    address: str
    port: int
    spec: CheckSpec
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.service, self.address, self.port, self.spec)))

    def __hash__(self) -> int:
        """Hashed once: every pass looks up the health of every target (100,000 at a time)."""
        return self._hash

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
    inconclusive: int = 0  # not counted: the loop stalled during the probe, or a local fault
    last_lag: float = 0.0  # seconds between the due time and the start of the last probe
    last_duration: float = 0.0


@dataclass(slots=True)
class _Slot:
    health: Health
    check: _Check  # the probe that feeds this target (shared by targets with the same check key)
    counters: Counters = field(default_factory=Counters)


@dataclass(slots=True, eq=False)
class _Check:
    key: CheckKey
    slots: dict[Target, _Slot] = field(default_factory=dict)
    slot: float = 0.0  # the current slot (loop time): next_due() keeps its phase
    due: float = 0.0  # when the probe in flight was due (a re-check: when it was started)
    lag: float = 0.0  # how late it started
    alarm: Token | None = None  # the timer of the next slot
    probe: Any = None  # the probe in flight (a `Probes` handle)
    rechecked: bool = False  # a re-check already ran in this slot
    services: tuple[str, ...] | None = None  # sorted names of the services it feeds (status), cached


def never_probed(spec: CheckSpec) -> bool:
    """A `none` check without an `initial_state`: its servers are up from the start
    (`mhd.health.initial`) and, never probed, stay up."""
    return spec.type == "none" and spec.initial_state is None


def check_key(target: Target) -> CheckKey:
    """What makes two targets the same probe. The servers of a check that is never probed share
    one record: a `_Check`, its dict and its key for each would be ~450 bytes a server, 45 MB of a
    100,000-server director without checks, for nothing to schedule."""
    spec = target.spec
    if never_probed(spec):
        return (spec, "", 0, "")
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


def _idle(check: _Check) -> bool:
    """A `none` check whose servers are all up has nothing to probe (see `Prober._first`). Said
    without looking at the servers when the check is never probed: a shared record may hold
    100,000 of them, and a reload adds servers one by one."""
    spec = check.key[0]
    return never_probed(spec) or (spec.type == "none" and all(s.health.state == "up" for s in check.slots.values()))


def _interval(check: _Check) -> float:
    """The shortest interval that a server of the check asks for (`mhd.health.probe_interval`)."""
    spec = check.key[0]
    if spec.fast_interval is None and spec.down_interval is None:
        return spec.interval
    return min((probe_interval(slot.health, spec) for slot in check.slots.values()), default=spec.interval)


STALL_WARN_EVERY = 60.0  # seconds between two warnings about a stalled loop (or about local faults)
AUDIT_EVERY = 5.0  # seconds between two audits of the schedule (see `Prober._audit`)
LOST_AFTER = 2.0  # seconds past its timeout after which a probe in flight is taken as lost


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
        self._where: dict[Target, _Slot] = {}  # a target's health and check in one lookup
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: Timers | None = None
        self._probes: Probes | None = None
        self._warned: dict[str, float] = {}  # loop time of the last warning, per cause
        self._unwarned: dict[str, int] = {}  # inconclusive probes since then, per cause
        self._faults = FaultWatch()  # when the director last met a fault of its own
        self._audit_timer: asyncio.TimerHandle | None = None
        self.lost = 0  # probes found lost or checks found unscheduled by the audit

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
        check.slots[target] = self._where[target] = _Slot(initial(in_kernel, target.spec), check)
        check.services = None
        if self._running and check.alarm is None and check.probe is None:
            self._first(check)  # new, or a `none` check left unscheduled until now (see _first)

    def _remove(self, target: Target) -> None:
        check = self._where.pop(target).check
        del check.slots[target]
        check.services = None
        if not check.slots:
            del self._checks[check.key]
            self._cancel(check)

    # --- status -------------------------------------------------------------------------------

    def health(self, target: Target) -> Health:
        return self._where[target].health

    def counters(self, target: Target) -> Counters:
        return self._where[target].counters

    def sharing(self, target: Target) -> tuple[str, ...]:
        """The services fed by the probe of `target` (its own included), sorted: built once per
        change of the check's targets, since a status of 16,000 servers asks for every one."""
        check = self._where[target].check
        if never_probed(check.key[0]):  # no probe, so nothing shared (the record is, see check_key)
            return (target.service,)
        if check.services is None:
            check.services = tuple(sorted({t.service for t in check.slots}))
        return check.services

    def snapshot(self) -> dict[Target, Health]:
        return {t: slot.health for c in self._checks.values() for t, slot in c.slots.items()}

    @property
    def probe_count(self) -> int:
        """Distinct probes scheduled (after dedup); the shared records of checks never probed are
        not probes."""
        return sum(not never_probed(key[0]) for key in self._checks)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._loop = loop = asyncio.get_running_loop()
        self._timers = timers(loop)
        self._probes = Probes(loop)
        self._running = True
        self._faults.install(loop)
        self._audit_timer = loop.call_later(AUDIT_EVERY, self._audit)
        preload({key[0].type for key in self._checks})  # not at the first probe (a reload's new type: then)
        for check in self._checks.values():
            self._first(check)

    async def stop(self) -> None:
        """Cancel every probe and wait for them: exec probes kill and reap their children."""
        self._running = False
        if self._audit_timer is not None:
            self._audit_timer.cancel()
            self._audit_timer = None
        self._faults.uninstall()
        for check in self._checks.values():
            self._cancel(check)
        probes, self._probes = self._probes, None
        if probes is not None:
            await probes.aclose()  # also waits for the probes of checks removed by a reload

    def _cancel(self, check: _Check) -> None:
        if check.alarm is not None:
            check.alarm[0] = None  # nothing left on the heap to fire
            check.alarm = None
        if check.probe is not None and self._probes is not None:
            self._probes.cancel(check.probe)
        check.probe = None

    # --- probing ------------------------------------------------------------------------------

    def _first(self, check: _Check) -> None:
        assert self._loop is not None
        if _idle(check):
            # No check: up from the start (mhd.health.initial) and nothing to probe. Probing it
            # anyway cost a 16,000-server director 8,000 empty callbacks a second.
            return
        interval = check.key[0].interval
        self._schedule(check, first_due(self._loop.time(), interval, phase(check.key)))

    def _schedule(self, check: _Check, slot: float) -> None:
        assert self._timers is not None
        if check.alarm is not None:  # scheduled meanwhile from a hook (a reload adding a target)
            check.alarm[0] = None
        check.slot = slot
        check.rechecked = False
        check.alarm = self._timers.call_at(slot, self._fire, check)

    def _fire(self, check: _Check) -> None:
        assert self._loop is not None and self._probes is not None
        check.alarm = None
        check.due = due = check.slot
        check.lag = self._loop.time() - due
        self._start(check)

    def _start(self, check: _Check) -> None:
        """Start the check's probe. The engine reports its errors as results; should starting
        fail all the same, the check is not lost but tried again at the next slot."""
        assert self._loop is not None and self._probes is not None
        spec, address, port, service = check.key
        try:
            check.probe = self._probes.start(spec, address, port, service, self._done, check)
        except Exception:
            log.exception(
                "could not start a %s probe of %s port %d: tried again at the next slot",
                spec.type,
                address,
                port,
            )
            check.probe = None
            self._schedule(check, next_due(check.slot, self._loop.time(), _interval(check)))

    def _done(self, check: _Check, result: CheckResult, ended: float) -> None:
        assert self._loop is not None
        check.probe = None
        spec = check.key[0]
        if result.local:
            self._faults.note(ended)
            self._inconclusive(check, result)
            return
        if result.timed_out:
            assert self._timers is not None
            if self._faults.at >= ended - result.latency:  # short of memory meanwhile: see FaultWatch
                detail = f"{result.detail}, while the director was short of resources"
                self._inconclusive(check, result._replace(local=True, detail=detail))
                return
            stalled = self._timers.stalled(ended - result.latency, ended)
            if inconclusive(result, stalled, spec.timeout):
                self._inconclusive(check, result, stalled)
                return
        self._deliver(check, result)
        self._schedule(check, next_due(check.slot, self._loop.time(), _interval(check)))

    def _audit(self) -> None:
        """Level-triggered, like the reconcile loop: every check is either waiting for its slot or
        has a probe in flight that will end by its timeout. A callback that failed half-way (a
        MemoryError in the loop, say) could leave a check with neither, and it would never be
        probed again: such a check, or a probe far past its timeout, is started over here."""
        assert self._loop is not None and self._probes is not None
        now = self._loop.time()
        lost: list[_Check] = []
        try:
            for check in list(self._checks.values()):
                if check.probe is not None:
                    if now - (check.due + check.lag) <= check.key[0].timeout + LOST_AFTER:
                        continue
                    self._probes.cancel(check.probe)
                    check.probe = None
                elif check.alarm is not None or _idle(check):
                    continue
                lost.append(check)
                self._schedule(check, next_due(check.slot, now, _interval(check)))
        finally:
            if lost:
                self.lost += len(lost)
                log.warning(
                    "%d health checks had been lost by a failure of the director's own (the first: "
                    "%s port %d) and were started again",
                    len(lost), lost[0].key[1], lost[0].key[2],
                )  # fmt: skip
            if self._running:
                self._audit_timer = self._loop.call_later(AUDIT_EVERY, self._audit)

    def _inconclusive(self, check: _Check, result: CheckResult, stalled: float = 0.0) -> None:
        """A timeout while the loop stood still, or a fault of the director's own, is not the
        server's: count nothing, and re-check now if that can finish before the next slot, else
        wait for the next slot. A local fault (out of fds, memory) waits for the next slot: at
        once, it would most likely meet the same shortage."""
        assert self._loop is not None and self._probes is not None
        self._deliver(check, result, count=False)
        self._warn(check, result, stalled)
        spec = check.key[0]
        now = self._loop.time()
        slot = next_due(check.slot, now, _interval(check))
        if not check.rechecked and not result.local and now + spec.timeout < slot:
            check.rechecked = True
            check.due, check.lag = now, 0.0
            self._start(check)
        else:
            self._schedule(check, slot)

    def _warn(self, check: _Check, result: CheckResult, stalled: float) -> None:
        """At most one warning per `STALL_WARN_EVERY` for each of the two causes."""
        assert self._loop is not None
        now = self._loop.time()
        kind = "local" if result.local else "stall"
        if now - self._warned.get(kind, -math.inf) < STALL_WARN_EVERY:
            self._unwarned[kind] = self._unwarned.get(kind, 0) + 1
            return
        spec, address, port, _ = check.key
        unwarned = self._unwarned.pop(kind, 0)
        since = f"; {unwarned} more since the last warning" if unwarned else ""
        if result.local:
            stall_log.warning(
                "a %s probe of %s port %d could not run (%s): the director's own fault, not "
                "counted against the server, retried at the next interval%s",
                spec.type, address, port, result.detail, since,
            )  # fmt: skip
        else:
            stall_log.warning(
                "event loop stalled for %.0f ms during a %s probe of %s port %d (%s): not counted "
                "as a failure%s",
                stalled * 1000, spec.type, address, port, result.detail, since,
            )  # fmt: skip
        self._warned[kind] = now

    def _deliver(self, check: _Check, result: CheckResult, *, count: bool = True) -> None:
        if self._on_probe is not None:
            try:
                self._on_probe(check.key, check.due, check.lag, result)
            except Exception:
                log.exception("on_probe hook failed")
        spec = check.key[0]
        for target, slot in list(check.slots.items()):
            counters = slot.counters
            counters.probes += 1
            counters.last_lag = check.lag
            counters.last_duration = result.latency
            if not count:
                counters.inconclusive += 1
                continue
            counters.failures += not result.ok
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
