"""The REST API and the Prometheus endpoint, served by aiohttp inside the daemon's loop.

Two listeners, one per trust level, each its own `web.Application` so a handler never has to guess
where a request came from:

- the unix socket (`api.socket`, default /run/mhd/mhd.sock): access is the socket file's mode and
  group, so every request is allowed, the mutating ones (POST) included; this is what mhctl uses;
- TCP (`api.listen`, default 127.0.0.1:9180): reads for everyone (status, /metrics for Prometheus);
  a POST needs `Authorization: Bearer <token>` matching `api.token-file`, and is refused outright
  when no token file is configured, because any local user (or anything a proxy forwards) can reach
  a TCP port.

Every error is a JSON `{"error": "..."}` with a 4xx status saying what to fix; an unexpected exception
becomes a logged 500 with the same shape. Bodies are capped at `MAX_BODY`: no endpoint needs one.
Requests aiohttp cannot parse (bad request line or headers, oversize lines) get the same JSON 400
from `Connection.handle_error`, logged in one debug line rather than aiohttp's traceback.

Sharing the loop with the probes. A probe starts as late as the loop iteration running at its due
time is long, so the API must never put much work into one iteration. The listeners are ours
(`Listener`, not aiohttp's sites): they accept only while `Admission` has room, `MAX_CONNECTIONS`
at a time, and leave the rest of a burst in the kernel's listen queue. Measured (1,000 concurrent
GET /v1/status while 16 checks a second run; bench/bench_api.py on the host, the real-kernel test
in the TCG VM; figures in bench/README.md): unbounded, one iteration took up to 19 ms on a host
core and probes started 222-554 ms late at p99 in the VM; bounded to 16 connections, 2-13 ms on
the host and p99 21-45 ms in the VM (every probe within 100 ms), with the same throughput on the
host but slower answers in the VM (the burst answered in 10-20 s instead of 7 s). GC was
measured too and is not the cause (young collections under 2 ms on the host; `gc.freeze()` after
start keeps the old ones short), and the status body is already built once per loop iteration
for all waiting requests (`StatusBodies`). Not chosen: a thread for the API (it would take the
GIL from the prober at every system call, and a burst would still delay probes); a separate API
process serving snapshots the daemon publishes would isolate the prober best but costs a second
process, a publication protocol and forwarding of every POST, and the in-loop bound already meets
the target with margin, so it is the fallback if the API ever grows heavier per request.

The OpenAPI document (`openapi()`) is the contract: served at /v1/openapi.json, committed as
docs/openapi.json (`python -m mhd.api > docs/openapi.json`), and tests check every route against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import os
import shutil
import socket
import stat
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST

from mhd import __version__
from mhd.api.metrics import Metrics
from mhd.api.status import find_service, status
from mhd.config.validate import parse_listen

if TYPE_CHECKING:
    from mhd.daemon import Daemon
    from mhd.maglev.predict import Model
    from mhd.model import Service

log = logging.getLogger("mhd.api")

MAX_BODY = 64 * 1024  # bytes: no endpoint takes a body, this only bounds what a client can make us read
# bytes of a request line: GET /v1/services/{name}/predict takes up to 10,000 clients in its query
# (up to ~75 bytes each: percent-encoded IPv6 with a port), far past aiohttp's default of 8,190.
MAX_REQUEST_LINE = 1024 * 1024
RELOAD_TIMEOUT = 60.0  # seconds a POST /v1/reload waits for the main loop to finish the reload
MIN_STALE = 30.0  # seconds: /healthz fails when no pass completed for max(3 intervals, this)
# Connections served at once (see `Admission`), and the share of them TCP clients may hold.
MAX_CONNECTIONS, TCP_CONNECTIONS = 16, 12
# The kernel queues the others (capped by net.core.somaxconn, 4096 since Linux 5.4): a unix-socket
# client whose connect() finds the queue full fails at once (EAGAIN), a TCP one retries its SYN.
BACKLOG = 4096
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its (first) request line and headers
KEEPALIVE = 5.0  # seconds an idle keep-alive connection keeps its slot
ACCEPT_RETRY = 1.0  # seconds: accept() failed for lack of descriptors or memory
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Closer = Callable[[], Awaitable[None]]


class ApiError(Exception):
    """An error for the client: becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(data) + "\n"  # no indent: the C encoder, 5x faster on a 16,000-server status
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


