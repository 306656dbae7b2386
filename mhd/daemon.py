"""mhd, the daemon: keep IPVS equal to the config and to the health of the real servers.

One asyncio loop runs everything: the probes, the API, and the reconcile loop below, which is
level-triggered: every pass dumps the kernel afresh, plans against it and writes only the difference.
A pass runs every `reconcile-interval`, at once after a health transition, and after a reload.

Signals: SIGHUP re-reads the config (an invalid file is logged and changes nothing); SIGTERM and
SIGINT stop the daemon and leave IPVS exactly as it is, so a restart or an upgrade never drops a VIP.

After every pass the fleet step (`mhd.announcer`) announces or withdraws the VIPs' routes, keeps the
IPVS sysctls and publishes the table digests; stopping leaves routes and addresses as they are too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mhd import __version__, kernel, sdnotify
from mhd.announcer import Announcer, service_healths
from mhd.config.diff import Replaced, changed_services, replaced_services
from mhd.config.records import Config, ServiceConfig
from mhd.config.reload import ConfigReloader
from mhd.config.validate import DEFAULT_CONFIGS, find_config
from mhd.config.yamlsource import ConfigError
from mhd.health import CheckResult, Health, Transition
from mhd.ipvs import IpvsClient
from mhd.maglev.params import model_for
from mhd.membership import quiesce_refusals
from mhd.model import DestKey, Service, ServiceKey, mh_table_size
from mhd.netlink import NetlinkError
from mhd.probing.prober import CheckKey, ProbeHook, Prober, Target
from mhd.reconcile import Outcome, log_refusals, reconcile
from mhd.reports import ReloadResult
from mhd.state import StateDir, StateError, StateFileError

log = logging.getLogger("mhd")

# seconds from SIGTERM to a forced exit: under systemd's TimeoutStopSec (20 s), so the journal gets
# our stacks rather than a bare SIGKILL. A clean stop takes well under a second.
STOP_DEADLINE = 15.0


def targets(services: Iterable[ServiceConfig]) -> dict[tuple[str, DestKey], Target]:
    """One health target per (service, server), with the server's merged check.

    Here in the shell rather than with the pure diff helpers (`mhd.config.diff`): `Target` is the
    prober's type, and the core imports no probing module."""
    return {
        (svc.name, s.key): Target(svc.name, str(s.address), s.port, s.check)
        for svc in services
        for s in svc.servers
    }


class ErrorLog:
    """Unexpected errors of the loops, logged with their traceback once per distinct error until
    things work again: a failure that recurs every interval would otherwise flood the journal."""

    LIMIT = 100  # distinct errors remembered; beyond that, repeats are logged again

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def report(self, where: str, exc: Exception) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"
        if text in self.seen:
            log.debug("again: unexpected error in %s", text)
            return
        if len(self.seen) >= self.LIMIT:
            self.seen.clear()
        self.seen.add(text)
        log.error("unexpected error in %s; the daemon keeps serving and retries", text, exc_info=exc)

    def recovered(self, what: str) -> None:
        if self.seen:
            log.info("%s work again", what)
            self.seen.clear()


