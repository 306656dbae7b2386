"""The director's own faults seen outside a probe's result.

Short of memory, asyncio itself fails: a transport's read raises MemoryError, a callback cannot
be allocated, and the probe whose connection that was never hears of it and times out. Such a
timeout says nothing about the server. `FaultWatch` is the loop's exception handler while the
prober runs: it notes when the director last met a local fault (`mhd.probing.errors.is_local`),
so the prober can leave a timeout that overlaps one uncounted, and it logs those errors at most
once a minute instead of one traceback each (under pressure, thousands a second).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from mhd.probing.errors import is_local

log = logging.getLogger("mhd.health")

WARN_EVERY = 60.0  # seconds between two warnings about local faults in the loop


class FaultWatch:
    def __init__(self) -> None:
        self.at = -math.inf  # loop time of the last local fault seen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._warned = -math.inf
        self._unwarned = 0

    def note(self, now: float) -> None:
        self.at = max(self.at, now)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or not is_local(exc):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = loop.time()
        self.note(now)
        if now - self._warned < WARN_EVERY:
            self._unwarned += 1
            return
        since = f"; {self._unwarned} more since the last warning" if self._unwarned else ""
        self._warned, self._unwarned = now, 0
        log.warning(
            "the director is short of resources (%s%s; asyncio: %s): probe timeouts meanwhile are not "
            "counted against servers%s",
            type(exc).__name__, f": {exc}" if str(exc) else "", context.get("message", "?"), since,
        )  # fmt: skip