def describe_peer(request: web.Request) -> str:
    """Who sent a request, for the log: the uid/pid of a unix-socket peer, else the address."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"unix socket (uid {uid}, pid {pid})"
        except OSError:
            return "unix socket"
    return str(request.remote)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bound the body, and turn every failure into a JSON error (never an HTML page or a traceback)."""
    if isinstance(request.protocol, Connection):
        request.protocol.request_started()
    try:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, f"request body too large: {request.content_length} bytes, limit {MAX_BODY}")
        if request.can_read_body:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):  # a trickled body would hold a slot
                    await request.read()  # enforces client_max_size for chunked bodies too
            except TimeoutError:
                raise ApiError(408, f"request body not received within {REQUEST_TIMEOUT:g}s") from None
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _http_message(exc), _kept_headers(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        return error_response(500, "internal error, see the daemon's log")


def _http_message(exc: web.HTTPException) -> str:
    """aiohttp's own text when it says something specific (413 sizes), else the reason phrase."""
    text = exc.text or ""
    if exc.status == 404:
        return "no such endpoint; see /v1/openapi.json"
    return text if text and not text.startswith(f"{exc.status}:") else exc.reason


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}


class StatusBodies:
    """`GET /v1/status` bodies, built at most once per loop iteration however many requests wait.

    A build walks every server (for 400 servers, 2.5 ms plus 2.2 ms of json.dumps on a host core)
    on the daemon's only loop, between probes: 1,000 concurrent requests built it 1,000 times, 16 s
    of loop time in which probe slots were skipped. Requests that arrive together now share one
    build, made after they all arrived, so no answer is older than its request.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.builds = 0
        self._next: asyncio.Future[bytes] | None = None

    def get(self) -> asyncio.Future[bytes]:
        """The body of the next build (scheduled now unless one is already due)."""
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            loop.call_soon(self._build, self._next)
        return self._next

    def _build(self, future: asyncio.Future[bytes]) -> None:
        self._next = None
        self.builds += 1
        try:
            body = (json.dumps(status(self.daemon)) + "\n").encode()
        except Exception as exc:  # every waiting request answers 500 through errors_middleware
            future.set_exception(exc)
        else:
            future.set_result(body)


class Api:
    """The handlers of one listener; `trusted` is True for the unix socket."""

    def __init__(
        self, daemon: Daemon, metrics: Metrics, *, trusted: bool, bodies: StatusBodies | None = None
    ) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.trusted = trusted
        self.bodies = bodies or StatusBodies(daemon)  # shared by the listeners of one daemon

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
        app.router.add_get("/v1/status", self.get_status)
        app.router.add_get("/v1/services/{name}", self.get_service)
        app.router.add_get("/v1/services/{name}/table", self.get_table)
        app.router.add_get("/v1/services/{name}/predict", self.get_predict)
        app.router.add_post("/v1/reload", self.post_reload)
        app.router.add_post("/v1/services/{name}/servers/{server}/disable", self.post_disable)
        app.router.add_post("/v1/services/{name}/servers/{server}/enable", self.post_enable)
        app.router.add_get("/v1/openapi.json", self.get_openapi)
        app.router.add_get("/healthz", self.get_healthz)
        app.router.add_get("/metrics", self.get_metrics)
        return app

    # --- reads -----------------------------------------------------------------------------------
    async def get_status(self, request: web.Request) -> web.StreamResponse:
        body = await asyncio.shield(self.bodies.get())  # a client that goes away cancels only itself
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def get_service(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        doc = find_service(self.daemon, name)
        if doc is None:
            raise ApiError(404, f"no service named '{name}' in {self.daemon.config_path}")
        return json_response(doc)

    def _live(self, name: str, predict: Any) -> tuple[Service, Model]:
        """The service as the kernel holds it now (list order as dumped) and the kernel's model
        (`predict` is the mhd.maglev.predict module, from `predict_module()`)."""
        config = self.daemon.config
        svc = config.by_name(name) if config else None
        if svc is None:
            raise ApiError(404, f"no service named '{name}' in {self.daemon.config_path}")
        live = self.daemon.observed.get(svc.key)
        if live is None:
            raise ApiError(404, f"service '{name}' ({svc.key}) is not in the kernel")
        if live.scheduler != "mh":
            raise ApiError(
                400, f"service '{name}' uses scheduler {live.scheduler}, not mh: it has no Maglev table"
            )
        info = self.daemon.kernel
        module = config.kernel.module if config else "auto"
        variant = (
            module if module in ("intree", "backport") else ((info.mh_variant if info else None) or "intree")
        )
        return live, predict.Model(info.mh_tab_index if info else 12, variant)

    async def get_table(self, request: web.Request) -> web.StreamResponse:
        """Each server's share of the kernel's Maglev table, computed from the live list order."""
        predict = await predict_module()
        live, model = self._live(request.match_info["name"], predict)
        t = await asyncio.to_thread(predict.table, live, model)
        servers = [
            {"server": str(d.key), "weight": d.weight, "share": share}
            for d, share in zip(live.dests, t.slot_shares(), strict=True)
        ]
        return json_response(
            {
                "service": request.match_info["name"],
                "table_size": t.size,
                "variant": model.variant,
                "servers": servers,
                "max_mean_ratio": t.max_mean_ratio(),
            }
        )

    async def get_predict(self, request: web.Request) -> web.StreamResponse:
        """Which server each `client` (addr or addr:port, repeatable, up to 10,000) goes to now."""
        predict = await predict_module()
        live, model = self._live(request.match_info["name"], predict)
        texts = request.query.getall("client", [])
        if not texts or len(texts) > 10_000:
            raise ApiError(400, "give 1 to 10,000 clients as ?client=ADDR[:PORT]&client=...")
        try:
            clients = [predict.parse_client(c) for c in texts]
            picks = await asyncio.to_thread(predict.predict, live, clients, model)
        except ValueError as exc:
            raise ApiError(400, f"bad client: {exc}") from None
        return json_response(
            [{"client": c, "server": str(p) if p else None} for c, p in zip(texts, picks, strict=True)]
        )

    async def get_openapi(self, request: web.Request) -> web.StreamResponse:
        return json_response(openapi())

    async def get_healthz(self, request: web.Request) -> web.StreamResponse:
        """200 while reconcile passes complete; 503 when the loop is stuck or the kernel refuses dumps."""
        interval = self.daemon.config.reconcile_interval if self.daemon.config else 10.0
        limit = max(3 * interval, MIN_STALE)
        age = time.monotonic() - self.metrics.last_reconcile
        ok = age <= limit
        body: dict[str, Any] = {"ok": ok, "last_reconcile_age": round(age, 3), "limit": limit}
        if not ok:
            body["error"] = f"no reconcile pass completed for {age:.0f}s (limit {limit:g}s): see the log"
        return json_response(body, 200 if ok else 503)

    async def get_metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- writes ----------------------------------------------------------------------------------
    def authorize(self, request: web.Request) -> None:
        """Let a POST through: always on the unix socket, with the configured bearer token over TCP."""
        if self.trusted:
            return
        api = self.daemon.config.api if self.daemon.config else None
        socket_hint = f"or use the unix socket {api.socket}" if api and api.socket else ""
        if api is None or not api.token_file:
            raise ApiError(
                403,
                "changes over TCP need a bearer token: set api.token-file in "
                f"{self.daemon.config_path} and send 'Authorization: Bearer <token>' {socket_hint}".rstrip(),
            )
        token = read_token(api.token_file)
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401, "missing 'Authorization: Bearer <token>'", {"WWW-Authenticate": 'Bearer realm="mhd"'}
            )
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(401, "wrong bearer token", {"WWW-Authenticate": 'Bearer realm="mhd"'})

    async def post_reload(self, request: web.Request) -> web.StreamResponse:
        self.authorize(request)
        log.info("reload requested through the API by %s", describe_peer(request))
        future = self.daemon.request_reload()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), RELOAD_TIMEOUT)
        except TimeoutError:
            raise ApiError(
                504, f"the reload did not finish within {RELOAD_TIMEOUT:g}s; it is still queued"
            ) from None
        self.metrics.note_reload()
        if result.ok:
            return json_response(result.to_json())
        first = result.errors[0] if result.errors else "?"
        message = f"{self.daemon.config_path} is invalid, the running config is kept: {first}"
        return json_response({"error": message, **result.to_json()}, 422)

    async def post_disable(self, request: web.Request) -> web.StreamResponse:
        return self._set_disabled(request, True)

    async def post_enable(self, request: web.Request) -> web.StreamResponse:
        return self._set_disabled(request, False)

    def _set_disabled(self, request: web.Request, disabled: bool) -> web.StreamResponse:
        self.authorize(request)
        service, server = request.match_info["name"], request.match_info["server"]
        try:
            name = self.daemon.set_disabled(service, server, disabled)
        except LookupError as exc:
            raise ApiError(404, str(exc.args[0]) if exc.args else str(exc)) from None
        log.info(
            "%s %s %s through the API by %s",
            service, name, "disabled" if disabled else "enabled", describe_peer(request),
        )  # fmt: skip
        return json_response({"service": service, "server": name, "disabled": disabled})


_PREDICT: Any = None


async def predict_module() -> Any:
    """mhd.maglev.predict. The daemon imports it at start (`preload_model`); an app served without
    `start` (tests) imports it here, in a worker thread: it imports numpy, whose import on the
    loop would stall every probe (90 ms on a host core, over a second under emulation)."""
    global _PREDICT
    if _PREDICT is None:
        _PREDICT = await asyncio.to_thread(importlib.import_module, "mhd.maglev.predict")
    return _PREDICT


def preload_model(metrics: Metrics) -> None:
    """Import the Maglev model (numpy) now, at start, before the prober runs.

    Imported on first use instead, even in a worker thread, numpy's import holds the interpreter
    lock long enough to make every probe late: the first `/metrics` scrape put the probes' p99 lag
    at 225-876 ms in the test VM. At start it costs start-up time and 12 MB (host), and nothing waits."""
    global _PREDICT
    try:
        _PREDICT = importlib.import_module("mhd.maglev.predict")
    except ImportError as exc:
        log.warning("no Maglev model (%s): /table, /predict and mhd_server_slot_share are unavailable", exc)
    metrics.collector.slots.model()


def read_token(path: str) -> str:
    """The bearer token (first line of the file); ApiError 403 when it cannot be used."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        log.error("cannot read api.token-file %s: %s", path, exc.strerror)
        raise ApiError(403, f"the daemon cannot read its token file {path}: {exc.strerror}") from None
    if not token:
        raise ApiError(403, f"the token file {path} is empty: put a token in it (e.g. openssl rand -hex 32)")
    return token


