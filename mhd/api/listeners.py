"""The API's sockets, and how many connections it serves at once.

The listeners are ours, not aiohttp's sites: they accept only while `Admission` has room, and
leave the rest of a burst in the kernel's listen queue. The API shares the daemon's only loop with
the prober, and a probe starts as late as the loop iteration running at its due time is long, so
the API must never put much work into one iteration (measurements and the alternatives weighed:
docs/design.md, "API admission").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from mhd.api.responses import error_response

log = logging.getLogger("mhd.api")

# bytes of a request line: GET /v1/services/{name}/predict takes up to 10,000 clients in its query
# (up to ~75 bytes each: percent-encoded IPv6 with a port), far past aiohttp's default of 8,190.
MAX_REQUEST_LINE = 1024 * 1024
# The kernel queues the connections not admitted yet (capped by net.core.somaxconn, 4096 since
# Linux 5.4): a unix-socket client whose connect() finds the queue full fails at once (EAGAIN), a
# TCP one retries its SYN.
BACKLOG = 4096
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its (first) request line and headers
KEEPALIVE = 5.0  # seconds an idle keep-alive connection keeps its slot
ACCEPT_RETRY = 1.0  # seconds: accept() failed for lack of descriptors or memory


class Admission:
    """How many API connections the daemon serves at once; the others wait in the kernel's
    listen queue, costing the loop nothing.

    The loop runs every ready callback before it looks at its timers again, so a probe is as late
    as the longest loop iteration; asyncio alone would accept a whole backlog in one callback and
    then set up, parse, answer and tear down each phase of hundreds of connections in one
    iteration. Admitting `limit` connections at a time bounds each phase to `limit` connections
    per iteration, whatever the burst.

    Each listener may hold at most its `cap` of the slots, so a flood over TCP (any local user)
    leaves the unix socket (mhctl) slots of its own.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.listeners: list[Listener] = []

    def room(self, listener: Listener) -> int:
        return min(self.limit - self.active, listener.cap - listener.active)

    def release(self, listener: Listener) -> None:
        self.active -= 1
        listener.active -= 1
        for each in self.listeners:
            if not each.reading and self.room(each) > 0:
                each.start()


class Connection(web.RequestHandler):
    """aiohttp's protocol for one API connection, with two changes: what aiohttp answers by itself
    (a request it cannot parse: bad request line or headers, a line past `MAX_REQUEST_LINE`) is a
    JSON error like every other, logged in one line instead of with a traceback; and its admission
    slot is returned when it closes."""

    __slots__ = ("_deadline", "_release")

    def __init__(self, manager: web.Server, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._release: Callable[[], None] | None = release
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection that never completes a request would hold its slot for ever (slowloris).
        self._deadline = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._too_slow, transport)

    def request_started(self) -> None:
        """A whole request line and headers arrived (errors_middleware tells us)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, transport: asyncio.BaseTransport) -> None:
        log.debug("API: closing a connection that sent no whole request in %gs", REQUEST_TIMEOUT)
        self._deadline = None
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.request_started()
            release, self._release = self._release, None
            if release is not None:
                release()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # not a client's mistake: a bug of ours, worth its traceback
            log.error("API %s %s failed", request.method, request.path, exc_info=exc)
            text = "internal error, see the daemon's log"
        else:
            detail = (message or str(exc or "") or "malformed request").strip().splitlines()[0]
            text = f"bad HTTP request: {detail}"
            log.debug("API: %s from %s", text, request.remote or "the unix socket")
        if request.writer is not None and request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")  # as aiohttp does
        response = error_response(status, text)
        response.force_close()
        return response


class Listener:
    """Accepts connections from one listening socket while `Admission` has room for them."""

    def __init__(self, sock: socket.socket, runner: web.AppRunner, admission: Admission, cap: int) -> None:
        assert runner.server is not None
        self.sock = sock
        self.server = runner.server
        self.admission = admission
        self.cap = cap
        self.active = 0
        self.reading = False
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[Any]] = set()
        admission.listeners.append(self)

    def start(self) -> None:
        if not self.reading and not self.closed:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self.reading = True

    def pause(self) -> None:
        if self.reading:
            self._loop.remove_reader(self.sock.fileno())
            self.reading = False

    def close(self) -> None:
        self.pause()
        self.closed = True
        if self in self.admission.listeners:
            self.admission.listeners.remove(self)
        self.sock.close()

    def _accept(self) -> None:
        admission = self.admission
        for _ in range(max(0, admission.room(self))):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: try again in a while, as asyncio
                log.error("API: cannot accept a connection: %s; retrying in %gs", exc, ACCEPT_RETRY)
                self.pause()
                self._loop.call_later(ACCEPT_RETRY, self.start)
                return
            conn.setblocking(False)
            admission.active += 1
            self.active += 1
            task = self._loop.create_task(self._connect(conn, self._releaser()))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
        self.pause()  # full (until a connection closes), or the batch is done: look again next iteration
        if admission.room(self) > 0:
            self._loop.call_soon(self.start)

    def _releaser(self) -> Callable[[], None]:
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.admission.release(self)

        return release

    async def _connect(self, conn: socket.socket, release: Callable[[], None]) -> None:
        def protocol() -> Connection:
            return Connection(
                self.server,
                release,
                loop=self._loop,
                access_log=None,  # no access log: Prometheus scrapes would flood it
                max_line_size=MAX_REQUEST_LINE,
                keepalive_timeout=KEEPALIVE,
            )

        try:
            await self._loop.connect_accepted_socket(protocol, conn)
        except Exception as exc:  # the peer went away before we got to it
            log.debug("API: connection dropped before it was served: %s", exc)
            conn.close()
            release()


def tcp_listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to) and `port`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def unix_listener(path: str, mode: int, group: str | None) -> socket.socket:
    """A listening unix socket at `path`, with its mode and group set before anyone can connect.

    The socket is bound under a temporary name, chmod/chown'ed, then renamed over `path`, so there is
    no window with default permissions and a stale file from a crash is replaced atomically. A path
    where another process still accepts connections is left alone.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    check_stale(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, mode)
        if group:
            shutil.chown(tmp, group=group)
        os.replace(tmp, target)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sock.setblocking(False)
    return sock


def check_stale(path: Path) -> None:
    """Raise when `path` is not a socket, or is one a live process serves; otherwise it may go."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket: remove it or set api.socket elsewhere")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: a stale socket from a previous run
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process (another mhd?): stop it or set api.socket")
