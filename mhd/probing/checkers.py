"""One async probe per check type: `probe(spec, address, port) -> CheckResult`, never raising.

Why no aiohttp for HTTP: a health check opens one fresh connection, sends one request and reads
one status line; aiohttp's session/connector/response machinery costs more than the whole probe.
Measured on one core against a loopback server (GET of a tiny 200 answer, fresh connection each
time, 50 in flight): aiohttp 3.14 (C-accelerated) ``ClientSession`` with
``TCPConnector(force_close=True)``: 0.22 ms CPU per check (~4,000 checks/s); the hand-written
HTTP/1.1 client below (asyncio streams, ``Connection: close``): 0.15 ms (~5,400 checks/s).
(Debian 12's aiohttp 3.8.4 was not measured.) The client is small because a check only
needs: the status code, optionally the body (Content-Length, chunked or read-to-close, capped
at `MAX_BODY`) for a regex, TLS with optional verification, SNI and a client certificate.
Nothing is shared between probes except cached `ssl.SSLContext`s.

Connections are closed with an RST (SO_LINGER 0) once the answer is in, as HAProxy does for its
checks: the checker then keeps no TIME_WAIT sockets, which at 10,000 checks/s would otherwise
pile up by the hundred thousand.

Every error becomes a failed `CheckResult` whose ``detail`` says what happened; only
cancellation propagates (so the prober can stop). Every probe is bounded by ``spec.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import itertools
import logging
import math
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import time
import weakref
from _socket import socket as _CSocket  # socket.socket's Python __init__ and close(): ~1.5 us a check
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from mhd.config.checkspec import CheckSpec

MAX_BODY = 64 * 1024  # bytes of an HTTP body searched by body_regex
MAX_HEADER = 16 * 1024  # bytes of HTTP status line + headers accepted
OUTPUT_TAIL = 200  # bytes of exec output kept in the detail
_LINGER_RST = struct.pack("ii", 1, 0)

log = logging.getLogger("mhd.health")


class CheckResult(NamedTuple):
    """Outcome of one probe. ``latency`` in seconds, ``at`` wall-clock start time; ``timed_out``
    when the probe's own deadline ended it (the prober then asks whether its loop was stalled).
    A NamedTuple, as `Health`: one is built per probe, and a frozen dataclass costs 3x more."""

    ok: bool
    latency: float
    detail: str
    at: float
    timed_out: bool = False


class CheckFailed(Exception):
    """A probe found the server unhealthy; the message is the result's detail."""


Checker = Callable[[CheckSpec, str, int, str], Awaitable[str]]
Done = Callable[[Any, CheckResult, float], None]  # (arg, result, loop time at the end)