# --- listening ---------------------------------------------------------------------------------------


class Admission:
    """How many API connections the daemon serves at once; the others wait in the kernel's
    listen queue, costing the loop nothing.

    The API shares its loop with the prober, and the loop runs every callback that is ready before
    it looks at its timers again, so a probe is as late as the longest loop iteration. With every
    connection accepted at once, 1,000 concurrent requests made iterations of a hundred or more
    connections each (asyncio accepts up to a whole backlog in one callback, then sets up each
    connection, parses each request, resumes each handler and tears each connection down in
    iterations of their own): up to 16-19 ms on a host core, 10-20x that in the test VM, where probes
    started 220 ms late at p99. Admitting `limit` connections at a time bounds every such phase to
    `limit` connections per iteration, whatever the burst (measured with bench/bench_api.py and the
    real-kernel test; figures in bench/README.md).

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


async def start(daemon: Daemon) -> Closer:
    """Serve the API on the configured TCP address and unix socket; returns the closer.

    A listener that cannot be opened is logged and skipped: the daemon's job is IPVS and health, and
    an occupied port must not stop it from doing that job.
    """
    assert daemon.config is not None
    api = daemon.config.api
    metrics = Metrics(daemon)
    metrics.install()
    bodies = StatusBodies(daemon)
    admission = Admission(MAX_CONNECTIONS)
    runners: list[web.AppRunner] = []
    listeners: list[Listener] = []
    socket_path: Path | None = None
    if api.listen:
        host, port = parse_listen(api.listen)
        runner = await _serve(Api(daemon, metrics, trusted=False, bodies=bodies).app())
        try:
            socks = tcp_listeners(host, port)
        except OSError as exc:
            log.error("API: cannot listen on %s (api.listen): %s", api.listen, exc.strerror or exc)
            await runner.cleanup()
        else:
            listeners += [Listener(s, runner, admission, TCP_CONNECTIONS) for s in socks]
            log.info("API listening on http://%s (reads; POST needs a token)", api.listen)
            runners.append(runner)
    if api.socket:
        runner = await _serve(Api(daemon, metrics, trusted=True, bodies=bodies).app())
        try:
            sock = unix_listener(api.socket, api.socket_mode, api.socket_group)
        except (OSError, LookupError) as exc:  # LookupError: unknown socket-group
            log.error("API: cannot serve on %s (api.socket): %s", api.socket, exc)
            await runner.cleanup()
        else:
            listeners.append(Listener(sock, runner, admission, MAX_CONNECTIONS))
            socket_path = Path(api.socket)
            log.info("API listening on %s (mode %o)", api.socket, api.socket_mode)
            runners.append(runner)
    preload_model(metrics)  # bound but not yet accepting: clients queue in the backlog meanwhile
    for listener in listeners:
        listener.start()

    async def close() -> None:
        metrics.uninstall()
        for listener in listeners:
            listener.close()
        for runner in runners:
            await runner.cleanup()
        if socket_path is not None:
            with contextlib.suppress(OSError):
                socket_path.unlink()

    return close


async def _serve(app: web.Application) -> web.AppRunner:
    # No access log: Prometheus scrapes would flood it.
    runner = web.AppRunner(app, access_log=None, max_line_size=MAX_REQUEST_LINE)
    await runner.setup()
    return runner


# --- the contract --------------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or list(props)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
ERROR = _json("error", "Error")
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": STR, "description": "service name"}
SERVER_PARAM = {
    "name": "server",
    "in": "path",
    "required": True,
    "schema": STR,
    "description": "server as 10.0.0.1:80, 10.0.0.1 (when unique) or [2001:db8::1]:80, URL-encoded",
}


def _schemas() -> dict[str, Any]:
    stats = _obj({k: INT for k in (
        "active_conns", "inactive_conns", "persist_conns", "conns",
        "in_packets", "out_packets", "in_bytes", "out_bytes",
    )})  # fmt: skip
    reload = _obj({"ok": BOOL, "at": NUM, "errors": {"type": "array", "items": STR}, "sha256": STR})
    return {
        "Error": _obj({"error": STR}),
        "Stats": stats,
        "CheckResult": _obj({"at": NUM, "ok": BOOL, "latency": NUM, "detail": STR}),
        "ReloadResult": reload,
        "ReloadFailed": {"allOf": [reload, _obj({"error": STR})]},
        "Server": _obj(
            {
                "name": STR,
                "address": STR,
                "port": INT,
                "weight": INT,
                "check": STR,
                "health": {"type": "string", "enum": ["up", "down", "unknown"]},
                "in_kernel": BOOL,
                "disabled": BOOL,
                "last_check": _nullable(_ref("CheckResult")),
                "successes": INT,
                "failures": INT,
                "transitions": INT,
                "kernel_weight": _nullable(INT),
                "stats": _nullable(_ref("Stats")),
            }
        ),
        "Service": _obj(
            {
                "name": STR,
                "virtual": STR,
                "address": _nullable(STR),
                "port": INT,
                "fwmark": INT,
                "family": {"type": "string", "enum": ["ipv4", "ipv6"]},
                "protocol": _nullable(STR),
                "scheduler": STR,
                "flags": {"type": "array", "items": STR},
                "state": {
                    "type": "string",
                    "enum": ["ok", "degraded", "panic", "down"],
                    "description": "down: no server in IPVS; panic: min-healthy keeps unhealthy servers; "
                    "degraded: an enabled server is not up or not in IPVS; ok: all enabled servers serve",
                },
                "panic": BOOL,
                "min_healthy": STR,
                "in_kernel": BOOL,
                "servers_total": INT,
                "servers_up": INT,
                "servers_in_kernel": INT,
                "stats": _nullable(_ref("Stats")),
                "servers": {"type": "array", "items": _ref("Server")},
            }
        ),
        "Daemon": _obj(
            {
                "version": STR,
                "pid": INT,
                "config": _obj({"path": STR, "sha256": _nullable(STR), "loaded_at": _nullable(NUM)}),
                "last_reload": _nullable(_ref("ReloadResult")),
                "kernel": _nullable({"type": "object", "description": "ip_vs_mh variant, MH table size"}),
                "reconciles": INT,
                "transitions": INT,
                "summary": STR,
            }
        ),
        "Status": _obj({"daemon": _ref("Daemon"), "services": {"type": "array", "items": _ref("Service")}}),
        "Health": _obj({"ok": BOOL, "last_reconcile_age": NUM, "limit": NUM}, ["ok"]),
        "Drain": _obj({"service": STR, "server": STR, "disabled": BOOL}),
        "Table": _obj(
            {
                "service": STR,
                "table_size": INT,
                "variant": STR,
                "servers": {"type": "array", "items": _obj({"server": STR, "weight": INT, "share": NUM})},
                "max_mean_ratio": NUM,
            }
        ),
        "Predictions": {"type": "array", "items": _obj({"client": STR, "server": _nullable(STR)})},
    }


def _drain(verb: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{verb} a server (persisted in the state dir; applied by the next pass, at once)",
            "operationId": f"{verb}Server",
            "parameters": [NAME_PARAM, SERVER_PARAM],
            "security": [{}, {"bearer": []}],
            "responses": {
                "200": _json(f"{verb}d", "Drain"),
                "401": ERROR,
                "403": ERROR,
                "404": _json("no such service or server", "Error"),
                "413": ERROR,
            },
        }
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 description of every route, with the errors any request can get: 400 for an
    unparsable request (its line, headers or size) and, where a body is read, 408 for a body that
    does not arrive in time."""
    doc = _routes()
    for path in doc["paths"].values():
        for method, operation in path.items():
            responses = operation["responses"]
            responses.setdefault("400", _json("malformed request", "Error"))
            if method == "post":
                responses.setdefault("408", _json("request body not received in time", "Error"))
    return doc


