"""The status page (`GET /`): rendered from the status document, escaped, and shown by a real browser.

The browser test drives Debian's headless `chromium` through `chromedriver`'s WebDriver HTTP protocol
with the standard library only, against the real API of a FakeDaemon served on loopback; it asserts on
the DOM the browser built and on the bars as laid out. `MHD_SCREENSHOT=docs/status-page.png` also
saves the screenshot the README shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes import FakeDaemon
from servers import closed_port

from mhd.api.handlers import Api
from mhd.api.metrics import Metrics
from mhd.api.page import render
from mhd.api.status import status
from mhd.health import CheckResult, Health
from mhd.model import Stats

# web: weighted, all up (ok); api: one server down (degraded); dns: not in the kernel (down).
CONFIG = """
api: {listen: '', socket: ''}
defaults:
  check: {type: tcp, interval: 2s, timeout: 1s}
services:
  - name: web
    address: 203.0.113.15
    port: 80
    servers: [{address: 10.0.0.1, port: 80, weight: 2}, "10.0.0.2:80", "10.0.0.3:80"]
  - {name: api, address: 203.0.113.16, port: 443, servers: ["10.0.1.1:443", "10.0.1.2:443"]}
  - {name: dns, address: 203.0.113.53, port: 53, protocol: udp, scheduler: wrr, servers: ["10.0.2.1:53"]}
"""
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def make_daemon(tmp_path: Path) -> FakeDaemon:
    d = FakeDaemon(
        tmp_path,
        CONFIG,
        down={("api", "10.0.1.2:443")},
        stats={
            "10.0.0.1:80": Stats(active_conns=42, inactive_conns=7),
            "10.0.1.1:443": Stats(active_conns=3),
        },
        absent={"dns"},
    )
    failed = CheckResult(False, 1.0, HOSTILE, time.time())
    d.set_health("api", "10.0.1.2:443", Health("down", 0, 3, 1, failed))
    d.config_path, d.reconciles = "/etc/mhd.yaml", 1234  # as the screenshot shows them
    return d


# --- rendering ---------------------------------------------------------------------------------------


def test_every_value_is_escaped() -> None:
    """Whatever a name, a path or a check's detail holds is text on the page, never markup."""
    server = {
        "name": HOSTILE, "weight": 1, "health": "up", "disabled": False, "in_kernel": True,
        "last_check": {"at": 0.0, "ok": False, "latency": 0.5, "detail": HOSTILE}, "stats": None,
    }  # fmt: skip
    svc = {
        "name": HOSTILE, "state": '"><b>', "virtual": HOSTILE, "scheduler": "mh",
        "servers_up": 1, "servers_total": 1, "servers_in_kernel": 1, "servers": [server],
    }  # fmt: skip
    doc = {
        "daemon": {
            "version": HOSTILE, "summary": HOSTILE, "config": {"path": HOSTILE},
            "last_reload": None, "reconciles": 0,
        },
        "services": [svc],
    }  # fmt: skip
    page = render(doc, {HOSTILE: {HOSTILE: 0.5}}, 10.0)
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 6
    assert 'data-share="0.500000"' in page and "width:50.00%" in page


async def _get(tmp_path: Path, path: str) -> tuple[int, dict[str, str], str]:
    from aiohttp.test_utils import TestClient, TestServer

    d = make_daemon(tmp_path)
    async with TestClient(TestServer(Api(d, Metrics(d), trusted=False).app())) as client:
        response = await client.get(path)
        return response.status, dict(response.headers), await response.text()


def test_the_page_needs_no_token_and_forbids_scripts(tmp_path: Path) -> None:
    code, headers, page = asyncio.run(_get(tmp_path, "/"))
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert '<meta http-equiv=refresh content="5">' in page
    assert "<script" not in page and "&lt;script&gt;" in page  # the hostile check detail, as text
    for name in ("web", "api", "dns"):
        assert f'data-service="{name}"' in page


# --- in a real browser ---------------------------------------------------------------------------------

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# chromedriver is on loopback: never through an http_proxy (Debian's package builds set one that
# refuses every connection).
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def serving(d: FakeDaemon) -> Iterator[str]:
    """The daemon's TCP API app on a loopback port, its loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(Api(d, Metrics(d), trusted=False).app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


class WebDriver:
    """The few W3C WebDriver commands the test needs, over chromedriver's HTTP API."""

    def __init__(self, base: str) -> None:
        self.base = base
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-proxy-server", "--window-size=1280,900"],
        }}  # fmt: skip
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, method=method)
        request.add_header("Content-Type", "application/json")
        with LOCAL.open(request, timeout=60) as response:
            return json.load(response)["value"]

    def do(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str, within: str | None = None) -> list[str]:
        scope = f"/element/{within}" if within else ""
        found = self.do("POST", f"{scope}/elements", {"using": "css selector", "value": css})
        return [next(iter(e.values())) for e in found]

    def attr(self, element: str, name: str) -> str:
        value: str = self.do("GET", f"/element/{element}/attribute/{name}")
        return value

    def text(self, element: str) -> str:
        value: str = self.do("GET", f"/element/{element}/text")
        return value

    def width(self, element: str) -> float:
        return float(self.do("GET", f"/element/{element}/rect")["width"])


@contextlib.contextmanager
def browser() -> Iterator[WebDriver]:
    port = closed_port()
    driver = subprocess.Popen(
        [str(DRIVER), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with contextlib.suppress(OSError):
                LOCAL.open(base + "/status", timeout=5).close()
                break
            time.sleep(0.1)
        wd = WebDriver(base)
        try:
            yield wd
        finally:
            wd.do("DELETE", "")
    finally:
        driver.terminate()
        driver.wait(10)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs chromium and chromium-driver")
def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    doc = status(d)
    with serving(d) as url, browser() as wd:
        wd.do("POST", "/url", {"url": url})
        assert wd.do("GET", "/title").startswith("mhd ")
        sections = wd.find("section.service")
        states = {wd.attr(s, "data-service"): wd.attr(s, "data-state") for s in sections}
        assert states == {svc["name"]: svc["state"] for svc in doc["services"]}
        assert states == {"web": "ok", "api": "degraded", "dns": "down"}
        web_section = sections[0]
        assert wd.text(wd.find("h2 .state", web_section)[0]) == "ok"
        rows = wd.find("tr.server", web_section)
        assert [wd.attr(r, "data-server") for r in rows] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        assert "42" in wd.text(rows[0])  # active connections of 10.0.0.1
        shares = []
        for row in rows:
            (bar,) = wd.find(".bar", row)
            share = float(wd.attr(bar, "data-share"))
            shares.append(share)
            (fill,) = wd.find(".bar span", row)
            assert wd.width(fill) == pytest.approx(share * wd.width(bar), abs=1.0)  # as laid out
        assert sum(shares) == pytest.approx(1.0)
        assert shares[0] == pytest.approx(0.5, abs=0.02) and shares[1] == pytest.approx(0.25, abs=0.02)
        api_rows = wd.find("tr.server", sections[1])
        assert [wd.attr(r, "data-health") for r in api_rows] == ["up", "down"]
        assert HOSTILE in wd.text(api_rows[1])  # the check's detail shown as text, not run
        assert wd.find("img") == [] and wd.find("script") == []
        assert wd.find(".bar", sections[2]) == []  # not in the kernel: no table
        png = base64.b64decode(wd.do("GET", "/screenshot"))
        assert png.startswith(b"\x89PNG")
        if os.environ.get("MHD_SCREENSHOT"):
            Path(os.environ["MHD_SCREENSHOT"]).write_bytes(png)
