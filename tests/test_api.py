"""The REST API against a Daemon whose state is filled in by hand: no IPVS, no probes, no root."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession, UnixConnector, web
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeDaemon, health, spy_imports
from servers import aio, closed_port

from mhd.api import handlers, listeners, server
from mhd.api import model as maglev_model
from mhd.api.handlers import MAX_BODY, Api, StatusBodies
from mhd.api.metrics import Metrics
from mhd.api.openapi import openapi
from mhd.api.server import start
from mhd.daemon import Daemon
from mhd.model import Stats
from mhd.state import StateDir

ROOT = Path(__file__).resolve().parent.parent

# web: all up (ok); dns: one server down and out (degraded); v6: min-healthy 2 with one down (panic);
# empty: not in the kernel at all (down).
CONFIG = """
reconcile-interval: 1s
api: {listen: '', socket: ''}
defaults:
  check: {type: tcp, interval: 2s, timeout: 1s}
services:
  - {name: web, address: 203.0.113.15, port: 80, mh-port: true, servers: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]}
  - {name: dns, address: 203.0.113.53, port: 53, protocol: udp, servers: ["10.0.1.1:53", "10.0.1.2:53"]}
  - name: v6
    address: 2001:db8::80
    port: 443
    min-healthy: 2
    servers: ["[2001:db8:1::1]:443", "[2001:db8:1::2]:443"]
  - {name: empty, address: 203.0.113.99, port: 80, servers: ["10.0.9.1:80"]}
"""
DOWN = {("dns", "10.0.1.2:53"), ("v6", "[2001:db8:1::2]:443"), ("empty", "10.0.9.1:80")}
WEB1_STATS = Stats(active_conns=5, inactive_conns=2, conns=100, in_packets=1000, out_packets=900)


def make_daemon(tmp_path: Path, text: str = CONFIG) -> FakeDaemon:
    return FakeDaemon(tmp_path, text, down=DOWN, stats={"10.0.0.1:80": WEB1_STATS}, absent={"empty"})


@contextlib.asynccontextmanager
async def served(d: Daemon, *, trusted: bool) -> AsyncIterator[TestClient[Any, Any]]:
    """The app of one listener (unix socket: trusted) behind aiohttp's test server."""
    metrics = Metrics(d)
    async with TestClient(TestServer(Api(d, metrics, trusted=trusted).app())) as client:
        yield client


