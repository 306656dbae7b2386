"""How a probe's failure is told: `CheckFailed` for a server's wrong answer, and operator-facing
words for every exception a probe can meet. Every error becomes a failed `CheckResult` whose
``detail`` says what happened."""

from __future__ import annotations

import asyncio
import errno
import os
import ssl


class CheckFailed(Exception):
    """A probe found the server unhealthy; the message is the result's detail."""


# What a probe's own system calls fail with when the director, not the server, is short of
# something: file descriptors, memory, socket buffers, processes, ephemeral ports, or a source
# address that vanished (EADDRNOTAVAIL). Never an answer of the server's.
LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EAGAIN}
)


def is_local(e: BaseException) -> bool:
    """Whether a probe's exception is the director's own fault (see `LOCAL_ERRNOS`)."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and e.errno in LOCAL_ERRNOS


def timeout_detail(timeout: float) -> str:
    return f"timeout after {timeout:g}s"


def describe_error(e: BaseException) -> str:
    """A short operator-facing reason for an exception raised by a probe."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS verify failed: {e.verify_message or e.reason}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, OSError) and e.errno is not None:
        return errno_detail(e.errno)
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed before a complete answer"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


_ERRNO_NAMES = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset"}


def errno_detail(err: int) -> str:
    """``connection refused``, ``connection reset``, or the system's own words for ``err``."""
    return _ERRNO_NAMES.get(err) or os.strerror(err).lower()
