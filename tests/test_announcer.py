"""The daemon's fleet step (`mhd.announcer`) on fake kernel edges: routes follow health, first
verdicts, drains and restarts; sysctls are set and repaired; digests are published.

The edges themselves (rtnetlink, /proc) are tested against a real kernel in tests/vm."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeDaemon, FakeRoutes, health, reload_through_the_main_loop

from mhd import announcer
from mhd.announcer import Announcer
from mhd.config.validate import loads
from mhd.health import Health
from mhd.model import MH_PORT, SVC_F_HASHED
from mhd.routes import ROUTE_TYPE, Route

CONFIG = """
announce: {table: 100, hold-down: 30s}
kernel: {sysctl: {net.ipv4.vs.conntrack: 1, net.ipv4.vs.sloppy_sctp: null}}
services:
  - name: web
    address: 203.0.113.10
    port: 80
    check: {type: tcp}
    servers: [10.0.0.1, 10.0.0.2]
  - name: marked
    fwmark: 7
    announce: [203.0.113.20]
    check: {type: none}
    servers: ["10.0.0.1:0"]
"""
VIP = ipaddress.ip_network("203.0.113.10/32")
MARKED = ipaddress.ip_network("203.0.113.20/32")
FOREIGN = Route(ipaddress.ip_network("198.51.100.0/24"), 100, 4, ROUTE_TYPE)  # proto static: not mhd's
PROC = {"sloppy_tcp": 0, "expire_nodest_conn": 0, "expire_quiescent_template": 0, "conntrack": 0}


def director(tmp_path: Path, kernel: FakeRoutes, *, verdicts: bool = True) -> FakeDaemon:
    proc = tmp_path / "proc"
    if not proc.exists():
        proc.mkdir()
        for name, value in PROC.items():
            (proc / name).write_text(f"{value}\n")
    d = FakeDaemon(tmp_path, CONFIG)
    if not verdicts:  # a restart: servers in the kernel start up, but no probe has run yet
        d.set_health("web", "10.0.0.1:80", Health("up"))
    assert d.state is not None
    d.fleet = Announcer(d.state, open_routes=lambda: kernel, sysctl_root=proc)
    return d


def step(d: FakeDaemon) -> None:
    d.refresh()
    asyncio.run(d.step_fleet())


def mine(kernel: FakeRoutes) -> set[object]:
    return kernel.announced(100, 250)


def test_routes_follow_first_verdicts_health_and_restarts(tmp_path: Path) -> None:
    kernel = FakeRoutes([FOREIGN])
    d = director(tmp_path, kernel, verdicts=False)
    step(d)
    assert mine(kernel) == {MARKED}  # web waits for its first verdicts; a `none` check needs none
    d.set_health("web", "10.0.0.1:80", health("up"))
    step(d)
    assert mine(kernel) == {VIP, MARKED}
    writes = kernel.writes
    step(d)
    assert kernel.writes == writes  # level-triggered: nothing changed, nothing written

    for server in ("10.0.0.1:80", "10.0.0.2:80"):
        d.set_health("web", server, health("down"))
    step(d)  # min-healthy 1: both down is panic, announced by default
    assert mine(kernel) == {VIP, MARKED}
    assert d.fleet is not None and d.fleet.decision is not None

    # A restart with nothing changed: the routes found are kept through the pending verdicts.
    writes = kernel.writes
    again = director(tmp_path, kernel, verdicts=False)
    step(again)
    assert kernel.writes == writes and mine(kernel) == {VIP, MARKED}
    assert FOREIGN in kernel.table


def test_a_withdrawal_is_immediate_and_the_return_waits_the_hold_down(tmp_path: Path) -> None:
    kernel = FakeRoutes()
    d = director(tmp_path, kernel)
    step(d)
    d.absent = {"web"}  # nothing of web in IPVS: down
    step(d)
    assert mine(kernel) == {MARKED}
    d.absent = set()
    step(d)
    assert mine(kernel) == {MARKED}
    assert d.fleet is not None and d.fleet.recheck_at is not None
    assert "hold-down" in d.fleet.decision.reasons[VIP.network_address]  # type: ignore[union-attr]


def test_a_drain_withdraws_everything_and_survives_a_restart(tmp_path: Path) -> None:
    kernel = FakeRoutes([FOREIGN])
    d = director(tmp_path, kernel)
    step(d)
    d.set_drained(True)
    assert d.fleet_step_due(time.time()) and "drained" in d.status_line()
    step(d)
    assert mine(kernel) == set() and FOREIGN in kernel.table
    assert d.fleet is not None and d.fleet.withdrawn()

    again = director(tmp_path, kernel)
    assert again.fleet is not None and again.fleet.drained
    step(again)
    assert mine(kernel) == set()
    again.set_drained(False)
    step(again)
    assert mine(kernel) == {VIP, MARKED}  # an undrain does not wait the hold-down


def test_sysctls_are_set_and_drift_is_repaired(tmp_path: Path) -> None:
    d = director(tmp_path, FakeRoutes())
    step(d)
    proc = tmp_path / "proc"
    want = {"sloppy_tcp": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1, "conntrack": 1}
    assert {name: int((proc / name).read_text()) for name in PROC} == want
    assert not (proc / "sloppy_sctp").exists()  # null: left to the kernel (and absent here)
    assert d.fleet is not None and d.fleet.sysctls.repairs == 0
    (proc / "sloppy_tcp").write_text("0\n")
    step(d)
    assert int((proc / "sloppy_tcp").read_text()) == 1 and d.fleet.sysctls.repairs == 1
    assert d.fleet.sysctls.current == want


def test_each_live_mh_service_gets_a_table_digest(tmp_path: Path) -> None:
    d = director(tmp_path, FakeRoutes())
    step(d)
    assert d.fleet is not None and set(d.fleet.tables) == {"web", "marked"}
    digest = d.fleet.tables["web"]["digest"]
    assert len(digest) == 16
    d.set_health("web", "10.0.0.2:80", health("down"))
    step(d)
    assert d.fleet.tables["web"]["digest"] != digest


def test_a_dump_s_hashed_flag_does_not_rebuild_the_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 15): the kernel reports its own HASHED bit on every service, the start's
    model of the kernel does not carry it, and the first whole pass rebuilt every table (58 s at
    1,000 services under emulation, competing with the loop for the interpreter)."""
    d = director(tmp_path, FakeRoutes())
    step(d)
    assert d.fleet is not None and d.config is not None
    built: list[set[str]] = []
    real = announcer._tables
    monkeypatch.setattr(announcer, "_tables", lambda stale, model: built.append(set(stale)) or real(stale, model))
    model = next(iter(d.fleet._table_inputs.values()))[0][2]
    dumped = {k: replace(s, flags=s.flags | SVC_F_HASHED) for k, s in d.observed.items()}
    asyncio.run(d.fleet.refresh_tables(d.config, dumped, model))
    assert built == []
    flipped = {k: replace(s, flags=s.flags ^ MH_PORT) for k, s in d.observed.items()}
    asyncio.run(d.fleet.refresh_tables(d.config, flipped, model))
    assert built == [{"web", "marked"}]  # a flag the digest reads does rebuild