@contextlib.asynccontextmanager
async def main_loop(d: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The daemon's real main loop (reloads included), with the kernel pass replaced by `refresh`."""

    async def reconcile_once(only: set[Any] | None = None) -> None:
        d.refresh()
        d.reconciles += 1
        for hook in d.hooks:
            hook()

    monkeypatch.setattr(d, "reconcile_once", reconcile_once)
    task = asyncio.create_task(d.main_loop())
    try:
        yield
    finally:
        d.stop()
        await task


async def get_json(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def post_json(client: TestClient[Any, Any], path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.post(path, **kwargs)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


# --- status ------------------------------------------------------------------------------------------


@aio
async def test_status_reports_daemon_services_and_servers(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=False) as client:
        doc = await get_json(client, "/v1/status")
    daemon = doc["daemon"]
    assert daemon["config"]["path"] == str(tmp_path / "mhd.yaml")
    assert daemon["config"]["sha256"] == d.config.sha256 if d.config else False
    assert daemon["last_reload"]["ok"] is True
    assert daemon["kernel"]["ip_vs_mh"] == "intree" and daemon["kernel"]["mh_table_size"] == 4093
    states = {s["name"]: s["state"] for s in doc["services"]}
    assert states == {"web": "ok", "dns": "degraded", "v6": "panic", "empty": "down"}
    web_svc = doc["services"][0]
    assert web_svc["virtual"] == "tcp:203.0.113.15:80" and web_svc["protocol"] == "tcp"
    assert web_svc["scheduler"] == "mh" and "mh-port" in web_svc["flags"]
    first = web_svc["servers"][0]
    assert first["name"] == "10.0.0.1:80" and first["health"] == "up" and first["in_kernel"] is True
    assert first["stats"]["active_conns"] == 5 and first["stats"]["conns"] == 100
    assert first["last_check"]["ok"] is True and first["successes"] == 5
    dns = doc["services"][1]
    down = dns["servers"][1]
    assert (down["health"], down["in_kernel"], down["failures"], down["transitions"]) == ("down", False, 3, 1)
    assert down["last_check"]["detail"] == "timeout after 1s" and down["stats"] is None
    v6 = doc["services"][2]
    assert v6["panic"] is True and v6["servers_in_kernel"] == 2 and v6["servers_up"] == 1
    assert v6["servers"][1]["name"] == "[2001:db8:1::2]:443"


@aio
async def test_status_requests_that_arrive_together_share_one_build(tmp_path: Path) -> None:
    """A build walks every server on the daemon's loop: concurrent requests must not each pay it."""
    d = make_daemon(tmp_path)
    bodies = StatusBodies(d)
    async with TestClient(TestServer(Api(d, Metrics(d), trusted=False, bodies=bodies).app())) as client:
        responses = await asyncio.gather(*(client.get("/v1/status") for _ in range(50)))
        assert {r.status for r in responses} == {200}
        assert {r.content_type for r in responses} == {"application/json"}
        docs = [await r.json() for r in responses]
        assert all(doc == docs[0] for doc in docs)
        assert bodies.builds < 25, bodies.builds
        # Never stale: a change is in the next answer.
        d.set_health("web", "10.0.0.2:80", health("down"))
        d.refresh()
        doc = await get_json(client, "/v1/status")
        web_servers = {s["name"]: s["health"] for s in doc["services"][0]["servers"]}
        assert web_servers["10.0.0.2:80"] == "down"


@aio
async def test_one_service_and_unknown_service(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=False) as client:
        doc = await get_json(client, "/v1/services/dns")
        assert doc["name"] == "dns" and doc["protocol"] == "udp"
        err = await get_json(client, "/v1/services/nope", 404)
    assert "no service named 'nope'" in err["error"]


# --- disable / enable ----------------------------------------------------------------------------------


@aio
async def test_disable_and_enable_persist_in_the_state_dir(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=True) as client:
        doc = await post_json(client, "/v1/services/web/servers/10.0.0.2:80/disable")
        assert doc == {"service": "web", "server": "10.0.0.2:80", "disabled": True}
        assert StateDir(tmp_path / "state").disabled() == {"web": {"10.0.0.2:80"}}
        d.refresh()
        web_svc = await get_json(client, "/v1/services/web")
        assert web_svc["state"] == "ok"  # a drained server does not degrade the service
        server = web_svc["servers"][1]
        assert server["disabled"] is True and server["in_kernel"] is False
        # bare address, and the IPv6 form URL-encoded
        await post_json(client, "/v1/services/web/servers/10.0.0.2/enable")
        await post_json(client, "/v1/services/v6/servers/%5B2001%3Adb8%3A1%3A%3A1%5D%3A443/disable")
    assert StateDir(tmp_path / "state").disabled() == {"v6": {"[2001:db8:1::1]:443"}}


@aio
async def test_unknown_server_or_service_is_404_with_the_reason(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=True) as client:
        err = await post_json(client, "/v1/services/web/servers/10.9.9.9:80/disable", 404)
        assert "has no server '10.9.9.9:80'" in err["error"] and "10.0.0.1:80" in err["error"]
        err = await post_json(client, "/v1/services/nope/servers/10.0.0.1:80/enable", 404)
        assert "no service named 'nope'" in err["error"]


# --- authorization ----------------------------------------------------------------------------------


@aio
async def test_tcp_without_a_token_file_refuses_changes_and_says_how(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=False) as client:
        err = await post_json(client, "/v1/services/web/servers/10.0.0.1:80/disable", 403)
        assert "api.token-file" in err["error"] and "Authorization: Bearer" in err["error"]
        err = await post_json(client, "/v1/reload", 403)
    assert StateDir(tmp_path / "state").disabled() == {}


@aio
async def test_tcp_with_a_token_file_needs_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    d = make_daemon(tmp_path, CONFIG.replace("api: {", f"api: {{token-file: {token}, "))
    path = "/v1/services/web/servers/10.0.0.1:80/disable"
    async with served(d, trusted=False) as client:
        response = await client.post(path)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        await post_json(client, path, 401, headers={"Authorization": "Bearer wrong"})
        await post_json(client, path, 401, headers={"Authorization": "Basic czNjcmV0"})
        await post_json(client, path, 200, headers={"Authorization": "Bearer s3cret"})
        token.unlink()
        err = await post_json(client, path, 403, headers={"Authorization": "Bearer s3cret"})
        assert "cannot read its token file" in err["error"]
        token.write_text("\n")
        err = await post_json(client, path, 403, headers={"Authorization": "Bearer "})
        assert "empty" in err["error"]


@aio
async def test_reads_need_no_token(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=False) as client:
        for path in ("/v1/status", "/v1/services/web", "/healthz", "/v1/openapi.json"):
            assert (await client.get(path)).status == 200
        assert (await client.get("/metrics")).status == 200


# --- errors are JSON 4xx -------------------------------------------------------------------------------


@aio
async def test_errors_are_json(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    async with served(d, trusted=True) as client:
        assert "openapi" in (await get_json(client, "/nope", 404))["error"]
        response = await client.get("/v1/reload")
        assert response.status == 405 and "POST" in response.headers["Allow"]
        assert (await response.json())["error"]
        err = await post_json(client, "/v1/reload", 413, data=b"x" * (MAX_BODY + 1))
        assert "too large" in err["error"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * MAX_BODY

        err = await post_json(client, "/v1/services/web/servers/10.0.0.1/disable", 413, data=chunks())
    assert StateDir(tmp_path / "state").disabled() == {}


@aio
async def test_an_unexpected_exception_is_a_logged_json_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_daemon(tmp_path)

    def broken(_daemon: Daemon) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(handlers, "status", broken)
    async with served(d, trusted=False) as client:
        with caplog.at_level(logging.ERROR, "mhd.api.server"):
            err = await get_json(client, "/v1/status", 500)
    assert err == {"error": "internal error, see the daemon's log"}
    assert "boom" in caplog.text


# --- reload ------------------------------------------------------------------------------------------


@aio
async def test_reload_waits_for_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_daemon(tmp_path)
    config = tmp_path / "mhd.yaml"
    async with main_loop(d, monkeypatch), served(d, trusted=True) as client:
        config.write_text(CONFIG.replace("10.0.9.1:80", "10.0.9.2:80"))
        doc = await post_json(client, "/v1/reload")
        assert doc["ok"] is True and doc["errors"] == [] and d.config is not None
        assert doc["sha256"] == d.config.sha256 and d.config.by_name("empty") is not None
        config.write_text(CONFIG + "  - {name: bad, address: 10.1.1.1, port: 99999, protocol: tcpp}\n")
        err = await post_json(client, "/v1/reload", 422)
        assert err["ok"] is False and "invalid" in err["error"]
        assert any("99999" in e for e in err["errors"]) and any("tcpp" in e for e in err["errors"])
        assert d.config.by_name("bad") is None
        status = await get_json(client, "/v1/status")
        assert status["daemon"]["last_reload"]["ok"] is False


# --- health -------------------------------------------------------------------------------------------


@aio
async def test_healthz_follows_reconcile_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    metrics.install()
    async with TestClient(TestServer(Api(d, metrics, trusted=False).app())) as client:
        assert (await get_json(client, "/healthz"))["ok"] is True
        metrics.last_reconcile -= 31  # interval 1s: the limit is the 30s floor
        doc = await get_json(client, "/healthz", 503)
        assert doc["ok"] is False and "no reconcile pass" in doc["error"]
        for hook in d.hooks:  # what the daemon does after a pass
            hook()
        assert (await get_json(client, "/healthz"))["ok"] is True


# --- the OpenAPI document ------------------------------------------------------------------------------


def test_committed_openapi_is_the_served_one() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == openapi(), "regenerate: python -m mhd.api > docs/openapi.json"


def test_openapi_documents_the_errors_every_request_can_get() -> None:
    """The listener answers unparsable requests with 400 and slow bodies with 408, on any route."""
    for path, operations in openapi()["paths"].items():
        for method, operation in operations.items():
            assert "400" in operation["responses"], (method, path)
            assert ("408" in operation["responses"]) == (method == "post"), (method, path)


@aio
async def test_openapi_is_served_and_documents_every_route(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    app = Api(d, Metrics(d), trusted=True).app()
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource}
    documented = {(m, p) for p, ops in openapi()["paths"].items() for m in ops}
    assert routes - {("head", p) for _, p in routes} == documented
    async with served(d, trusted=True) as client:
        assert await get_json(client, "/v1/openapi.json") == openapi()


@aio
async def test_the_maglev_model_is_imported_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/table and /predict need numpy: imported on the daemon's loop it stalled every probe."""
    seen = spy_imports(monkeypatch, maglev_model)
    monkeypatch.setattr(maglev_model, "_module", None)
    async with served(make_daemon(tmp_path), trusted=False) as client:
        await get_json(client, "/v1/services/web/table")
        await get_json(client, "/v1/services/web/predict?client=198.51.100.7")
    assert seen == [("mhd.maglev.predict", False)]


# --- the real listeners -------------------------------------------------------------------------------


@aio
async def test_start_serves_tcp_and_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "mhd.sock"
    port = closed_port()
    api = f'api: {{listen: "127.0.0.1:{port}", socket: {sock}, socket-mode: "0600"}}'
    d = make_daemon(tmp_path, CONFIG.replace("api: {listen: '', socket: ''}", api))
    sock.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # a socket file nobody listens on: left by a crash
    stale.close()
    close = await start(d)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(sock).st_mode)
        assert [p.name for p in sock.parent.iterdir()] == ["mhd.sock"]
        path = "/v1/services/web/servers/10.0.0.1:80/disable"
        async with ClientSession(connector=UnixConnector(path=str(sock))) as unix:
            response = await unix.post(f"http://mhd{path}")
            assert response.status == 200
        async with ClientSession() as tcp:
            response = await tcp.post(f"http://127.0.0.1:{port}{path}")
            assert response.status == 403
            response = await tcp.get(f"http://127.0.0.1:{port}/metrics")
            assert response.status == 200 and "mhd_server_up" in await response.text()
        second = await start(d)  # the socket is live: the second daemon must not steal it
        await second()
        assert sock.exists()
    finally:
        await close()
    assert not sock.exists()
    assert d.hooks == [] and d.probe_hooks == []


@aio
async def test_predict_takes_the_documented_10000_clients_on_the_real_listener(tmp_path: Path) -> None:
    """10,000 clients make a request line of ~300 KB, past aiohttp's default limit of 8,190 bytes."""
    port = closed_port()
    d = make_daemon(tmp_path, CONFIG.replace("api: {listen: '', socket: ''}", f"api: {{listen: '127.0.0.1:{port}', socket: ''}}"))  # fmt: skip
    clients = [f"198.51.{i >> 8 & 255}.{i & 255}:{40000 + i}" for i in range(10_000)]
    query = "&".join(f"client={c}" for c in clients)
    close = await start(d)
    try:
        async with ClientSession() as tcp:
            response = await tcp.get(f"http://127.0.0.1:{port}/v1/services/web/predict?{query}")
            assert response.status == 200, await response.text()
            assert [p["client"] for p in await response.json()] == clients
    finally:
        await close()


@aio
async def test_the_maglev_model_is_imported_at_start_not_at_first_use(tmp_path: Path) -> None:
    """numpy's import holds the interpreter lock for seconds under emulation: done at start, before
    the prober runs, no scrape or prediction ever makes probes wait for it."""
    maglev_model._module = None
    close = await start(make_daemon(tmp_path, CONFIG))
    try:
        assert maglev_model._module is not None and hasattr(maglev_model._module, "predict")
        assert await maglev_model.get() is maglev_model._module  # no import left to do
    finally:
        await close()


async def start_on_tcp_and_unix(tmp_path: Path) -> tuple[Callable[[], Awaitable[None]], int, Path]:
    """The API of a test daemon on a free loopback port and a unix socket: (closer, port, socket)."""
    sock = tmp_path / "mhd.sock"
    port = closed_port()
    api = f'api: {{listen: "127.0.0.1:{port}", socket: {sock}}}'
    d = make_daemon(tmp_path, CONFIG.replace("api: {listen: '', socket: ''}", api))
    return await start(d), port, sock


async def raw_exchange(data: bytes, *, port: int | None = None, path: Path | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as is on a fresh connection; (status, headers, body) of the answer, read until
    the server closes."""
    if path is not None:
        reader, writer = await asyncio.open_unix_connection(str(path))
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_quiet(caplog: pytest.LogCaptureFixture, level: int) -> None:
    """No traceback and nothing logged at `level` or above: a client's mistake is not the daemon's."""
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= level]
    assert not noisy, [(r.name, r.levelname, r.getMessage()) for r in noisy]


MALFORMED = {
    "TLS on the HTTP port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
    "bad request line": b"GET /v1/status HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
    "bad HTTP version": b"GET /healthz HTTP/7.x\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "bad Content-Length": b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    "oversize header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "oversize request line": b"GET /healthz?" + b"a" * (listeners.MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n",
}


@aio
async def test_malformed_requests_get_a_json_4xx_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What aiohttp rejects before any handler runs answers in the API's error shape too, and a
    client's mistake is not logged as the daemon's (a traceback at ERROR for every bad request)."""
    close, port, sock = await start_on_tcp_and_unix(tmp_path)
    caplog.set_level(logging.DEBUG)
    try:
        for what, data in MALFORMED.items():
            for where in ({"port": port}, {"path": sock}):
                status, headers, body = await raw_exchange(data, **where)  # type: ignore[arg-type]
                assert 400 <= status < 500, (what, where, status, body[:300])
                assert headers.get("content-type", "").startswith("application/json"), (what, headers, body[:300])
                error = json.loads(body)["error"]
                assert isinstance(error, str) and error.startswith("bad HTTP request"), (what, error)
        # The listener still serves well-formed requests afterwards.
        status, headers, body = await raw_exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port=port)
        assert status == 200 and json.loads(body)["ok"] is True
    finally:
        await close()
    assert_quiet(caplog, logging.WARNING)


@aio
async def test_a_burst_is_served_a_bounded_number_of_connections_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API shares the loop with the probes: how many connections it serves at once bounds how
    long one loop iteration can take (set up, parse, answer, close: each phase for all of them in
    one iteration). The rest wait in the kernel's listen queue, and every request is answered."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server, "TCP_CONNECTIONS", 3)
    open_now, peak = [0], [0]
    made, lost = listeners.Connection.connection_made, listeners.Connection.connection_lost

    def counted_made(self: Any, transport: Any) -> None:
        open_now[0] += 1
        peak[0] = max(peak[0], open_now[0])
        made(self, transport)

    def counted_lost(self: Any, exc: Any) -> None:
        open_now[0] -= 1
        lost(self, exc)

    monkeypatch.setattr(listeners.Connection, "connection_made", counted_made)
    monkeypatch.setattr(listeners.Connection, "connection_lost", counted_lost)
    close, port, sock = await start_on_tcp_and_unix(tmp_path)
    try:
        async with (
            ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as tcp,
            ClientSession(connector=UnixConnector(path=str(sock), limit=0, force_close=True)) as unix,
        ):
            async def get(session: ClientSession, url: str) -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(
                *(get(tcp, f"http://127.0.0.1:{port}/v1/status") for _ in range(150)),
                *(get(unix, "http://mhd/v1/status") for _ in range(50)),
            )
        assert statuses == [200] * 200
        assert 2 <= peak[0] <= 4, peak
    finally:
        await close()


@aio
async def test_idle_connections_cannot_hold_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that never send a request (slowloris) are closed after REQUEST_TIMEOUT, and TCP
    clients can never take the unix socket's share of the slots."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(server, "TCP_CONNECTIONS", 1)
    monkeypatch.setattr(listeners, "REQUEST_TIMEOUT", 0.5)
    close, port, sock = await start_on_tcp_and_unix(tmp_path)
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)  # accepted: TCP's only slot is taken
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, _ = await raw_exchange(request, path=sock)  # the unix socket's own slot
        assert status == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        status, _, _ = await raw_exchange(request, port=port)  # waits for the idle one to be closed
        assert status == 200 and loop.time() - t0 >= 0.2
        assert await idle_reader.read() == b""  # closed by the daemon, without an answer
        idle_writer.close()
    finally:
        await close()


def test_a_file_in_the_way_of_the_socket_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "mhd.sock"
    path.write_text("precious")
    with pytest.raises(OSError, match="not a socket"):
        listeners.unix_listener(str(path), 0o660, None)
    assert path.read_text() == "precious"


# --- fuzzing from the OpenAPI document ----------------------------------------------------------------


@contextlib.contextmanager
def threaded_server(d: FakeDaemon, monkeypatch: pytest.MonkeyPatch, trusted: bool) -> Iterator[str]:
    """The API and the daemon's main loop in a thread of their own, for a synchronous HTTP client."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    url: list[str] = []

    async def serve() -> None:
        runner = web.AppRunner(Api(d, Metrics(d), trusted=trusted).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        url.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")  # type: ignore[attr-defined]
        async with main_loop(d, monkeypatch):
            ready.set()
            await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("trusted", [True, False])
def test_fuzz_from_openapi_never_5xx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(openapi())
    operations = [op.ok() for op in schema.get_all_operations()]
    strategies = [
        op.as_strategy(generation_mode=mode)
        for op in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    d = make_daemon(tmp_path)
    seen: set[int] = set()
    with threaded_server(d, monkeypatch, trusted) as base_url:

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(strategies))
        def fuzz(case: Any) -> None:
            response = case.call(base_url=base_url, timeout=10)
            seen.add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            assert response.headers.get("content-type", [""])[0].startswith(
                ("application/json", "text/plain", "text/html")
            ), (case.method, case.formatted_path, response.status_code, response.headers, response.text)

        fuzz()
    assert seen & {200} and seen & {403, 404}


@aio
async def test_table_and_predict_answer_from_the_live_list(tmp_path: Path) -> None:
    from mhd.maglev.predict import Model, predict, shares

    d = make_daemon(tmp_path)
    live = d.observed[next(k for k in d.observed if str(k) == "tcp:203.0.113.15:80")]
    async with served(d, trusted=False) as client:
        doc = await get_json(client, "/v1/services/web/table")
        assert doc["table_size"] == 4093 and doc["variant"] == "intree"
        want = shares(live, Model(12, "intree"))
        assert {s["server"]: s["share"] for s in doc["servers"]} == {str(k): v for k, v in want.items()}
        clients = ["198.51.100.7:40000", "198.51.100.8:1234", "198.51.100.9"]
        got = await get_json(client, "/v1/services/web/predict?" + "&".join(f"client={c}" for c in clients))
        expected = predict(
            live, [("198.51.100.7", 40000), ("198.51.100.8", 1234), ("198.51.100.9", 0)], Model(12, "intree")
        )
        assert [g["server"] for g in got] == [str(e) for e in expected]
        bad = await get_json(client, "/v1/services/web/predict?client=2001:db8::1", 400)
        assert "bad client" in bad["error"]
        none = await get_json(client, "/v1/services/web/predict", 400)
        assert "client=" in none["error"]
        gone = await get_json(client, "/v1/services/empty/table", 404)
        assert "not in the kernel" in gone["error"]


# --- issue 11 item 9: auth and permission details -------------------------------------------------------


def token_config(token: Path, port: int | None = None, extra: str = "") -> str:
    listen = f"127.0.0.1:{port}" if port is not None else ""
    return CONFIG.replace("api: {listen: '', socket: ''}", f"api: {{listen: '{listen}', socket: '', token-file: {token}{extra}}}")


@aio
async def test_non_utf8_bytes_in_authorization_are_a_401_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    port = closed_port()
    close = await start(make_daemon(tmp_path, token_config(token, port)))
    caplog.set_level(logging.DEBUG)
    try:
        for value in (b"Bearer \xff\xfe\x80", b"\xff\xfe s3cret", b"Bearer s3cret\xc3"):
            request = b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
            request += b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            status, headers, body = await raw_exchange(request, port=port)
            assert status == 401, (value, status, body)
            assert headers["content-type"].startswith("application/json") and json.loads(body)["error"]
    finally:
        await close()
    assert_quiet(caplog, logging.ERROR)


@aio
async def test_a_missing_token_file_is_not_disclosed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "secret-dir" / "token"
    d = make_daemon(tmp_path, token_config(token))
    path = "/v1/services/web/servers/10.0.0.1:80/disable"
    async with served(d, trusted=False) as client:
        with caplog.at_level(logging.DEBUG):
            for _ in range(5):
                err = await post_json(client, path, 403, headers={"Authorization": "Bearer x"})
                assert "secret-dir" not in err["error"] and "cannot read its token file" in err["error"]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and str(token) in errors[0].getMessage(), [r.getMessage() for r in errors]
        token.parent.mkdir()
        token.write_text("\n")
        token.chmod(0o600)
        err = await post_json(client, path, 403, headers={"Authorization": "Bearer x"})
        assert "empty" in err["error"] and "secret-dir" not in err["error"]


@aio
async def test_only_the_first_line_of_the_token_file_counts(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\nsecond line: a comment\n")
    token.chmod(0o600)
    d = make_daemon(tmp_path, token_config(token))
    path = "/v1/services/web/servers/10.0.0.1:80/disable"
    async with served(d, trusted=False) as client:
        await post_json(client, path, 401, headers={"Authorization": "Bearer second line: a comment"})
        await post_json(client, path, 401, headers={"Authorization": "Bearer s3cret\tsecond"})
        await post_json(client, path, 200, headers={"Authorization": "Bearer s3cret"})


@aio
async def test_loose_permissions_are_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    sock = tmp_path / "mhd.sock"
    extra = f', socket: {sock}, socket-mode: "0666"'
    text = token_config(token, closed_port(), extra=extra).replace("socket: '', ", "")
    with caplog.at_level(logging.WARNING):
        close = await start(make_daemon(tmp_path, text))
        await close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("api.token-file" in w and "chmod 600" in w and "0644" in w for w in warnings), warnings
    assert any("api.socket-mode" in w and "0666" in w for w in warnings), warnings
    caplog.clear()
    token.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        close = await start(make_daemon(tmp_path, text.replace('"0666"', '"0660"')))
        await close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --- one rule for the Maglev parameters ------------------------------------------------------------


def test_the_variant_is_the_configs_choice_else_the_running_module() -> None:
    from mhd.maglev.params import Model, model_for

    assert model_for("intree", "backport", None) == Model(12, "intree")
    assert model_for("backport", None, 8) == Model(8, "backport") and Model(8, "backport").size == 251
    assert model_for("auto", "backport", 14) == Model(14, "backport")
    assert model_for("auto", None, None) == Model(12, "intree")


@aio
async def test_table_and_metrics_predict_with_the_same_parameters(tmp_path: Path) -> None:
    """A backport kernel with a 509-slot table: the API's table and the metrics' shares both use it."""
    from mhd.kernel import KernelInfo
    from mhd.maglev.predict import Model, shares

    d = make_daemon(tmp_path)
    d.kernel = KernelInfo("6.1.0-test", True, "backport", 9, "config")
    live = d.observed[next(k for k in d.observed if str(k) == "tcp:203.0.113.15:80")]
    want = {str(k): v for k, v in shares(live, Model(9, "backport")).items()}
    assert want != {str(k): v for k, v in shares(live, Model(12, "intree")).items()}
    async with served(d, trusted=False) as client:
        doc = await get_json(client, "/v1/services/web/table")
    assert (doc["table_size"], doc["variant"]) == (509, "backport")
    assert {s["server"]: s["share"] for s in doc["servers"]} == want
    metrics = Metrics(d)
    metrics.collector.families()
    metrics.collector.slots.wait()
    share = next(f for f in metrics.collector.families() if f.name == "mhd_server_slot_share")
    got = {f"{values[1]}:{values[2]}": value for (values, _), value in share.rows if values[0] == "web"}
    assert got == want
    metrics.collector.slots.close()


# --- layering ------------------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level, in functions and under TYPE_CHECKING alike."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_api_reads_the_daemon_only_through_its_view() -> None:
    allowed = ("mhd.api", "mhd.announce", "mhd.config", "mhd.model", "mhd.health", "mhd.maglev", "mhd.membership",
               "mhd.reports", "mhd.sysctl_policy")  # fmt: skip
    for path in sorted((ROOT / "mhd" / "api").glob("*.py")):
        ours = {m for m in imported_modules(path) if m == "mhd" or m.startswith("mhd.")}
        assert all(m == "mhd" or m.startswith(allowed) for m in ours), (path.name, sorted(ours))


def test_the_remote_client_imports_the_standard_library_only() -> None:
    import sys

    top = {m.split(".")[0] for m in imported_modules(ROOT / "mhd" / "ctl" / "client.py")}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top
