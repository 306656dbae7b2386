"""The fleet routes and fields of the API: drain and undrain (persisted, authorised like every POST),
the fleet section of the status, the table digests, and the fleet metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDaemon
from servers import aio
from test_api import get_json, make_daemon, post_json, served

from mhd.api.metrics import Metrics

CONFIG = """
api: {listen: '', socket: ''}
announce: {table: 100}
services:
  - name: web
    address: 203.0.113.15
    port: 80
    mh-port: true
    check: {type: none}
    servers: ["10.0.0.1:80", "10.0.0.2:80"]
"""


async def announced(tmp_path: Path) -> FakeDaemon:
    d = FakeDaemon(tmp_path, CONFIG)
    await d.step_fleet()
    return d


@aio
async def test_drain_and_undrain_persist_and_show_in_status(tmp_path: Path) -> None:
    d = await announced(tmp_path)
    async with served(d, trusted=True) as client:
        fleet = (await get_json(client, "/v1/status"))["fleet"]
        assert fleet["vips"] == [
            {
                "vip": "203.0.113.15",
                "announced": True,
                "reason": "announceable",
                "since": fleet["vips"][0]["since"],
            }
        ]
        assert fleet["announce"]["table"] == 100 and fleet["announce"]["protocol"] == 250
        assert not fleet["drained"] and not fleet["withdrawn"]
        assert await post_json(client, "/v1/drain") == {"drained": True, "withdrawn": False}
        await d.step_fleet()
        status = await get_json(client, "/v1/status")
        assert status["fleet"]["drained"] and status["fleet"]["withdrawn"]
        assert (
            status["fleet"]["vips"][0]["announced"] is False
            and status["fleet"]["vips"][0]["reason"] == "drained"
        )
        assert "drained" in status["daemon"]["summary"]
    assert json.loads((tmp_path / "state" / "drain.json").read_text()) == {"drained": True}
    async with served(d, trusted=True) as client:
        assert await post_json(client, "/v1/undrain") == {"drained": False, "withdrawn": True}
    assert json.loads((tmp_path / "state" / "drain.json").read_text()) == {"drained": False}


@aio
async def test_drain_over_tcp_needs_the_token(tmp_path: Path) -> None:
    d = await announced(tmp_path)
    async with served(d, trusted=False) as client:
        body = await post_json(client, "/v1/drain", 403)
        assert "api.token-file" in body["error"]
    assert d.fleet is not None and not d.fleet.drained


@aio
async def test_every_live_mh_service_has_a_digest_in_status_tables_and_metrics(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    await d.step_fleet()
    assert d.fleet is not None
    async with served(d, trusted=False) as client:
        services = {s["name"]: s for s in (await get_json(client, "/v1/status"))["services"]}
        tables = (await get_json(client, "/v1/tables"))["services"]
    assert services["empty"]["table_digest"] is None  # not in the kernel
    assert set(tables) == {"web", "dns", "v6"}
    for name, doc in tables.items():
        assert services[name]["table_digest"] == doc["digest"] and len(doc["digest"]) == 16
        assert doc["dests"] and doc["variant"] == "intree"
    text = Metrics(d).render().decode()
    assert f'mhd_service_table_info{{digest="{tables["web"]["digest"]}",service="web"}} 1' in text
    assert "\nmhd_drained 0\n" in text


def test_the_vip_metric_follows_the_decision(tmp_path: Path) -> None:
    d = asyncio.run(announced(tmp_path))
    text = Metrics(d).render().decode()
    assert 'mhd_vip_announced{vip="203.0.113.15"} 1' in text
    d.set_drained(True)
    asyncio.run(d.step_fleet())
    text = Metrics(d).render().decode()
    assert 'mhd_vip_announced{vip="203.0.113.15"} 0' in text and "\nmhd_drained 1\n" in text


def test_a_pass_does_not_wait_for_the_table_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests are built in the background: under emulation the first one (importing the Maglev
    model) held a server's removal 10 s, and 1,000 of them a daemon's `ready` 2 minutes."""
    import threading

    from mhd import announcer
    from mhd.daemon import Daemon

    release = threading.Event()
    real = announcer._tables

    def held(stale: Any, model: Any) -> Any:
        assert release.wait(timeout=30)
        return real(stale, model)

    monkeypatch.setattr(announcer, "_tables", held)
    d = FakeDaemon(tmp_path, CONFIG)
    assert d.fleet is not None
    fleet = d.fleet

    async def scenario() -> None:
        await Daemon.step_fleet(d)  # the daemon's own step, not the fake's (which waits for them)
        assert fleet.tables == {}  # returned while the digests are still being built
        release.set()
        await fleet.tables_settled()
        assert set(fleet.tables) == {"web"}

    asyncio.run(scenario())
