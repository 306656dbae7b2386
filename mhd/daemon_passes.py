"""The daemon's reconcile passes, whole or scoped, and the fleet step after each; the operator's
drains (of a server, of the whole director), which the next pass or step applies; the status line.

`Passes` sits between `mhd.daemon_reload.Reloading` (the config and health it passes over) and
`mhd.daemon.Daemon` (the main loop that decides when a pass runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mhd import sdnotify
from mhd.daemon_errors import ErrorLog
from mhd.daemon_reload import Reloading
from mhd.ipvs import IpvsClient
from mhd.maglev.params import model_for
from mhd.model import ServiceKey
from mhd.netlink import NetlinkError
from mhd.reconcile import Outcome, log_refusals, reconcile
from mhd.state import StateDir

if TYPE_CHECKING:  # imported by `Daemon.run` after its first pass
    from mhd.announcer import Announcer

log = logging.getLogger("mhd")


class Passes(Reloading):
    """The kernel client and state dir, the last pass's outcome and counters, the fleet step."""

    def __init__(self, config_path: str, state_dir: str | None = None) -> None:
        super().__init__(config_path, state_dir)
        self.client: IpvsClient | None = None
        self.state: StateDir | None = None
        self.outcome: Outcome | None = None
        self.refused: set[ServiceKey] = set()  # configured, but someone else's: left alone
        self.reconciles = 0
        self.reading_kernel = False  # a whole pass is inside `reconcile` (dump, plan, writes)
        self.drift_repairs = 0
        self.op_counts: dict[str, int] = {}
        self._loop_errors = ErrorLog()
        self.hooks: list[Callable[[], None]] = []  # called after every reconcile (metrics, status)
        self.fleet: Announcer | None = None  # announcements, sysctls, digests, the drain flag

    async def reconcile_once(self, only: set[ServiceKey] | None = None) -> None:
        """One pass: whole (`only` None), or scoped to some services; the outcome merges into status."""
        assert self.client is not None and self.config is not None and self.state is not None
        started = time.monotonic()
        try:
            self.reading_kernel = only is None
            outcome = await reconcile(self.client, self.config, self.state, self.healthy, only=only)
        except (NetlinkError, OSError) as exc:
            log.error("reconcile failed, retrying in %gs: %s", self.config.reconcile_interval, exc)
            return
        except Exception as exc:  # a bug in one pass must not end the daemon
            self._loop_errors.report(f"a reconcile pass (retrying in {self.config.reconcile_interval:g}s)", exc)
            return
        finally:
            self.reading_kernel = False
        self._loop_errors.recovered("reconcile passes")
        self.reconciles += 1
        self._log_panics(outcome)
        self.refused = log_refusals(self.refused, outcome, self.config, only)
        # Status, metrics and new targets read the kernel as it is after this pass's writes.
        if only is None or self.outcome is None:
            self.outcome, self.observed = outcome, dict(outcome.after)
        else:
            for key in only:
                self.observed.pop(key, None)
            self.observed.update(outcome.after)
            self.outcome.members.update(outcome.members)
            self.outcome.observed = self.observed
            self.outcome.ops, self.outcome.failures = outcome.ops, outcome.failures
        if only is None and outcome.ops and self.reconciles > 1:
            self.drift_repairs += 1
            log.warning("repaired drift: %d operations", len(outcome.ops))
        for op in outcome.ops:
            self.op_counts[op.kind] = self.op_counts.get(op.kind, 0) + 1
        scope = "all services" if only is None else f"{len(only)} services"
        if outcome.ops:
            log.info(
                "reconciled %s: %d operations in %.3fs", scope, len(outcome.ops), time.monotonic() - started
            )
        fleet_started = time.monotonic()
        await self.step_fleet()
        for hook in self.hooks:
            hook()
        log.debug(
            "pass over %s: kernel read, planned and written in %.3fs, fleet step and hooks %.3fs",
            scope, fleet_started - started, time.monotonic() - fleet_started,
        )  # fmt: skip
        sdnotify.notify("STATUS=" + self.status_line())

    async def step_fleet(self) -> None:
        """The fleet step, now: sysctls, then the announcement of the VIPs' routes, then the table
        digests (built in the background; `fleet.tables_settled` waits for them). Every pass ends
        with one; the main loop also runs one when `fleet_step_due` says so."""
        self._fleet_due = False
        if self.fleet is None or self.config is None or self.state is None:
            return
        from mhd.announcer import service_healths  # loaded with the fleet, after the first pass

        members = self.outcome.members if self.outcome is not None else {}
        config, observed, state = self.config, self.observed, self.state
        try:
            await self.fleet.step(
                config, lambda: service_healths(config, observed, members, self.health, state.disabled())
            )
            if self.kernel is not None:
                k = self.kernel
                params = model_for(self.config.kernel.module, k.mh_variant, k.mh_tab_index)
                self.fleet.publish_tables(self.config, self.observed, params)
        except Exception as exc:  # routes and sysctls are retried by the next step
            self._loop_errors.report("announcing routes or setting sysctls", exc)

    def fleet_step_due(self, now: float) -> bool:
        """Whether the main loop owes a fleet step outside a pass: a drain or a reload asked for one,
        or a hold-down ended (`now`: wall clock)."""
        return self._fleet_due or (self.fleet is not None and self.fleet.due(now))

    def set_drained(self, drained: bool) -> None:
        """Drain (withdraw every route, IPVS keeps serving) or undrain this director; persisted."""
        if self.fleet is None:
            raise LookupError("the daemon is starting")
        self.fleet.set_drained(drained)
        self._fleet_due = True
        self._wake.set()

    def set_disabled(self, service: str, server: str, disabled: bool) -> str:
        """Drain (or undrain) a server: persisted in the state dir, applied by the next pass (now).

        Returns the server's canonical name; raises LookupError naming what was not found.
        """
        assert self.config is not None and self.state is not None
        svc = self.config.by_name(service)
        if svc is None:
            raise LookupError(f"no service named '{service}' in {self.config_path}")
        found = svc.server(server)
        if found is None:
            known = ", ".join(str(s.key) for s in svc.servers)
            raise LookupError(f"service '{service}' has no server '{server}' (its servers: {known})")
        name = str(found.key)
        drained = self.state.disabled()
        members = drained.setdefault(service, set())
        if disabled:
            members.add(name)
        else:
            members.discard(name)
        self.state.set_disabled(drained)
        self._pending.add(svc.key)
        log.info(
            "server %s %s by the operator",
            name,
            "disabled" if disabled else "enabled",
            extra={"MHD_SERVICE": service, "MHD_SERVER": name},
        )
        self._wake.set()
        return name

    def _log_panics(self, outcome: Outcome) -> None:
        """Entering and leaving panic is logged once each, with the counts that decided it."""
        before = self.outcome.members if self.outcome is not None else {}
        for name, m in outcome.members.items():
            was = before.get(name)
            if m.panic and not (was and was.panic):
                svc = self.config.by_name(name) if self.config else None
                need = svc.min_healthy if svc else "?"
                log.warning(
                    "service %s: panic: %d of %d servers healthy, below min-healthy %s; keeping all %d in IPVS",
                    name, m.healthy, m.enabled, need, m.enabled, extra={"MHD_SERVICE": name},
                )  # fmt: skip
            elif was and was.panic and not m.panic:
                log.warning("service %s: out of panic: %d of %d servers healthy", name, m.healthy, m.enabled,
                            extra={"MHD_SERVICE": name})  # fmt: skip

    def status_line(self) -> str:
        if self.config is None or self.outcome is None:
            return "starting"
        members = self.outcome.members
        up = sum(m.healthy for m in members.values())
        total = self.config.server_count
        panic = sum(1 for m in members.values() if m.panic)
        line = f"{len(self.config.services)} services, {up}/{total} servers up"
        if panic:
            line += f", {panic} in panic"
        if self.refused:
            line += f", {len(self.refused)} refused: not mhd's (see the log)"
        if self.fleet is not None and self.fleet.drained:
            line += ", drained"
        if self.last_reload and not self.last_reload.ok:
            line += f"; last reload failed: {self.last_reload.errors[0] if self.last_reload.errors else '?'}"
        return line
