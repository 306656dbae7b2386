"""The API's routes: what each request reads from the daemon's view or asks the daemon to do.

Every error is a JSON `{"error": "..."}` with a 4xx status saying what to fix; an unexpected
exception becomes a logged 500 with the same shape. Bodies are capped at `MAX_BODY`: no endpoint
needs one. The routes and their answers are documented in `mhd.api.openapi`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mhd.api import model
from mhd.api.auth import TokenFile, authorize
from mhd.api.fleet import FleetRoutes
from mhd.api.listeners import REQUEST_TIMEOUT, Connection
from mhd.api.metrics import Metrics
from mhd.api.openapi import openapi
from mhd.api.responses import ApiError, error_response, json_response
from mhd.api.status import find_service, status
from mhd.api.view import DaemonView
from mhd.maglev.params import Model
from mhd.model import Service

log = logging.getLogger("mhd.api")

MAX_BODY = 64 * 1024  # bytes: no endpoint takes a body, this only bounds what a client can make us read
RELOAD_TIMEOUT = 60.0  # seconds a POST /v1/reload waits for the main loop to finish the reload
MIN_STALE = 30.0  # seconds: /healthz fails when no pass completed for max(3 intervals, this)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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

    A build walks every server on the daemon's only loop, between probes; requests that arrive
    together share one build, made after they all arrived, so no answer is older than its request.
    """

    def __init__(self, daemon: DaemonView) -> None:
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
    """The handlers of one listener; `trusted` is True for the unix socket (see `mhd.api.auth`)."""

    def __init__(
        self,
        daemon: DaemonView,
        metrics: Metrics,
        *,
        trusted: bool,
        bodies: StatusBodies | None = None,
        tokens: TokenFile | None = None,
    ) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.trusted = trusted
        self.bodies = bodies or StatusBodies(daemon)  # shared by the listeners of one daemon
        self.tokens = tokens or TokenFile()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
        app.router.add_get("/v1/status", self.get_status)
        app.router.add_get("/v1/services/{name}", self.get_service)
        app.router.add_get("/v1/services/{name}/table", self.get_table)
        app.router.add_get("/v1/services/{name}/predict", self.get_predict)
        app.router.add_post("/v1/reload", self.post_reload)
        app.router.add_post("/v1/services/{name}/servers/{server}/disable", self.post_disable)
        app.router.add_post("/v1/services/{name}/servers/{server}/enable", self.post_enable)
        FleetRoutes(self.daemon, self.authorize, describe_peer).add(app.router)
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

    def _live(self, name: str) -> tuple[Service, Model]:
        """The service as the kernel holds it now (list order as dumped) and the kernel's model."""
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
        return live, model.parameters(self.daemon)

    async def get_table(self, request: web.Request) -> web.StreamResponse:
        """Each server's share of the kernel's Maglev table, computed from the live list order."""
        predict = await model.get()
        live, params = self._live(request.match_info["name"])
        t = await asyncio.to_thread(predict.table, live, params)
        servers = [
            {"server": str(d.key), "weight": d.weight, "share": share}
            for d, share in zip(live.dests, t.slot_shares(), strict=True)
        ]
        return json_response(
            {
                "service": request.match_info["name"],
                "table_size": t.size,
                "variant": params.variant,
                "servers": servers,
                "max_mean_ratio": t.max_mean_ratio(),
            }
        )

    async def get_predict(self, request: web.Request) -> web.StreamResponse:
        """Which server each `client` (addr or addr:port, repeatable, up to 10,000) goes to now."""
        predict = await model.get()
        live, params = self._live(request.match_info["name"])
        texts = request.query.getall("client", [])
        if not texts or len(texts) > 10_000:
            raise ApiError(400, "give 1 to 10,000 clients as ?client=ADDR[:PORT]&client=...")
        try:
            clients = [predict.parse_client(c) for c in texts]
            picks = await asyncio.to_thread(predict.predict, live, clients, params)
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
        if not self.trusted:
            config = self.daemon.config
            authorize(request, config.api if config else None, self.daemon.config_path, self.tokens)

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
