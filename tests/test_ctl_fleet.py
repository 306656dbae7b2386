"""mhctl drain [--wait] / undrain / compare, and the fleet lines of mhctl status, against real API
servers on unix sockets (the daemon's state filled in by hand: tests/fakes.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fakes import FakeDaemon
from test_client import mhctl, running

CONFIG = """
api: {{listen: '', socket: {socket}}}
announce: {{table: 100}}
services:
  - name: web
    address: 203.0.113.15
    port: 80
    mh-port: true
    check: {{type: none}}
    servers: [{servers}]
"""
SERVERS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"]


def director(tmp_path: Path, servers: list[str] = SERVERS) -> tuple[FakeDaemon, str]:
    tmp_path.mkdir(exist_ok=True)
    sock = str(tmp_path / "mhd.sock")
    d = FakeDaemon(tmp_path, CONFIG.format(socket=sock, servers=", ".join(f'"{s}"' for s in servers)))
    asyncio.run(d.step_fleet())
    return d, sock


def test_drain_wait_returns_once_every_route_is_withdrawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, sock = director(tmp_path)
    assert d.routes.announced(100, 250)
    with running(d):
        code, out, _ = mhctl(capsys, "drain", "--wait", "--socket", sock)
        assert (code, out) == (0, "drained\nevery route withdrawn\n")
        assert d.routes.announced(100, 250) == set()
        code, out, _ = mhctl(capsys, "status", "--socket", sock)
        assert code == 0 and "fleet   DRAINED, table 100" in out
        assert "vip 203.0.113.15  withdrawn  drained" in out
        code, out, _ = mhctl(capsys, "undrain", "--socket", sock)
        assert (code, out) == (0, "undrained\n")
    assert d.fleet is not None and not d.fleet.drained


def test_compare_reports_matching_and_differing_directors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, sock_a = director(tmp_path / "a")
    b, sock_b = director(tmp_path / "b")
    c, sock_c = director(tmp_path / "c", list(reversed(SERVERS)))  # another kernel order
    with running(a), running(b):
        code, out, _ = mhctl(capsys, "compare", sock_a, sock_b)
        assert code == 0 and out.startswith("web: match (") and "on all 2" in out
        code, out, _ = mhctl(capsys, "status", "--socket", sock_a)
        assert f"table {a.fleet.tables['web']['digest']}" in out  # type: ignore[union-attr]
        with running(c):
            code, out, _ = mhctl(capsys, "compare", "--json", sock_a, sock_b, sock_c)
    assert code == 1
    (web,) = json.loads(out)
    assert web["service"] == "web" and not web["match"]
    assert {(p["a"], p["b"]) for p in web["pairs"]} == {(sock_a, sock_c), (sock_b, sock_c)}
    assert all(0 < p["differing_share"] < 1 for p in web["pairs"])