class Daemon:
    """The long-running state: config, kernel client, prober, last outcome."""

    def __init__(self, config_path: str, state_dir: str | None = None, *, stop_deadline: float | None = None) -> None:
        self.config_path = config_path
        self.stop_deadline = stop_deadline  # the process's (`main`), not an embedding test's
        self.state_dir_override = state_dir
        self.config: Config | None = None
        self.loaded_at = 0.0
        self.last_reload: ReloadResult | None = None
        self.kernel: kernel.KernelInfo | None = None
        self.client: IpvsClient | None = None
        self.state: StateDir | None = None
        self.prober = Prober(on_transition=self._on_transition, on_probe=self._on_probe)
        self.probe_hooks: list[ProbeHook] = []  # every probe result (metrics: durations, failures)
        self.transition_hooks: list[Callable[[Target, Transition, Health], None]] = []
        self.targets: dict[tuple[str, DestKey], Target] = {}
        self.outcome: Outcome | None = None
        self.observed: dict[ServiceKey, Service] = {}
        self.refused: set[ServiceKey] = set()  # configured, but someone else's: left alone
        self.reconciles = 0
        self.drift_repairs = 0
        self.op_counts: dict[str, int] = {}
        self.transitions = 0
        self.reload_counts = {"ok": 0, "error": 0}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_waiters: list[asyncio.Future[ReloadResult]] = []
        self._reload_requested = False
        self._pending: set[ServiceKey] = set()
        self._task: asyncio.Task[Any] | None = None  # `run`, cancelled by `stop`
        self._reloader = ConfigReloader()
        self._load_errors, self._loop_errors = ErrorLog(), ErrorLog()
        self.hooks: list[Callable[[], None]] = []  # called after every reconcile (metrics, status)
        self.fleet: Announcer | None = None  # announcements, sysctls, digests, the drain flag
        self._fleet_due = False

    # --- config ----------------------------------------------------------------------------------
    def _load(self) -> Config:
        info = self.kernel or kernel.info()
        self._reloader.mh_slots = mh_table_size(info.mh_tab_index)
        config = self._reloader.load(self.config_path)
        self._refuse_quiesce(config, info)
        return config

    @staticmethod
    def _refuse_quiesce(config: Config, info: kernel.KernelInfo) -> None:
        """`on-failure: quiesce` on the backport module is refused, never downgraded (at start and
        on reload, which then keeps the running config)."""
        refused = quiesce_refusals(config, info.mh_variant)
        if refused:
            raise kernel.KernelError("\n".join(refused))

    def _adopt(self, config: Config, replaced: Replaced | None = None) -> None:
        """Make `config` the running one: new targets start, unchanged ones keep their health.

        With `replaced` (a reload: the services that left and those that came, see
        `replaced_services`), only their targets are looked at, so the cost follows the edit
        rather than the number of servers."""
        self.config = config
        self.loaded_at = time.time()
        if replaced is None:
            scope: Iterable[ServiceConfig] = config.services
            fresh = targets(scope)
            stale, self.targets = self.targets, fresh
        else:
            scope = replaced[1]
            fresh = targets(scope)
            stale = {k: t for k in targets(replaced[0]) if (t := self.targets.pop(k, None)) is not None}
            self.targets.update(fresh)
        removed = [t for k, t in stale.items() if fresh.get(k) != t]
        in_kernel: set[Target] = set()
        for svc in scope:
            seen = self.observed.get(svc.key)
            quiesce = svc.on_failure == "quiesce"  # a weight-0 server was quiesced: it starts down
            live = {d.key for d in seen.dests if d.weight or not quiesce} if seen else set()
            in_kernel |= {fresh[(svc.name, s.key)] for s in svc.servers if s.key in live}
        self.prober.update_targets(removed, fresh.values(), in_kernel=in_kernel.__contains__)

    def healthy(self, service: str, server: DestKey) -> bool:
        target = self.targets.get((service, server))
        return target is not None and self.prober.health(target).state == "up"

    def health(self, service: str, server: DestKey) -> Health | None:
        target = self.targets.get((service, server))
        return self.prober.health(target) if target is not None else None

    def _on_transition(self, target: Target, transition: Transition, health: Health) -> None:
        self.transitions += 1
        for hook in self.transition_hooks:
            hook(target, transition, health)
        self._touch(target.service)

    def _on_probe(self, key: CheckKey, due: float, lag: float, result: CheckResult) -> None:
        for hook in self.probe_hooks:
            hook(key, due, lag, result)

    def _touch(self, service: str) -> None:
        """Schedule a scoped pass for one service (by name), now."""
        svc = self.config.by_name(service) if self.config else None
        if svc is not None:
            self._pending.add(svc.key)
        self._wake.set()

    def request_reload(self) -> asyncio.Future[ReloadResult]:
        """Ask the main loop to reload; the future resolves with the result (API, mhctl reload)."""
        future: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(future)
        self._reload_requested = True
        self._wake.set()
        return future

    async def _reload(self) -> ReloadResult:
        """Reload, with the file read and parsed in a worker thread.

        The parse is bounded (MAX_BYTES, MAX_NODES in `mhd.config.yamlsource`), but a file near the
        bounds still takes seconds; on the event loop that would stall the probes, the API and the
        watchdog pings for as long. In a thread the loop still runs: the interpreter hands it the
        GIL every switch interval (5 ms), even during libyaml's compose, which calls the Python
        resolver once per node (the test has the load wait for the loop). The thread shares only
        the reloader, which nothing else uses while the main loop awaits it; the new config is
        adopted back on the loop."""
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        started = time.monotonic()
        return self._reloaded(await asyncio.to_thread(self._load_or_errors), started)

    def _load_or_errors(self) -> Config | list[str]:
        """The new config, or the messages that say why there is none. Never raises: whatever a file
        does to the loader, the daemon keeps its running config."""
        try:
            return self._load()
        except ConfigError as exc:
            return [str(p) for p in exc.problems]
        except kernel.KernelError as exc:
            return str(exc).split("\n")
        except Exception as exc:  # a loader bug must not end the daemon
            self._load_errors.report(f"loading {self.config_path}", exc)
            return [f"{self.config_path}: unexpected error while loading it ({type(exc).__name__}: {exc})"]

    def _reloaded(self, loaded: Config | list[str], started: float) -> ReloadResult:
        if isinstance(loaded, list):
            for e in loaded:
                log.error("reload rejected, keeping the running config: %s", e)
            result = ReloadResult(False, time.time(), loaded)
        else:
            try:
                self._switch_to(loaded, started)
            except Exception as exc:  # the next full pass works from self.config
                self._load_errors.report(f"adopting {self.config_path}", exc)
                errors = [f"{self.config_path}: unexpected error while adopting it ({type(exc).__name__}: {exc})"]
                result = ReloadResult(False, time.time(), errors)
            else:
                result = ReloadResult(True, time.time(), [], loaded.sha256)
                self._fleet_due = True  # announce: and kernel.sysctl: may have changed
        self.last_reload = result
        self.reload_counts["ok" if result.ok else "error"] += 1
        return result

    def _switch_to(self, config: Config, started: float) -> None:
        assert self.config is not None
        if config.state_dir != self.config.state_dir and not self.state_dir_override:
            log.warning(
                "state-dir changes take effect at the next restart; still using %s", self.config.state_dir
            )
        replaced = self._reloader.replaced or replaced_services(self.config, config)
        changed = changed_services(self.config, config, replaced)
        self._adopt(config, replaced)
        self._pending |= changed
        log.info(
            "reloaded %s: %d services changed (read and adopted in %.3fs)",
            self.config_path, len(changed), time.monotonic() - started,
        )  # fmt: skip

    # --- reconcile -------------------------------------------------------------------------------
    async def reconcile_once(self, only: set[ServiceKey] | None = None) -> None:
        """One pass: whole (`only` None), or scoped to some services; the outcome merges into status."""
        assert self.client is not None and self.config is not None and self.state is not None
        started = time.monotonic()
        try:
            outcome = await reconcile(self.client, self.config, self.state, self.healthy, only=only)
        except (NetlinkError, OSError) as exc:
            log.error("reconcile failed, retrying in %gs: %s", self.config.reconcile_interval, exc)
            return
        except Exception as exc:  # a bug in one pass must not end the daemon
            self._loop_errors.report(f"a reconcile pass (retrying in {self.config.reconcile_interval:g}s)", exc)
            return
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
        if outcome.ops:
            scope = "all services" if only is None else f"{len(only)} services"
            log.info(
                "reconciled %s: %d operations in %.3fs", scope, len(outcome.ops), time.monotonic() - started
            )
        await self._fleet_step()
        for hook in self.hooks:
            hook()
        sdnotify.notify("STATUS=" + self.status_line())

    async def _fleet_step(self) -> None:
        """After a pass (or a drain, a reload, a hold-down's end): sysctls, announcements, digests."""
        self._fleet_due = False
        if self.fleet is None or self.config is None or self.state is None:
            return
        members = self.outcome.members if self.outcome is not None else {}
        healths = service_healths(self.config, self.observed, members, self.health, self.state.disabled())
        try:
            await self.fleet.step(self.config, healths)
            if self.kernel is not None:
                k = self.kernel
                params = model_for(self.config.kernel.module, k.mh_variant, k.mh_tab_index)
                await self.fleet.refresh_tables(self.config, self.observed, params)
        except Exception as exc:  # routes and sysctls are retried by the next step
            self._loop_errors.report("announcing routes or setting sysctls", exc)

    def set_drained(self, drained: bool) -> None:
        """Drain (withdraw every route, IPVS keeps serving) or undrain this director; persisted."""
        if self.fleet is None:
            raise LookupError("the daemon is starting")
        self.fleet.set_drained(drained)
        self._fleet_due = True
        self._wake.set()

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

    async def main_loop(self) -> None:
        """Whole passes every reconcile-interval; scoped passes at once after reloads, health
        transitions and drains. Reload waiters are answered after their changes reached the kernel.

        An iteration that fails on an unexpected error is logged and the loop waits for the next
        interval: serving the last good state beats ending the daemon, which leaves no checks."""
        assert self.config is not None
        next_full = time.monotonic() + self.config.reconcile_interval
        while not self._stop.is_set():
            self._wake.clear()
            try:
                next_full = await self._iteration(next_full)
            except Exception as exc:  # see the docstring
                self._loop_errors.report("the main loop", exc)
                next_full = time.monotonic() + self.config.reconcile_interval
            if self._wake.is_set() or self._stop.is_set():
                continue
            wait = next_full - time.monotonic()
            if self.fleet is not None and self.fleet.recheck_at is not None:
                wait = min(wait, self.fleet.recheck_at - time.time())  # a hold-down ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, wait))

    async def _iteration(self, next_full: float) -> float:
        """One turn of the main loop: a pending reload, then a whole or scoped pass; returns when
        the next whole pass is due."""
        assert self.config is not None
        waiters: list[asyncio.Future[ReloadResult]] = []
        result: ReloadResult | None = None
        try:
            if self._reload_requested:
                self._reload_requested = False
                waiters, self._reload_waiters = self._reload_waiters, []
                result = await self._reload()
            if time.monotonic() >= next_full:
                self._pending.clear()
                await self.reconcile_once()
                next_full = time.monotonic() + self.config.reconcile_interval
            elif self._pending:
                only, self._pending = self._pending, set()
                await self.reconcile_once(only)
            if self._fleet_due or (self.fleet is not None and self.fleet.due(time.time())):
                await self._fleet_step()
        finally:  # the reload's changes are in the kernel now (or it was rejected, or a pass failed)
            if result is not None:
                sdnotify.notify("READY=1\nSTATUS=" + self.status_line())
            for w in waiters:
                if not w.done():
                    if result is not None:
                        w.set_result(result)
                    else:
                        failed = ReloadResult(False, time.time(), ["the reload failed: see the daemon's log"])
                        w.set_result(failed)
        return next_full

    async def _watchdog(self, every: float) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and systemd restarts us."""
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def _first_dump(self) -> dict[ServiceKey, Service] | None:
        """The kernel before anything is decided. Health starts from it (servers already in IPVS
        keep serving through a restart), so a failed dump is retried, never replaced by a guess.
        None: stopped before a dump succeeded."""
        assert self.client is not None
        delay = 0.1
        while True:
            try:
                return await self.client.services()
            except (NetlinkError, OSError) as exc:
                log.warning("reading IPVS at start failed, retrying in %.1fs: %s", delay, exc)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, 5.0)

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop now, even in the middle of the first pass over 100,000 destinations.

        Cancelling a pass is safe: the kernel keeps whatever it was given, and the next start (or
        any `mhctl apply`) plans against a fresh dump and finishes the job. A stop that still hangs
        (a thread stuck in the kernel) ends the process after `stop_deadline` with every thread's
        stack in the log, rather than leaving systemd to kill it silently.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self.stop_deadline is not None:
            faulthandler.dump_traceback_later(self.stop_deadline, exit=True)
        if self._task is not None and not self._task.done():
            self._task.cancel()

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

    # --- lifecycle -------------------------------------------------------------------------------
    async def run(
        self, on_ready: Callable[[Daemon], Awaitable[Callable[[], Awaitable[None]]]] | None = None
    ) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. `on_ready` starts the API and returns its closer."""
        self.kernel = kernel.info()
        config = self._load()
        for warning in kernel.load_modules(config.schedulers()):
            log.warning("%s", warning)
        self.kernel = kernel.info(config.kernel.mh_tab_index)
        self._refuse_quiesce(config, self.kernel)
        self.state = StateDir(self.state_dir_override or config.state_dir)
        self.state.lock()
        self.fleet = Announcer(self.state)
        self.client = await IpvsClient.open()
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        tasks: list[asyncio.Task[Any]] = []
        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            observed = await self._first_dump()
            if observed is None:  # stopped while the kernel could not be read: nothing was decided
                return 0
            self.observed = observed
            self._adopt(config)
            self.last_reload = ReloadResult(True, time.time(), [], config.sha256)
            writes_before = self.client.writes
            await self.reconcile_once()
            log.info(
                "mhd %s started: %s; %d netlink writes at start",
                __version__,
                self.status_line(),
                self.client.writes - writes_before,
            )
            # The config, targets and first dump live as long as the daemon: move them out of the
            # collector's view, or each full collection would traverse all of them again.
            gc.freeze()
            if on_ready is not None:
                closers.append(await on_ready(self))
            await self.prober.start()
            sdnotify.notify("READY=1\nSTATUS=" + self.status_line())
            log.info("ready: API open, health checks running")
            every = sdnotify.watchdog_interval()
            if every:
                tasks.append(asyncio.create_task(self._watchdog(every)))
            await self.main_loop()
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            sdnotify.notify("STOPPING=1")
            for task in tasks:
                task.cancel()
            for close in closers:
                await close()
            await self.prober.stop()
            self.client.close()
            await self.fleet.aclose()
            self.state.unlock()
        log.info("stopped; IPVS, routes and addresses left as they are")
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mhd",
        description="IPVS/Maglev control-plane daemon: keeps IPVS equal to the config and to server health. "
        "SIGHUP reloads the config; SIGTERM stops and leaves IPVS as it is.",
    )
    p.add_argument("-c", "--config", help=f"config file (default: the first of {', '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--state-dir", help="state dir (default: the config's state-dir, /var/lib/mhd)")
    p.add_argument(
        "--log-level",
        default=os.environ.get("MHD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    p.add_argument("--version", action="version", version=f"mhd {__version__}")
    return p


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one: every TCP or HTTP probe in flight holds a descriptor,
    and systemd (like most shells) starts services with a soft limit of 1024 under a hard one of
    524288, expecting programs that need more to raise it themselves."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sdnotify.setup_logging(getattr(logging, args.log_level.upper()))
    soft, _ = raise_fd_limit()
    if soft < 4096:
        log.warning("only %d file descriptors allowed (RLIMIT_NOFILE): probes beyond that wait (not counted against servers); raise LimitNOFILE", soft)
    daemon = Daemon(find_config(args.config), args.state_dir, stop_deadline=STOP_DEADLINE)
    try:
        from mhd.api import server as api

        # The API takes the daemon as its read-only view: mypy checks here that `Daemon` satisfies
        # `mhd.api.view.DaemonView`.
        return asyncio.run(daemon.run(on_ready=api.start))
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    except StateFileError as exc:  # invalid input too: a restart would fail the same way
        log.error("%s", exc)
        return 2
    except (kernel.KernelError, StateError) as exc:
        log.error("%s", exc)
        return 1
    except PermissionError as exc:
        log.error("permission denied (%s): mhd needs root or CAP_NET_ADMIN", exc)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Daemon", "ServiceConfig", "main"]
