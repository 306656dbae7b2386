"""The daemon's fleet duties, run after every pass: announce routes, keep the IPVS sysctls, publish
table digests, and remember whether an operator drained this director.

Each step is level-triggered like a reconcile pass: the services' states (`mhd.membership`) and
first verdicts (`mhd.health.has_verdict`) go into the pure policy (`mhd.announce.decide`), and
`mhd.routes.sync` makes the announce table equal to its answer after a fresh dump, so a restart
with nothing changed writes no route. The sysctls are read and repaired the same way
(`mhd.sysctl.sync`). The drain flag is a small JSON file in the state dir (`drain.json`), read at
start: a drained director that restarts stays drained.

The route edge is synchronous (pyroute2's IPRoute): it runs in one thread of its own, which opens,
uses and closes the socket. pyroute2 0.9's IPRoute hangs a thread that is using it for ever when
another thread closes it, and that thread then holds the process at exit: a SIGTERM that cancels a
step must not close the socket under it, so the close queues behind the step in the same thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhd import routes, sysctl
from mhd.announce import Decision, Options, Record, ServiceHealth, by_vip, decide, prefix, seed, service_vips
from mhd.config.records import AnnounceConfig, Config
from mhd.health import Health, has_verdict
from mhd.maglev.params import Model
from mhd.membership import Membership, service_state
from mhd.model import MH_FALLBACK, MH_PORT, DestKey, IPAddress, Service, ServiceKey
from mhd.state import StateDir
from mhd.sysctl_policy import PREFIX, Change, effective

log = logging.getLogger("mhd.fleet")

DRAIN_FILE = "drain.json"
CLOSE_TIMEOUT = 5.0  # seconds a stop waits for a route step in flight
DRAIN_FIX = (
    'it records whether an operator drained this director: write {"drained": false} or remove it to undrain'
)

HealthOf = Callable[[str, DestKey], Health | None]


def _drain_from_json(data: object) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("drained"), bool):
        raise ValueError('expected {"drained": true} or {"drained": false}')
    return bool(data["drained"])


def service_healths(
    config: Config,
    observed: Mapping[ServiceKey, Service],
    members: Mapping[str, Membership],
    health: HealthOf,
    disabled: Mapping[str, set[str]],
) -> list[tuple[tuple[IPAddress, ...], ServiceHealth]]:
    """What the policy needs of every configured service: its VIPs, state and first verdicts."""
    out = []
    for svc in config.services:
        live = observed.get(svc.key)
        in_kernel = {d.key for d in live.dests} if live is not None else set()
        off = disabled.get(svc.name, set())
        facts, verdicts = [], True
        for s in svc.servers:
            h = health(svc.name, s.key)
            verdicts = verdicts and h is not None and has_verdict(h, s.check)
            # str() of 16,000 addresses was most of this walk's cost: only when something is disabled
            facts.append((h is not None and h.state == "up", s.key in in_kernel, bool(off) and str(s.key) in off))
        m = members.get(svc.name)
        state = service_state(bool(in_kernel), bool(m and m.panic), facts)
        health_of = ServiceHealth(svc.name, state, verdicts, frozenset(in_kernel))
        out.append((service_vips(svc.key, svc.announce), health_of))
    return out


@dataclass
class SysctlStatus:
    """The settings mhd keeps, what it last read, and what it had to repair."""

    desired: dict[str, int] = field(default_factory=dict)
    current: dict[str, int | None] = field(default_factory=dict)
    repairs: int = 0
    failures: dict[str, str] = field(default_factory=dict)


class Announcer:
    def __init__(
        self,
        state: StateDir,
        *,
        open_routes: Callable[[], routes.Kernel] = routes.Kernel.open,
        sysctl_root: Path = sysctl.PROC,
    ) -> None:
        self.state = state
        self.open_routes = open_routes  # the rtnetlink edge (tests give a fake one)
        self.sysctl_root = sysctl_root
        self.drained = state.read_file(DRAIN_FILE, _drain_from_json, b'{"drained": false}', DRAIN_FIX)
        self.records: dict[IPAddress, Record] = {}
        self.decision: Decision | None = None
        self.recheck_at: float | None = None  # wall clock: a hold-down expires then
        self.sysctls = SysctlStatus()
        self.route_writes = 0  # rtnetlink writes (routes, addresses, the link) since the start
        self.failures: list[str] = []  # of the last step: route and address writes the kernel refused
        self.foreign: list[str] = []  # VIPs present on the interface and not mhd's: left alone
        self.tables: dict[str, dict[str, Any]] = {}  # service name -> `mhd.maglev.digest.table_json`
        self._table_inputs: dict[str, tuple[object, dict[str, Any]]] = {}
        self._kernel: routes.Kernel | None = None
        self._where: tuple[int, int] | None = None  # the (table, protocol) the records describe
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mhd-routes")  # owns `_kernel`
        self._tables_wanted: tuple[Config, Mapping[ServiceKey, Service], Model] | None = None
        self._tables_task: asyncio.Task[None] | None = None

    # --- drain -----------------------------------------------------------------------------------
    def set_drained(self, drained: bool) -> None:
        """Persist the flag first: a crash right after a drain must not undrain the director."""
        if drained != self.drained:
            self.state.write_file(DRAIN_FILE, {"drained": drained})
            self.drained = drained
            log.warning(
                "director %s by the operator", "drained: withdrawing every route" if drained else "undrained"
            )

    @property
    def announced(self) -> list[IPAddress]:
        return sorted((v for v, r in self.records.items() if r.announced), key=lambda a: (a.version, int(a)))

    def withdrawn(self) -> bool:
        """True when this director announces nothing and the last step's writes all succeeded."""
        return not self.announced and not self.failures

    # --- one step --------------------------------------------------------------------------------
    async def step(
        self, config: Config, healths: Callable[[], list[tuple[tuple[IPAddress, ...], ServiceHealth]]]
    ) -> None:
        """Sysctls, then the announcement: decide, and make the table say it.

        `healths` walks every server: it is called only when there is something to announce (or to
        clean up), so that a director without `announce:` does not pay it after every pass (at
        16,000 servers under emulation it took a reload's answer from 0.1 s to 3 s)."""
        async with self._lock:
            self._sysctls(config)
            if config.announce is not None or self._where is not None:
                services = healths()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._thread, self._announce, config.announce, services, time.time())

    def due(self, now: float) -> bool:
        """Whether a hold-down has expired since the last step (the daemon then runs one)."""
        return self.recheck_at is not None and now >= self.recheck_at

    def _sysctls(self, config: Config) -> None:
        root = self.sysctl_root
        desired = effective(dict(config.kernel.sysctl), sysctl.available(root))
        changes, failures = sysctl.sync(desired, root)
        failed = {f.name: why for f, why in failures}
        for change in changes:
            if change.name not in failed:
                self._repaired(change)
        new = {PREFIX + name: why for name, why in failed.items()}
        for key in sorted(set(new) - set(self.sysctls.failures)):  # once, not every pass
            log.error("cannot set %s: %s", key, new[key])
        self.sysctls.failures = new
        self.sysctls.desired = desired
        self.sysctls.current = sysctl.read(desired, root)

    def _repaired(self, change: Change) -> None:
        if self.sysctls.desired.get(change.name) == change.desired:
            self.sysctls.repairs += 1
            log.warning("repaired drift: %s", change.describe())
        else:
            log.info("set %s", change.describe())

    def _announce(
        self,
        announce: AnnounceConfig | None,
        healths: list[tuple[tuple[IPAddress, ...], ServiceHealth]],
        now: float,
    ) -> None:
        kernel = self._kernel = self._kernel or self.open_routes()
        where = (announce.table, announce.protocol) if announce is not None else None
        if self._where is not None and where != self._where:  # table or protocol changed: clean up
            old = routes.sync(kernel, self.state, announce=(), vips=(), table=self._where[0],
                              protocol=self._where[1], interface=None)  # fmt: skip
            self._log(old.ops, old.failures)
            self.records, self.decision = {}, None  # seeded again from the new table
        self._where = where
        if announce is None:
            self.decision, self.recheck_at, self.failures = None, None, []
            return
        if not self.records and self.decision is None:
            self.records = seed(kernel.announced(announce.table, announce.protocol), now)
        options = Options(announce_panic=announce.announce_panic, hold_down=announce.hold_down)
        vips = by_vip(healths)
        decision = decide(vips, drained=self.drained, options=options, previous=self.records, now=now)
        self._log_changes(decision)
        self.decision, self.records, self.recheck_at = decision, decision.records, decision.recheck_at
        result = routes.sync(
            kernel, self.state, announce=decision.announce, vips=[prefix(v) for v in vips],
            table=announce.table, protocol=announce.protocol, interface=announce.vip_interface,
        )  # fmt: skip
        self._log(result.ops, result.failures)
        self.route_writes = kernel.writes
        self.failures = [f"{op.describe()}: {why}" for op, why in result.failures]
        self.foreign = [str(p) for p in result.foreign]

    def _log_changes(self, decision: Decision) -> None:
        for vip, record in decision.records.items():
            before = self.records.get(vip)
            if before is None or before.announced != record.announced:
                verb = "announce" if record.announced else "withdraw"
                if before is not None or record.announced:
                    log.info("%s %s: %s", verb, vip, decision.reasons.get(vip, ""))

    def _log(self, ops: list[routes.RouteOp], failures: list[tuple[routes.RouteOp, str]]) -> None:
        failed = {id(op) for op, _ in failures}
        for op in ops:
            if id(op) not in failed:
                log.info("%s", op.describe())
        for op, why in failures:
            log.error("%s failed: %s", op.describe(), why)

    # --- table digests ---------------------------------------------------------------------------
    def publish_tables(self, config: Config, observed: Mapping[ServiceKey, Service], model: Model) -> None:
        """Bring the digests up to date in the background: a pass (a server's removal, a reload's
        answer) must not wait for them. At start every table is built, and the first one imports
        the Maglev model: under emulation that held the first removal 10 s and a 16,000-server
        daemon's `ready` 2 minutes. Requests coalesce: the task always works from the latest."""
        self._tables_wanted = (config, observed, model)
        if self._tables_task is None or self._tables_task.done():
            self._tables_task = asyncio.get_running_loop().create_task(self._publish())

    async def tables_settled(self) -> None:
        """Wait until the digests reflect the last `publish_tables` (tests, and `aclose`)."""
        while self._tables_task is not None and not self._tables_task.done():
            await asyncio.shield(self._tables_task)

    async def _publish(self) -> None:
        while self._tables_wanted is not None:
            wanted, self._tables_wanted = self._tables_wanted, None
            try:
                await self.refresh_tables(*wanted)
            except Exception:  # digests are informational: the next pass tries again
                log.exception("building the table digests failed")

    async def refresh_tables(
        self, config: Config, observed: Mapping[ServiceKey, Service], model: Model
    ) -> None:
        """The digest and inputs of every live mh service's table, rebuilt only for lists that changed
        (a table takes milliseconds: in a worker thread, off the probes' loop)."""
        wanted: dict[str, tuple[object, Service]] = {}
        for svc in config.services:
            live = observed.get(svc.key)
            if live is not None and live.scheduler == "mh" and live.dests:
                # An unchanged list is the same tuple (cheap); the flags as the digest reads them: a
                # dump's carry the kernel's own HASHED bit, the planner's model of a pass does not,
                # and every table was rebuilt after the first whole pass (58 s in the VM at 1,000).
                signature = (live.dests, live.flags & (MH_PORT | MH_FALLBACK), model)
                wanted[svc.name] = (signature, live)
        stale = {n: live for n, (sig, live) in wanted.items() if self._table_inputs.get(n, (None,))[0] != sig}
        if stale:
            started = time.monotonic()
            try:
                built = await asyncio.to_thread(_tables, stale, model)
            except ImportError as exc:  # no numpy: no digests, said once
                if not self.tables and not self._table_inputs:
                    log.warning("no table digests: %s", exc)
                return
            for name, doc in built.items():
                self._table_inputs[name] = (wanted[name][0], doc)
            log.debug("built %d table digests in %.3fs", len(built), time.monotonic() - started)
        self._table_inputs = {n: v for n, v in self._table_inputs.items() if n in wanted}
        self.tables = {n: doc for n, (_, doc) in self._table_inputs.items()}

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the route socket in its own thread, after the step in flight (a SIGTERM may have
        cancelled the await, not the thread). A step stuck in the kernel is logged and left."""
        if self._tables_task is not None:
            self._tables_task.cancel()
            await asyncio.gather(self._tables_task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._thread, self._close_kernel), timeout)
        except TimeoutError:
            log.error("the route thread is still busy after %gs: stopping without closing its socket", timeout)
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _close_kernel(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None


def _tables(services: Mapping[str, Service], model: Model) -> dict[str, dict[str, Any]]:
    from mhd.maglev.digest import table_json  # numpy: loaded by the API at start, before the probes

    return {name: table_json(svc, model) for name, svc in services.items()}