async def probe(spec: CheckSpec, address: str, port: int, *, service: str = "") -> CheckResult:
    """Run the check of ``spec`` against ``address`` (probe port resolved here)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[CheckResult] = loop.create_future()
    probes = Probes(loop)
    try:
        probes.start(spec, address, spec.probe_port(port), service, _resolve, answer)
        return await answer
    finally:
        await probes.aclose()


def _resolve(answer: asyncio.Future[CheckResult], result: CheckResult, ended: float) -> None:
    if not answer.done():
        answer.set_result(result)


async def _timed(spec: CheckSpec, address: str, port: int, service: str) -> tuple[CheckResult, float]:
    loop = asyncio.get_running_loop()
    at, start = time.time(), loop.time()
    ok, detail, timed_out = await _run(spec, address, port, service)
    end = loop.time()
    return CheckResult(ok, end - start, detail, at, timed_out), end


async def _run(spec: CheckSpec, address: str, port: int, service: str) -> tuple[bool, str, bool]:
    # Same semantics as asyncio.timeout() (an outside cancel still propagates), but on the shared
    # `Timers`: at 10,000 probes/s asyncio.timeout() costs ~10% of a TCP check's CPU.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadline = timers(loop).call_at(loop.time() + spec.timeout, _expire, task)
    try:
        return True, await _CHECKERS[spec.type](spec, address, port, service), False
    except asyncio.CancelledError:
        if deadline[0] is _EXPIRED and task.uncancel() <= cancelling:
            return False, _timeout_detail(spec.timeout), True
        raise
    except CheckFailed as e:
        return False, str(e), False
    except Exception as e:
        return False, describe_error(e), False
    finally:
        deadline[0] = None


def _timeout_detail(timeout: float) -> str:
    return f"timeout after {timeout:g}s"


# --- shared timers ----------------------------------------------------------------------------

TICK = 0.001  # seconds: timers due within one tick of each other fire together
HEARTBEAT = 0.025  # seconds: while anything is scheduled, the timers look at the clock this often
STALL_MIN = 0.005  # seconds: a timer this late (or later) is recorded as a stall of the loop
FIRE_BUDGET = 0.005  # seconds of callbacks in one go (a burst after a stall) before I/O gets a turn
STALLS_KEPT = 4096  # stall records kept (~100 a second at most under saturation, see stalled())
Token = list[Any]  # [callback or None when cancelled / _EXPIRED when fired, argument]


def _expire(task: asyncio.Task[Any]) -> None:
    task.cancel()


_EXPIRED = object()


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
        while heap and heap[0][0] <= now:
            token = heapq.heappop(heap)[2]
            callback = token[0]
            if callback is not None:
                token[0] = _EXPIRED
                try:
                    callback(token[1])
                except Exception:
                    log.exception("timer callback failed")
                fired += 1
                if not fired % 64 and clock() - started > FIRE_BUDGET:
                    self._arm(clock())  # the rest after the loop has looked at its sockets
                    return
        if heap:
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


# --- sockets ----------------------------------------------------------------------------------


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _socket(address: str, kind: socket.SocketKind, source: str | None) -> socket.socket:
    sock = socket.socket(_family(address), kind)
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(address: str, port: int, source: str | None) -> socket.socket:
    """A connected TCP socket that will close with an RST (see module docstring)."""
    sock = _socket(address, socket.SOCK_STREAM, source)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        await _sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _sock_connect(sock: socket.socket, peer: tuple[str, int]) -> None:
    """loop.sock_connect() without its name resolution and bookkeeping: addresses here are
    always numeric, and HTTP checks run it thousands of times a second (plain TCP checks take
    the callback path of `Probes` instead)."""
    err = sock.connect_ex(peer)
    if err == errno.EINPROGRESS:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# --- probes in flight, and the tcp fast path --------------------------------------------------

_STREAM_NB = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_POLL_MAX = 1024  # completions taken per drain; the loop calls again while the epoll is readable
_EPOLL_ERR = select.EPOLLERR | select.EPOLLHUP


class _Deadlines:
    """The TCP connects of one timeout value, oldest first: started in loop-time order, their
    deadlines are in order too, so a FIFO does what a heap would, at O(1) a probe."""

    __slots__ = ("detail", "entries", "sweep", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.detail = _timeout_detail(timeout)
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

    Other check types run `_run` in a task of their own, with the same callback at the end.
    Results are never delivered synchronously from `start`, and never after `cancel`.
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
        task = self._loop.create_task(_timed(spec, address, port, service))
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
        except BaseException as e:  # _run never raises but for cancellation: be safe anyway
            result, ended = CheckResult(False, 0.0, describe_error(e), time.time()), self._loop.time()
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
            return self._at_once(record, False, describe_error(e))
        try:
            if source is not None:
                sock.bind((source, 0))
            err = sock.connect_ex((address, port))
        except OSError as e:
            sock.close()
            return self._at_once(record, False, describe_error(e))
        if err != errno.EINPROGRESS:  # refused or unreachable at once, or (rarely) connected
            if not err:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.close()
            return self._at_once(record, not err, errno_detail(err) if err else "connected")
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            self._loop.add_reader(epoll.fileno(), self._drain)
        fd = sock.fileno()
        try:
            epoll.register(fd, select.EPOLLOUT)
        except OSError as e:
            sock.close()
            return self._at_once(record, False, describe_error(e))
        record[0] = sock
        self._connects[fd] = record
        q = self._deadlines.get(timeout)
        if q is None:
            q = self._deadlines[timeout] = _Deadlines(timeout)
        q.entries.append((start + timeout, record))
        if q.sweep is None:
            q.sweep = self._timers.call_at(start + timeout, self._sweep, q)
        return record

    def _at_once(self, record: list[Any], ok: bool, detail: str) -> list[Any]:
        """A connect decided inside connect_ex: report it from the loop, not from start()."""
        record[0] = _IMMEDIATE
        self._loop.call_soon(self._report, record, ok, detail)
        return record

    def _report(self, record: list[Any], ok: bool, detail: str) -> None:
        if record[0] is _IMMEDIATE:  # else cancelled meanwhile
            record[0] = None
            now = self._loop.time()
            record[1](record[2], CheckResult(ok, now - record[3], detail, time.time()), now)

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
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError as e:
                err = e.errno or errno.EIO
            sock.close()
            if err:
                result = CheckResult(False, latency, errno_detail(err), wall - latency)
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
        if entries and q.sweep is None:
            q.sweep = self._timers.call_at(entries[0][0], self._sweep, q)


_IMMEDIATE = object()


# --- none -------------------------------------------------------------------------------------


async def _check_none(spec: CheckSpec, address: str, port: int, service: str) -> str:
    return "no check"


# --- http / https -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def tls_context(verify: bool, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Building a context (CA store load) costs ~ms: share one per distinct TLS setting."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _request(spec: CheckSpec, address: str, port: int) -> bytes:
    host = spec.host or (f"[{address}]" if ":" in address else address)
    default_port = 443 if spec.type == "https" else 80
    if spec.host is None and port != default_port:
        host = f"{host}:{port}"
    return (
        f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: mhd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


async def _check_http(spec: CheckSpec, address: str, port: int, service: str) -> str:
    sock = await _connect(address, port, spec.source_address)
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    if spec.type == "https":
        tls = tls_context(spec.tls_verify, spec.client_cert, spec.client_key)
        # With verification on, the certificate is checked against this name (or IP).
        server_hostname = spec.sni or spec.host or address
    try:
        reader, writer = await asyncio.open_connection(sock=sock, ssl=tls, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(_request(spec, address, port))
        return await _read_response(reader, spec)
    finally:
        writer.transport.abort()  # SO_LINGER 0 was set by _connect: an RST, no TIME_WAIT


async def _read_response(reader: asyncio.StreamReader, spec: CheckSpec) -> str:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise CheckFailed("HTTP header too large") from e
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise CheckFailed("connection closed without an HTTP answer") from e
        raise CheckFailed("connection closed inside the HTTP header") from e
    status, headers = _parse_head(head)
    if not any(lo <= status <= hi for lo, hi in spec.expect_status):
        raise CheckFailed(f"HTTP {status}")
    if spec.body_regex is None or spec.method == "HEAD":
        return f"HTTP {status}"
    body = await _read_body(reader, headers)
    if re.search(spec.body_regex, body.decode("utf-8", "replace")) is None:
        raise CheckFailed(f"HTTP {status}, body does not match {spec.body_regex!r}")
    return f"HTTP {status}, body matches"


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise CheckFailed(f"not an HTTP answer: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        return await reader.readexactly(min(int(length), MAX_BODY))
    body = b""
    while len(body) < MAX_BODY:  # no length: the body ends when the server closes
        chunk = await reader.read(MAX_BODY - len(body))
        if not chunk:
            break
        body += chunk
    return body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while len(body) < MAX_BODY:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    return bytes(body[:MAX_BODY])


# --- udp --------------------------------------------------------------------------------------


async def _check_udp(spec: CheckSpec, address: str, port: int, service: str) -> str:
    sock = _socket(address, socket.SOCK_DGRAM, spec.source_address)
    try:
        sock.connect((address, port))  # connected: ICMP unreachable surfaces as ECONNREFUSED
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, spec.payload)
        reply = await loop.sock_recv(sock, 65535)
    finally:
        sock.close()
    if spec.expect_regex is not None and re.search(spec.expect_regex, reply) is None:
        raise CheckFailed(f"reply does not match {spec.expect_regex!r}: {reply[:60]!r}")
    return f"reply of {len(reply)} bytes"


# --- dns --------------------------------------------------------------------------------------

QTYPES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
    "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "DNSKEY": 48, "CAA": 257, "ANY": 255,
}  # fmt: skip
RCODES = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10,
}  # fmt: skip
RCODE_NAMES = {v: k for k, v in RCODES.items()}
_TC = 0x0200
_QR = 0x8000


def qtype_number(name: str) -> int:
    """``A``, ``AAAA``, ... or the generic ``TYPE123`` form."""
    upper = name.upper()
    if upper in QTYPES:
        return QTYPES[upper]
    if upper.startswith("TYPE") and upper[4:].isdigit():
        return int(upper[4:])
    raise ValueError(f"unknown DNS query type {name!r}")


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard query with RD set (what ``dig`` sends), class IN."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    qname = b"".join(bytes([len(enc)]) + enc for enc in (lb.encode("idna") for lb in labels))
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return header + qname + b"\x00" + struct.pack("!HH", qtype, 1)


def parse_header(data: bytes) -> tuple[int, int]:
    """(id, flags) of a DNS message; the rcode is ``flags & 0xF``."""
    if len(data) < 12:
        raise CheckFailed(f"DNS answer too short ({len(data)} bytes)")
    qid, flags = struct.unpack_from("!HH", data)
    return qid, flags


async def _check_dns(spec: CheckSpec, address: str, port: int, service: str) -> str:
    qid = random.getrandbits(16)
    query = build_query(qid, spec.query_name, qtype_number(spec.query_type))
    flags = await _dns_udp(spec, address, port, qid, query)
    transport = "udp"
    if flags & _TC:
        flags = await _dns_tcp(spec, address, port, qid, query)
        transport = "tcp"
    rcode = flags & 0xF
    got = RCODE_NAMES.get(rcode, f"RCODE{rcode}")
    if got != spec.expect_rcode.upper():
        raise CheckFailed(f"DNS {got} (expected {spec.expect_rcode.upper()})")
    return f"DNS {got} over {transport}"


async def _dns_udp(spec: CheckSpec, address: str, port: int, qid: int, query: bytes) -> int:
    sock = _socket(address, socket.SOCK_DGRAM, spec.source_address)
    try:
        sock.connect((address, port))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, query)
        while True:  # a stray or late answer to an older query: keep waiting for ours
            got, flags = parse_header(await loop.sock_recv(sock, 65535))
            if got == qid and flags & _QR:
                return flags
    finally:
        sock.close()


async def _dns_tcp(spec: CheckSpec, address: str, port: int, qid: int, query: bytes) -> int:
    loop = asyncio.get_running_loop()
    sock = await _connect(address, port, spec.source_address)
    try:
        await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", await _recv_exactly(sock, 2))
        got, flags = parse_header(await _recv_exactly(sock, length))
    finally:
        sock.close()
    if got != qid:
        raise CheckFailed("DNS answer over TCP has the wrong id")
    return flags


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise CheckFailed("connection closed before a complete DNS answer")
        data += chunk
    return data


# --- exec -------------------------------------------------------------------------------------


async def _check_exec(spec: CheckSpec, address: str, port: int, service: str) -> str:
    if not spec.command:
        raise CheckFailed("exec check without a command")
    env = dict(os.environ)
    env.update(MHD_SERVICE=service, MHD_SERVER_ADDRESS=address, MHD_SERVER_PORT=str(port))
    proc = await _spawn(spec.command, env)
    try:
        tail = await _tail(proc.stdout)
        code = await proc.wait()
    finally:
        await _kill_group(proc)
    text = tail.decode("utf-8", "replace").strip()
    if code != 0:
        raise CheckFailed(f"exit {code}: {text}" if text else f"exit {code}")
    return f"exit 0: {text}" if text else "exit 0"


async def _spawn(argv: tuple[str, ...], env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own process group (a timeout kills the whole tree).

    The process exists before create_subprocess_exec() returns; if cancelled in between,
    asyncio kills only the leader, so finish the spawn shielded and kill its group ourselves.
    """
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _kill_group(await spawn)
        raise


async def _tail(stream: asyncio.StreamReader | None) -> bytes:
    """Last OUTPUT_TAIL bytes of the output, in bounded memory."""
    tail = b""
    while stream is not None:
        chunk = await stream.read(65536)
        if not chunk:
            break
        tail = (tail + chunk)[-OUTPUT_TAIL:]
    return tail


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group (also after normal exit: leftovers) and reap the leader.

    Runs on the cancellation/timeout path too; the wait is shielded so that a second
    cancellation cannot leave a zombie behind.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass
    if proc.returncode is None:
        await asyncio.shield(proc.wait())
    # Close the output pipe now rather than when EOF happens to be read: no fd outlives the
    # probe. Process has no public close(); its transport's close() is the documented one.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


_CHECKERS: dict[str, Checker] = {
    "none": _check_none,
    "http": _check_http,
    "https": _check_http,
    "udp": _check_udp,
    "dns": _check_dns,
    "exec": _check_exec,
}
