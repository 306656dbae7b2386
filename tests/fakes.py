"""A `Daemon` whose state is filled in by hand, for the host tests of what reads that state (the API,
the metrics): no IPVS, no probes, no root.

tests/ is not a package: pytest's default import mode puts this folder on `sys.path`, so the test
modules `from fakes import ...`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import threading
import time
import types
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest

from mhd.announcer import Announcer
from mhd.config.validate import load
from mhd.daemon import Daemon
from mhd.health import CheckResult, Health, State
from mhd.kernel import KernelInfo
from mhd.membership import desired_state
from mhd.model import DestKey, Service, ServiceKey, Stats, parse_ip
from mhd.planner import Op, apply_ops
from mhd.reconcile import Outcome
from mhd.reports import ReloadResult
from mhd.state import StateDir


def key(text: str) -> DestKey:
    """ "10.0.0.1:80" or "[2001:db8::1]:443" as the kernel keys it."""
    host, _, port = text.rpartition(":")
    return DestKey(parse_ip(host.strip("[]")), int(port))


def health(state: State, transitions: int | None = None) -> Health:
    """An up server with 5 successes in a row, or a down one after 3 failures (1 transition)."""
    now = time.time()
    if state == "up":
        return Health("up", 5, 0, transitions or 0, CheckResult(True, 0.0012, "ok", now))
    failed = CheckResult(False, 1.0, "timeout after 1s", now)
    return Health(state, 0, 3, 1 if transitions is None else transitions, failed)


class FakeDaemon(Daemon):
    """A daemon on `text` (a config file written to tmp_path) after one pass, as if the servers in
    `down` had failed their checks; the fake kernel holds every service except those in `absent`,
    with the counters `stats` gives each server (by name, e.g. "10.0.0.1:80"); `routes` is the route
    table its fleet step writes."""

    def __init__(
        self,
        tmp_path: Path,
        text: str,
        *,
        down: Collection[tuple[str, str]] = (),
        stats: Mapping[str, Stats] | None = None,
        absent: Collection[str] = (),
    ) -> None:
        path = tmp_path / "mhd.yaml"
        path.write_text(text)
        super().__init__(str(path), str(tmp_path / "state"))
        self.kernel_stats = dict(stats or {})
        self.absent = set(absent)
        self.kernel = KernelInfo("6.1.0-test", True, "intree", 12, "default")
        self.state = StateDir(tmp_path / "state")
        self.adopt(load(path))
        self.routes = FakeRoutes()
        self.fleet = Announcer(self.state, open_routes=lambda: self.routes, sysctl_root=tmp_path / "no-proc")
        self.last_reload = ReloadResult(True, time.time(), [], self.config.sha256 if self.config else "")
        for service, server in self.targets:
            self.set_health(service, str(server), health("down" if (service, str(server)) in down else "up"))
        self.refresh()

    async def step_fleet(self) -> None:
        """The daemon's step, then its digests (built in the background by the daemon): a test reads
        them right after, and `asyncio.run` would cancel the background task at its end."""
        await super().step_fleet()
        if self.fleet is not None:
            await self.fleet.tables_settled()

    def set_health(self, service: str, server: str, value: Health) -> None:
        target = self.targets[(service, key(server))]
        self.prober._where[target].health = value

    def refresh(self) -> None:
        """What a reconcile pass would leave behind, computed from health and drains."""
        assert self.config is not None and self.state is not None
        desired, members = desired_state(self.config, self.healthy, self.state.disabled())
        observed: dict[Any, Service] = {}
        for k, want in desired.items():
            if want.name in self.absent:
                continue
            dests = tuple(
                dataclasses.replace(d, stats=self.kernel_stats.get(str(d.key), Stats()))
                for d in want.service.dests
            )
            observed[k] = dataclasses.replace(want.service, dests=dests)
        self.observed = observed
        self.outcome = Outcome(observed, [], [], [], members)


async def reload_through_the_main_loop(d: Daemon) -> ReloadResult:
    """Reload as SIGHUP does: a running main loop reloads and answers once the reload's pass and
    fleet step are done. The loop is cancelled afterwards, not stopped: a stop would end it for good."""
    main = asyncio.create_task(d.main_loop())
    try:
        return await asyncio.wait_for(d.request_reload(), timeout=60)  # a dead loop fails, not hangs
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)


class ModelKernel:
    """IPVS as the planner models it (`mhd.planner.apply_ops`) behind the calls a reconcile pass makes
    (`mhd.ipvs.IpvsClient`): for the daemon's bookkeeping on the host; the real client runs against
    the kernel in tests/vm. `asked` lists, in order, the services scoped passes read one by one."""

    def __init__(self) -> None:
        self.table: dict[ServiceKey, Service] = {}
        self.asked: list[ServiceKey] = []
        self.writes = 0  # as IpvsClient.writes: operations sent

    async def services(self) -> dict[ServiceKey, Service]:
        return dict(self.table)

    async def service(self, key: ServiceKey) -> Service | None:
        self.asked.append(key)
        return self.table.get(key)

    async def apply(self, ops: list[Op]) -> list[Any]:
        self.writes += len(ops)
        self.table = apply_ops(self.table, ops)
        return []


def spy_imports(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[tuple[str, bool]]:
    """Record the `importlib.import_module` calls `module` makes: [(name, on the main thread?)]."""
    seen: list[tuple[str, bool]] = []

    def spy(name: str) -> Any:
        seen.append((name, threading.current_thread() is threading.main_thread()))
        return importlib.import_module(name)

    monkeypatch.setattr(module, "importlib", types.SimpleNamespace(import_module=spy))
    return seen


class FakeRoutes:
    """The rtnetlink edge (`mhd.routes.Kernel`) over an in-memory table: for the host tests of the
    daemon's wiring (the real one runs against the kernel in tests/vm/test_routes.py)."""

    def __init__(self, routes: list[Any] | None = None) -> None:
        self.table: list[Any] = list(routes or [])  # mhd.routes.Route
        self.writes = 0

    def routes(self, table: int) -> list[Any]:
        return [r for r in self.table if r.table == table]

    def announced(self, table: int, protocol: int) -> set[Any]:
        return {r.prefix for r in self.routes(table) if r.protocol == protocol}

    def link(self, name: str) -> None:
        return None

    def apply_routes(self, ops: Any, table: int, protocol: int) -> list[Any]:
        from mhd.routes import ROUTE_TYPE, Route

        for op in ops:
            self.writes += 1
            route = Route(op.prefix, table, protocol, ROUTE_TYPE)
            if op.kind == "add-route":
                self.table.append(route)
            else:
                self.table = [r for r in self.table if (r.prefix, r.table, r.protocol) != route[:3]]
        return []

    def close(self) -> None:
        pass
