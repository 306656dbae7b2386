"""The status page, `GET /`: the status document as HTML for a person at a browser.

Rendered by the daemon, no JavaScript: the page reloads itself with a meta refresh. `render` is pure
(the status document, the Maglev shares and the time in, a page out) and escapes every value, since
service names, server strings and check details come from the config and from the servers probed;
the Content-Security-Policy forbids scripts besides, so a missed escape could not run one.

The shares come from the metrics' `SlotShares` cache (built off the loop, once per kernel list):
a request for a list not built yet waits for the worker in a thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import time
from html import escape
from typing import Any

from aiohttp import web

from mhd.api import model
from mhd.api.metrics import SlotShares
from mhd.api.status import status
from mhd.api.view import DaemonView

REFRESH = 5  # seconds between reloads of the page
CSP = "default-src 'none'; style-src 'unsafe-inline'"
Shares = dict[str, dict[str, float]]  # service name -> server name -> share of its Maglev table

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}
h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#666;margin:0}
table{border-collapse:collapse;background:#fff;table-layout:fixed;width:100%;max-width:100em}
th:nth-child(1){width:13em}th:nth-child(2),th:nth-child(5),th:nth-child(6){width:5em}
th:nth-child(3){width:10.5em}th:nth-child(4){width:10.5em}th:nth-child(7){width:15em}
th,td{text-align:left;padding:.25em .8em;border-bottom:1px solid #e4e4e4;white-space:nowrap;overflow:hidden}
th{font-weight:600;color:#555;font-size:.9em}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
td.detail{white-space:normal;max-width:24em;color:#555;overflow-wrap:anywhere}
.state{display:inline-block;padding:0 .6em;border-radius:.8em;color:#fff;font-size:.9em}
.ok,.up{background:#2e7d32}.degraded{background:#ef6c00}.panic{background:#c62828}
.down{background:#c62828}.unknown{background:#757575}.disabled{background:#546e7a}
.bar{display:inline-block;width:9em;height:.8em;background:#e8eaf6;vertical-align:middle;margin-right:.5em}
.bar span{display:block;height:100%;background:#3f51b5}
"""


class Page:
    """The `GET /` handler of one listener; reads only, so it needs no token (like /v1/status)."""

    def __init__(self, daemon: DaemonView, slots: SlotShares) -> None:
        self.daemon = daemon
        self.slots = slots

    async def get(self, request: web.Request) -> web.StreamResponse:
        doc = status(self.daemon)
        shares = await self.shares()
        return web.Response(
            text=render(doc, shares, time.time()),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
        )

    async def shares(self) -> Shares:
        """Each mh service's table shares by server name, from the cache, waiting (off the loop)
        for the lists it has not built yet; {} for a service without a model or without servers."""
        view, config = self.daemon, self.daemon.config
        if config is None or view.kernel is None or model.unavailable():
            return {}
        params = model.parameters(view)
        live = [(svc.name, view.observed.get(svc.key)) for svc in config.services if svc.scheduler == "mh"]
        found = {name: self.slots.shares(obs, params) for name, obs in live if obs is not None}
        if any(not s for s in found.values()):
            await asyncio.to_thread(self.slots.wait)
            found = {name: self.slots.shares(obs, params) for name, obs in live if obs is not None}
        return {name: {str(k): v for k, v in s.items()} for name, s in found.items()}


def render(doc: dict[str, Any], shares: Shares, now: float) -> str:
    """The whole page for a `GET /v1/status` document."""
    daemon = doc["daemon"]
    reload = daemon["last_reload"]
    reloaded = (
        "never reloaded" if reload is None else ("last reload ok" if reload["ok"] else "LAST RELOAD FAILED")
    )
    services = "".join(_service(svc, shares.get(svc["name"], {}), now) for svc in doc["services"])
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv=refresh content="{REFRESH}">'
        '<meta name=viewport content="width=device-width">'
        f"<title>mhd {_e(daemon['version'])}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>mhd {_e(daemon['version'])}</h1>\n"
        f"<p class=meta id=summary>{_e(daemon['summary'])}</p>\n"
        f"<p class=meta>{_e(daemon['config']['path'])} &middot; {reloaded} &middot; "
        f"{_e(daemon['reconciles'])} passes &middot; refreshed every {REFRESH}s, "
        f"at {time.strftime('%H:%M:%S', time.localtime(now))}</p>\n"
        f"{services or '<p>No services configured.</p>'}\n</body></html>\n"
    )


def _service(svc: dict[str, Any], shares: dict[str, float], now: float) -> str:
    state = svc["state"]
    head = (
        f'<section class=service data-service="{_e(svc["name"])}" data-state="{_e(state)}">'
        f'<h2><span class=name>{_e(svc["name"])}</span> <span class="state {_e(state)}">{_e(state)}</span> '
        f"<small class=meta>{_e(svc['virtual'])} &middot; {_e(svc['scheduler'])} &middot; "
        f"{svc['servers_up']}/{svc['servers_total']} up, {svc['servers_in_kernel']} in IPVS</small></h2>\n"
    )
    rows = "".join(_server(s, shares.get(s["name"]), now) for s in svc["servers"])
    return (
        f"{head}<table><tr><th>server</th><th class=num>weight</th><th>health</th><th>last check</th>"
        "<th class=num>active</th><th class=num>inactive</th><th>table share</th><th>detail</th></tr>\n"
        f"{rows}</table></section>\n"
    )


def _server(server: dict[str, Any], share: float | None, now: float) -> str:
    health = "disabled" if server["disabled"] else server["health"]
    last = server["last_check"]
    stats = server["stats"] or {}
    checked = (
        "never" if last is None else f"{max(0.0, now - last['at']):.0f}s ago, {last['latency'] * 1000:.1f} ms"
    )
    detail = "" if last is None else last["detail"]
    in_kernel = "" if server["in_kernel"] else " (not in IPVS)"
    return (
        f'<tr class=server data-server="{_e(server["name"])}" data-health="{_e(health)}">'
        f"<td>{_e(server['name'])}</td><td class=num>{_e(server['weight'])}</td>"
        f'<td><span class="state {_e(health)}">{_e(health)}</span>{in_kernel}</td>'
        f"<td>{_e(checked)}</td>"
        f"<td class=num>{_e(stats.get('active_conns', ''))}</td>"
        f"<td class=num>{_e(stats.get('inactive_conns', ''))}</td>"
        f"<td>{_bar(share)}</td><td class=detail>{_e(detail)}</td></tr>\n"
    )


def _bar(share: float | None) -> str:
    """The server's share of the table as a bar 0-100% wide (no bar for no table)."""
    if share is None:
        return "&ndash;"
    percent = min(max(share * 100, 0.0), 100.0)
    return f'<span class=bar data-share="{share:.6f}"><span style="width:{percent:.2f}%"></span></span>{percent:.1f}%'


def _e(value: object) -> str:
    return escape(str(value), quote=True)