def test_a_reload_that_changes_only_the_sysctls_applies_them(tmp_path: Path) -> None:
    d = director(tmp_path, FakeRoutes())
    step(d)
    proc = tmp_path / "proc"
    assert int((proc / "conntrack").read_text()) == 1
    Path(d.config_path).write_text(CONFIG.replace("net.ipv4.vs.conntrack: 1", "net.ipv4.vs.conntrack: 0"))
    assert asyncio.run(reload_through_the_main_loop(d)).ok  # no pass is due: the reload asks for a step
    assert int((proc / "conntrack").read_text()) == 0


def test_a_new_table_takes_the_routes_and_the_old_one_is_emptied(tmp_path: Path) -> None:
    kernel = FakeRoutes([FOREIGN])
    d = director(tmp_path, kernel)
    step(d)
    d.config = loads(CONFIG.replace("table: 100", "table: 101"), d.config_path)
    step(d)
    assert mine(kernel) == set() and FOREIGN in kernel.table
    assert kernel.announced(101, 250) == {VIP, MARKED}


class SlowRoutes(FakeRoutes):
    """A route edge that records which thread uses it, and whose dump takes a while: a step is in
    flight when the daemon stops."""

    def __init__(self) -> None:
        super().__init__([FOREIGN])
        self.calls: list[tuple[str, int, float]] = []

    def routes(self, table: int) -> list[object]:
        import threading
        import time

        self.calls.append(("routes", threading.get_ident(), time.monotonic()))
        time.sleep(0.3)
        return super().routes(table)

    def close(self) -> None:
        import threading
        import time

        self.calls.append(("close", threading.get_ident(), time.monotonic()))


def test_a_stop_during_a_step_closes_the_route_socket_after_it_in_its_own_thread(tmp_path: Path) -> None:
    """pyroute2 0.9's IPRoute hangs the thread using it when another thread closes it, and that
    thread then keeps the process from exiting (a CI run saw `mhd` ignore SIGTERM for 60 s)."""
    kernel = SlowRoutes()
    d = director(tmp_path, kernel)
    d.refresh()
    assert d.fleet is not None
    fleet = d.fleet

    async def stop_mid_step() -> None:
        task = asyncio.create_task(d.step_fleet())
        await asyncio.sleep(0.1)  # the step's thread is in the kernel's dump now
        task.cancel()  # what SIGTERM does to the daemon's run
        await asyncio.gather(task, return_exceptions=True)
        await fleet.aclose()

    asyncio.run(stop_mid_step())
    assert kernel.calls[-1][0] == "close"
    used = {ident for what, ident, _ in kernel.calls}
    assert len(used) == 1  # opened, used and closed by the same thread
    last_dump = max(t for what, _, t in kernel.calls if what == "routes")
    assert kernel.calls[-1][2] >= last_dump + 0.3 - 0.05  # after the step in flight ended
