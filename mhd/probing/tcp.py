"""The probe engine: probes in flight, each reported to a callback, and the TCP fast path.

Plain TCP checks are a state machine over an epoll of the engine's own; every other check type
runs `mhd.probing.checkers.run` in a task of its own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import time
from _socket import socket as _CSocket  # socket.socket's Python __init__ and close(): ~1.5 us a check
from collections import deque
from collections.abc import Callable
from typing import Any

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing.checkers import timed
from mhd.probing.errors import LOCAL_ERRNOS, describe_error, errno_detail, is_local, timeout_detail
from mhd.probing.sockets import LINGER_RST
from mhd.probing.timers import Token, timers

log = logging.getLogger("mhd.health")

Done = Callable[[Any, CheckResult, float], None]  # (arg, result, loop time at the end)


_STREAM_NB = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_POLL_MAX = 1024  # completions taken per drain; the loop calls again while the epoll is readable
_EPOLL_ERR = select.EPOLLERR | select.EPOLLHUP


class _Deadlines:
    """The TCP connects of one timeout value, oldest first: started in loop-time order, their
    deadlines are in order too, so a FIFO does what a heap would, at O(1) a probe."""

    __slots__ = ("detail", "entries", "sweep", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.detail = timeout_detail(timeout)
        self.entries: deque[tuple[float, list[Any]]] = deque()  # (deadline, connect record)
        self.sweep: Token | None = None  # the armed timer of the next sweep


class Probes:
    """Probes in flight, each reported to a callback: ``done(arg, result, ended)``.

    Why callbacks and not one awaited coroutine a probe: at 10,000 TCP checks a second the
    coroutine machinery (a task step per wake-up, futures, asyncio's add_writer/remove_writer
    bookkeeping) cost more CPU than the kernel's connect. A TCP check is therefore a plain
    state machine: a non-blocking socket, ``connect_ex``, one ``epoll_ctl`` on an epoll of our
    own (registered once with the loop as a reader; ``close()`` removes the socket from it), and
    on readiness ``SO_ERROR`` only when epoll reports an error. Completions are handled in
    batches, and always before a deadline is declared (`_sweep` drains the epoll first), so a
    connect that completed while the loop was busy is never reported as a timeout.

    Other check types run `mhd.probing.checkers.run` in a task of their own, with the same
    callback at the end. Results are never delivered synchronously from `start`, and never after `cancel`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._timers = timers(self._loop)
        self._epoll: select.epoll | None = None
        # fd -> [_CSocket (None once over), done, arg, start, drain round when registered]
        self._connects: dict[int, list[Any]] = {}
        self._deadlines: dict[float, _Deadlines] = {}
        self._tasks: dict[asyncio.Task[tuple[CheckResult, float]], tuple[Done, Any] | None] = {}
        self._serial = 0  # drain round: sockets registered during a drain wait for the next one

    def start(self, spec: CheckSpec, address: str, port: int, service: str, done: Done, arg: Any) -> Any:
        """Start probing ``address:port`` (the probe port, already resolved); returns a handle
        for `cancel`."""
        if spec.type == "tcp":
            return self._connect(address, port, spec.source_address, spec.timeout, done, arg)
        task = self._loop.create_task(timed(spec, address, port, service))
        self._tasks[task] = (done, arg)
        task.add_done_callback(self._task_done)
        return task

    def cancel(self, handle: Any) -> None:
        """Abandon a probe: its callback will not be called."""
        if isinstance(handle, asyncio.Task):
            if handle in self._tasks:
                self._tasks[handle] = None
                handle.cancel()  # stays in _tasks until done: aclose() waits for it
        elif handle[0] is _IMMEDIATE:
            handle[0] = None
        elif handle[0] is not None:
            sock, handle[0] = handle[0], None
            self._connects.pop(sock.fileno(), None)
            sock.close()

    async def aclose(self) -> None:
        """Cancel everything in flight and wait for it (exec probes kill and reap their children)."""
        for record in list(self._connects.values()):
            self.cancel(record)
        for task in list(self._tasks):
            self.cancel(task)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for q in self._deadlines.values():
            if q.sweep is not None:
                q.sweep[0] = None
        self._deadlines.clear()
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    # --- other check types: a task each ---------------------------------------------------------

    def _task_done(self, task: asyncio.Task[tuple[CheckResult, float]]) -> None:
        how = self._tasks.pop(task, None)
        if how is None or task.cancelled():
            return
        try:
            result, ended = task.result()
        except BaseException as e:  # run() never raises but for cancellation: be safe anyway
            result = CheckResult(False, 0.0, describe_error(e), time.time(), local=is_local(e))
            ended = self._loop.time()
        how[0](how[1], result, ended)

    # --- tcp ------------------------------------------------------------------------------------

    def _connect(
        self, address: str, port: int, source: str | None, timeout: float, done: Done, arg: Any
    ) -> list[Any]:
        start = self._loop.time()
        record: list[Any] = [None, done, arg, start, self._serial]
        try:
            sock = _CSocket(socket.AF_INET6 if ":" in address else socket.AF_INET, _STREAM_NB)
        except OSError as e:
            return self._at_once(record, False, describe_error(e), is_local(e))
        try:
            if source is not None:
                sock.bind((source, 0))
            err = sock.connect_ex((address, port))
        except OSError as e:
            sock.close()
            return self._at_once(record, False, describe_error(e), is_local(e))
        if err != errno.EINPROGRESS:  # refused or unreachable at once, or (rarely) connected
            if not err:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
            return self._at_once(
                record, not err, errno_detail(err) if err else "connected", err in LOCAL_ERRNOS
            )
        fd = sock.fileno()
        try:
            epoll = self._epoll or self._open_epoll()
            epoll.register(fd, select.EPOLLOUT)
        except OSError as e:
            sock.close()
            return self._at_once(record, False, describe_error(e), is_local(e))
        record[0] = sock
        self._connects[fd] = record
        q = self._deadlines.get(timeout)
        if q is None:
            q = self._deadlines[timeout] = _Deadlines(timeout)
        q.entries.append((start + timeout, record))
        if q.sweep is None:
            q.sweep = self._timers.call_at(start + timeout, self._sweep, q)
        return record

    def _open_epoll(self) -> select.epoll:
        epoll = self._epoll = select.epoll()
        self._loop.add_reader(epoll.fileno(), self._drain)
        return epoll

    def _at_once(self, record: list[Any], ok: bool, detail: str, local: bool) -> list[Any]:
        """A connect decided inside connect_ex: report it from the loop, not from start()."""
        record[0] = _IMMEDIATE
        self._loop.call_soon(self._report, record, ok, detail, local)
        return record

    def _report(self, record: list[Any], ok: bool, detail: str, local: bool) -> None:
        if record[0] is _IMMEDIATE:  # else cancelled meanwhile
            record[0] = None
            now = self._loop.time()
            record[1](record[2], CheckResult(ok, now - record[3], detail, time.time(), local=local), now)

    def _drain(self) -> int:
        """Every connect the epoll reports as finished (connected, refused, reset, unreachable),
        up to `_POLL_MAX` of them; returns how many events there were."""
        epoll = self._epoll
        if epoll is None:
            return 0
        events = epoll.poll(0, _POLL_MAX)
        if not events:
            return 0
        serial, self._serial = self._serial, self._serial + 1
        connects = self._connects
        now = self._loop.time()
        wall = time.time()
        for fd, mask in events:
            record = connects.get(fd)
            if record is None or record[4] > serial:  # a new socket on a reused fd: next round
                continue
            del connects[fd]
            sock = record[0]
            record[0] = None
            latency = now - record[3]
            try:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if mask & _EPOLL_ERR else 0
                if not err:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            except OSError as e:
                err = e.errno or errno.EIO
            sock.close()
            if err:
                result = CheckResult(
                    False, latency, errno_detail(err), wall - latency, local=err in LOCAL_ERRNOS
                )
            else:
                result = CheckResult(True, latency, "connected", wall - latency)
            try:
                record[1](record[2], result, now)
            except Exception:
                log.exception("probe callback failed")
        return len(events)

    def _sweep(self, q: _Deadlines) -> None:
        """Time out the connects of ``q`` past their deadline, after taking in every completion."""
        q.sweep = None
        try:
            self._expire(q)
        finally:  # armed again whatever happened, or the rest of the queue would never time out
            if q.entries and q.sweep is None:
                q.sweep = self._timers.call_at(q.entries[0][0], self._sweep, q)

    def _expire(self, q: _Deadlines) -> None:
        while self._drain() == _POLL_MAX:
            pass
        now = self._loop.time()
        entries = q.entries
        wall = time.time()
        while entries:
            deadline, record = entries[0]
            sock = record[0]
            if sock is not None:
                if deadline > now:
                    break
                del self._connects[sock.fileno()]
                record[0] = None
                sock.close()
                latency = now - record[3]
                result = CheckResult(False, latency, q.detail, wall - latency, True)
                try:
                    record[1](record[2], result, now)
                except Exception:
                    log.exception("probe callback failed")
            entries.popleft()


_IMMEDIATE = object()
