"""systemd integration at the edge: sd_notify and journal logging, inert outside systemd.

systemd-python is used when installed (Debian: python3-systemd); without it the notify protocol is a
single datagram to $NOTIFY_SOCKET, sent directly, so `Type=notify` works from a bare pip install too.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

try:  # pragma: no cover - depends on the host
    from systemd import daemon as _sd_daemon  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover
    _sd_daemon = None


def notify(state: str) -> bool:
    """Send a notification (READY=1, RELOADING=1, STATUS=..., WATCHDOG=1); False outside systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if _sd_daemon is not None:
        return bool(_sd_daemon.notify(state))
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec when the watchdog is on for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class _Readable(logging.Formatter):
    """`level logger: message [service server]` for a terminal or a plain log file."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(
            f"{k.removeprefix('MHD_').lower()}={getattr(record, k)}"
            for k in ("MHD_SERVICE", "MHD_SERVER")
            if getattr(record, k, None)
        )
        return f"{text} [{extra}]" if extra else text


def setup_logging(level: int = logging.INFO) -> None:
    """Journal with structured fields (MHD_SERVICE, MHD_SERVER) under systemd, stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    journal = _journal() if os.environ.get("JOURNAL_STREAM") else None
    if journal is not None:
        handler = journal.JournalHandler(SYSLOG_IDENTIFIER="mhd")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Readable("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def _journal() -> Any:
    """systemd.journal, imported only when stderr is the journal: with its uuid, platform and
    datetime it is a dozen modules, which a daemon started outside systemd never uses."""
    try:
        from systemd import journal  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # pragma: no cover - depends on the host
        return None
    return journal
