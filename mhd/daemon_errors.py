"""Unexpected errors of the daemon's loops, logged so that a recurring one cannot flood the journal."""

from __future__ import annotations

import logging

log = logging.getLogger("mhd")


class ErrorLog:
    """Unexpected errors of the loops, logged with their traceback once per distinct error until
    things work again: a failure that recurs every interval would otherwise flood the journal."""

    LIMIT = 100  # distinct errors remembered; beyond that, repeats are logged again

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def report(self, where: str, exc: Exception) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"
        if text in self.seen:
            log.debug("again: unexpected error in %s", text)
            return
        if len(self.seen) >= self.LIMIT:
            self.seen.clear()
        self.seen.add(text)
        log.error("unexpected error in %s; the daemon keeps serving and retries", text, exc_info=exc)

    def recovered(self, what: str) -> None:
        if self.seen:
            log.info("%s work again", what)
            self.seen.clear()
