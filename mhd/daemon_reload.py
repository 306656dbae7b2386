"""The daemon's config: loaded at start, reloaded on request, and the health targets it implies.

`Reloading` is the base of `mhd.daemon.Daemon` (through `mhd.daemon_passes.Passes`): it owns the
running config, the prober and its targets, and the requests it leaves for the main loop (services
to pass over, a due fleet step), which the classes above it act on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from mhd import kernel, sdnotify
from mhd.config.diff import Replaced, changed_services, replaced_services
from mhd.config.records import Config, ServiceConfig
from mhd.config.reload import ConfigReloader
from mhd.config.yamlsource import ConfigError
from mhd.daemon_errors import ErrorLog
from mhd.health import CheckResult, Health, Transition
from mhd.membership import quiesce_refusals
from mhd.model import DestKey, Service, ServiceKey, mh_table_size
from mhd.probing.prober import CheckKey, ProbeHook, Prober, Target
from mhd.reports import ReloadResult

log = logging.getLogger("mhd")


def targets(services: Iterable[ServiceConfig]) -> dict[tuple[str, DestKey], Target]:
    """One health target per (service, server), with the server's merged check.

    Here in the shell rather than with the pure diff helpers (`mhd.config.diff`): `Target` is the
    prober's type, and the core imports no probing module."""
    return {
        (svc.name, s.key): Target(svc.name, str(s.address), s.port, s.check)
        for svc in services
        for s in svc.servers
    }


class Reloading:
    """The running config, its reloads, and the prober with one target per (service, server)."""

    def __init__(self, config_path: str, state_dir: str | None = None) -> None:
        self.config_path = config_path
        self.state_dir_override = state_dir
        self.config: Config | None = None
        self.loaded_at = 0.0
        self.last_reload: ReloadResult | None = None
        self.reload_counts = {"ok": 0, "error": 0}
        self.kernel: kernel.KernelInfo | None = None
        self.prober = Prober(on_transition=self._on_transition, on_probe=self._on_probe)
        self.probe_hooks: list[ProbeHook] = []  # every probe result (metrics: durations, failures)
        self.transition_hooks: list[Callable[[Target, Transition, Health], None]] = []
        self.targets: dict[tuple[str, DestKey], Target] = {}
        self.transitions = 0
        self.observed: dict[ServiceKey, Service] = {}  # the kernel after the last pass
        self.reloader = ConfigReloader()  # remembers the last good load: a reload costs what its edit costs
        self._load_errors = ErrorLog()
        # Requests for the main loop: a reload, services to pass over, the fleet step.
        self._wake = asyncio.Event()
        self._reload_waiters: list[asyncio.Future[ReloadResult]] = []
        self._reload_requested = False
        self._give_way: asyncio.Future[None] | None = None  # set while a whole pass could yield
        self._pending: set[ServiceKey] = set()
        self._fleet_due = False

    # --- config ----------------------------------------------------------------------------------
    def load_config(self) -> Config:
        """Read and validate the config file for this kernel, without adopting it (start adopts it
        after the first dump; `reload` at once). Raises ConfigError for a bad file, KernelError for a
        setting this kernel cannot honour."""
        info = self.kernel or kernel.info()
        self.reloader.mh_slots = mh_table_size(info.mh_tab_index)
        config = self.reloader.load(self.config_path)
        self._refuse_quiesce(config, info)
        return config

    @staticmethod
    def _refuse_quiesce(config: Config, info: kernel.KernelInfo) -> None:
        """`on-failure: quiesce` on the backport module is refused, never downgraded (at start and
        on reload, which then keeps the running config)."""
        refused = quiesce_refusals(config, info.mh_variant)
        if refused:
            raise kernel.KernelError("\n".join(refused))

    def adopt(self, config: Config, replaced: Replaced | None = None) -> None:
        """Make `config` the running one: new targets start, unchanged ones keep their health.
        The kernel is not touched: the next pass (whole, or over the services a reload changed)
        makes it follow.

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

    # --- health of the targets -------------------------------------------------------------------
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

    # --- reload ----------------------------------------------------------------------------------
    def request_reload(self) -> asyncio.Future[ReloadResult]:
        """Ask the main loop to reload; the future resolves with the result (API, mhctl reload)."""
        future: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(future)
        self._reload_requested = True
        self._wake.set()
        if self._give_way is not None and not self._give_way.done():
            self._give_way.set_result(None)  # a whole pass still reading the kernel yields to it
        return future

    async def reload(self) -> ReloadResult:
        """Reload now, on the caller's task: adopt the file, or keep the running config and say why.
        While the main loop runs, ask it with `request_reload` instead: it reloads between passes and
        answers once the changes are in the kernel. The result is also kept in `last_reload`.

        The file is read and parsed in a worker thread.

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
            return self.load_config()
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
        replaced = self.reloader.replaced or replaced_services(self.config, config)
        changed = changed_services(self.config, config, replaced)
        self.adopt(config, replaced)
        self._pending |= changed
        log.info(
            "reloaded %s: %d services changed (read and adopted in %.3fs)",
            self.config_path, len(changed), time.monotonic() - started,
        )  # fmt: skip
