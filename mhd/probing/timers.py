"""The loop's shared timers: probe deadlines and the prober's due times, and the stall detector.

`Timers` is ``loop.call_at()`` for tens of thousands of timers; `timers(loop)` gives the one
instance of a loop. `StallLog` records when the loop stood still, so that a timeout caused by the
checker itself is not blamed on the server (see `mhd.health.inconclusive`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mhd.health")

TICK = 0.001  # seconds: timers due within one tick of each other fire together
HEARTBEAT = 0.025  # seconds: while anything is scheduled, the timers look at the clock this often
STALL_MIN = 0.005  # seconds: a timer this late (or later) is recorded as a stall of the loop
FIRE_BUDGET = 0.005  # seconds of callbacks in one go (a burst after a stall) before I/O gets a turn
STALLS_KEPT = 4096  # stall records kept (~100 a second at most under saturation, see stalled())
Token = list[Any]  # [callback or None when cancelled / EXPIRED when fired, argument]
EXPIRED = object()


class Timers:
    """``loop.call_at()`` for tens of thousands of timers: one loop timer over a heap of tuples.

    asyncio keeps its timers in a heap of `TimerHandle`s compared by a Python ``__lt__``; at
    10,000 checks/s (a due time and a deadline each) that heap costs more CPU than the TCP
    probe. Here comparisons are on floats in C, and the loop is woken at most once per `TICK`.
    A burst of due timers (after a stall, or 10,000 checks configured at once) runs in slices of
    `FIRE_BUDGET`, so that the loop takes in completed I/O in between.

    It is also the loop's stall detector: every time it fires it notes how late it is, and while
    anything is scheduled it fires at least every `HEARTBEAT`, so a loop blocked for longer than
    that (a slow callback, the process not scheduled) leaves a record. `stalled()` answers, for
    a probe that timed out, whether the loop itself stood still during it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Token]] = []
        self._seq = itertools.count()  # ties never compare the tokens
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.stalls = StallLog()

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any) -> Token:
        """Schedule ``callback(arg)``; cancel with ``token[0] = None``."""
        token: Token = [callback, arg]
        heapq.heappush(self._heap, (when, next(self._seq), token))
        if when < self._timer_at:
            self._arm(when)
        return token

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        clock = self._loop.time
        started = clock()
        if started - self._timer_at >= STALL_MIN:
            self.stalls.note(self._timer_at, started)
        # The loop runs a timer when it is due within its clock resolution: trust it.
        now = max(started, self._timer_at)
        self._timer, self._timer_at = None, math.inf
        heap = self._heap
        fired = 0
        sliced = False
        try:
            while heap and heap[0][0] <= now:
                token = heapq.heappop(heap)[2]
                callback = token[0]
                if callback is not None:
                    token[0] = EXPIRED
                    try:
                        callback(token[1])
                    except Exception:
                        log.exception("timer callback failed")
                    fired += 1
                    if not fired % 64 and clock() - started > FIRE_BUDGET:
                        self._arm(clock())  # the rest after the loop has looked at its sockets
                        sliced = True
                        return
        finally:
            # Also when this went wrong (a MemoryError in the logging above): a heap left unarmed
            # would never fire again, and every probe of the daemon would stop. Always re-armed
            # from the heap's head: a callback's call_at() armed the timer for its own entry, which
            # may come after entries already waiting.
            if heap and not sliced:
                self._arm(max(min(heap[0][0], now + HEARTBEAT), now + TICK))

    def stalled(self, start: float, end: float) -> float:
        """See `StallLog.longest`."""
        return self.stalls.longest(start, end)


class StallLog:
    """When the loop stood still: each record is a timer's due time and the time it really ran
    (loop time), kept when it ran at least `STALL_MIN` late. Pure bookkeeping, no clock."""

    def __init__(self, kept: int = STALLS_KEPT) -> None:
        self._records: deque[tuple[float, float]] = deque(maxlen=kept)

    def note(self, began: float, ended: float) -> None:
        """The loop ran nothing of ours from ``began`` to ``ended`` (records come in time order)."""
        self._records.append((began, ended))

    def longest(self, start: float, end: float) -> float:
        """The longest stretch of [start, end] during which the loop was seen stalled.

        Only the longest single stretch counts, not their sum: a loop that is merely saturated
        is late by about one iteration at every firing, and a probe loses about one iteration
        per step of its own, not the whole window. Records end in time order, so the scan stops
        at the first one that ended before ``start``.
        """
        longest = 0.0
        for began, ended in reversed(self._records):
            if ended <= start:
                break
            longest = max(longest, min(ended, end) - max(began, start))
        return longest


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timers] = weakref.WeakKeyDictionary()


def timers(loop: asyncio.AbstractEventLoop) -> Timers:
    """The loop's shared `Timers` (probe deadlines and the prober's due times)."""
    t = _TIMERS.get(loop)
    if t is None:
        t = _TIMERS[loop] = Timers(loop)
    return t