def _routes() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mhd",
            "version": __version__,
            "description": "IPVS/Maglev control-plane daemon. POST requests are allowed on the unix "
            "socket; over TCP they need 'Authorization: Bearer <token>' (api.token-file).",
        },
        "paths": {
            "/v1/status": {
                "get": {
                    "summary": "the daemon, every service and every server",
                    "operationId": "getStatus",
                    "responses": {"200": _json("status", "Status")},
                }
            },
            "/v1/services/{name}": {
                "get": {
                    "summary": "one service",
                    "operationId": "getService",
                    "parameters": [NAME_PARAM],
                    "responses": {"200": _json("the service", "Service"), "404": ERROR},
                }
            },
            "/v1/services/{name}/table": {
                "get": {
                    "summary": "each server's share of the live Maglev table (bit-exact with ip_vs_mh)",
                    "operationId": "getTable",
                    "parameters": [NAME_PARAM],
                    "responses": {"200": _json("the table", "Table"), "400": ERROR, "404": ERROR},
                }
            },
            "/v1/services/{name}/predict": {
                "get": {
                    "summary": "which real server each client goes to now",
                    "operationId": "predict",
                    "parameters": [
                        NAME_PARAM,
                        {
                            "name": "client",
                            "in": "query",
                            "required": True,
                            "description": "ADDR or ADDR:PORT ([v6]:PORT); repeat for more (up to 10,000)",
                            "schema": {"type": "array", "items": STR, "minItems": 1, "maxItems": 10000},
                            "style": "form",
                            "explode": True,
                        },
                    ],
                    "responses": {
                        "200": _json("one entry per client", "Predictions"),
                        "400": ERROR,
                        "404": ERROR,
                    },
                }
            },
            "/v1/reload": {
                "post": {
                    "summary": "re-read the config file and wait for the result",
                    "operationId": "reload",
                    "security": [{}, {"bearer": []}],
                    "responses": {
                        "200": _json("reloaded", "ReloadResult"),
                        "401": ERROR,
                        "403": ERROR,
                        "413": ERROR,
                        "422": _json("the file is invalid; the running config is kept", "ReloadFailed"),
                        "504": ERROR,
                    },
                }
            },
            "/v1/services/{name}/servers/{server}/disable": _drain("disable"),
            "/v1/services/{name}/servers/{server}/enable": _drain("enable"),
            "/v1/openapi.json": {
                "get": {
                    "summary": "this document",
                    "operationId": "getOpenapi",
                    "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {}}}},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 while reconcile passes complete, 503 when none did recently",
                    "operationId": "getHealthz",
                    "responses": {"200": _json("healthy", "Health"), "503": _json("stale", "Health")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "getMetrics",
                    "responses": {
                        "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def main() -> None:
    """`python -m mhd.api`: print the OpenAPI document (docs/openapi.json is this output)."""
    json.dump(openapi(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
