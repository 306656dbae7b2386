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
from collections.abc import Awaitable, Callable
from typing import Any

from mhd import __version__, kernel, sdnotify
from mhd.config.records import ServiceConfig
from mhd.config.validate import DEFAULT_CONFIGS, find_config
from mhd.config.yamlsource import ConfigError
from mhd.daemon_passes import Passes
from mhd.daemon_reload import targets
from mhd.ipvs import IpvsClient
from mhd.model import Service, ServiceKey
from mhd.netlink import NetlinkError
from mhd.reports import ReloadResult
from mhd.state import StateDir, StateError, StateFileError

log = logging.getLogger("mhd")

# seconds from SIGTERM to a forced exit: under systemd's TimeoutStopSec (20 s), so the journal gets
# our stacks rather than a bare SIGKILL. A clean stop takes well under a second.
STOP_DEADLINE = 15.0


class Daemon(Passes):
    """The long-running process: the main loop, its start and its stop.

    The config and its reloads are `mhd.daemon_reload`'s, the passes and the fleet step
    `mhd.daemon_passes`'s."""

    def __init__(self, config_path: str, state_dir: str | None = None, *, stop_deadline: float | None = None) -> None:
        super().__init__(config_path, state_dir)
        self.stop_deadline = stop_deadline  # the process's (`main`), not an embedding test's
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None  # `run`, cancelled by `stop`

    # --- the main loop ---------------------------------------------------------------------------
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
                next_full = await self.iterate(next_full)
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

    async def iterate(self, next_full: float) -> float:
        """One turn of the main loop: a requested reload and its scoped pass, then a whole pass if
        `next_full` (monotonic) has come or a scoped one if services wait, then a fleet step if one
        is owed; returns when the next whole pass is due. Reload requests are answered as soon as
        their own changes are in the kernel, before the turn's whole pass. `main_loop` calls it
        between waits; a caller that drives the daemon itself (a benchmark) calls it directly."""
        assert self.config is not None
        if self._reload_requested:
            await self._reload_for_waiters()
        if time.monotonic() >= next_full:
            if await self._whole_pass(next_full):
                next_full = time.monotonic() + self.config.reconcile_interval
        elif self._pending:
            only, self._pending = self._pending, set()
            await self.reconcile_once(only)
        if self.fleet_step_due(time.time()):
            await self.step_fleet()
        return next_full

    async def _reload_for_waiters(self) -> None:
        """Reload, write what it changed, answer everyone who asked (rejected, or its pass failed:
        they are answered all the same)."""
        self._reload_requested = False
        waiters, self._reload_waiters = self._reload_waiters, []
        result: ReloadResult | None = None
        try:
            result = await self.reload()
            if result.ok and self._pending:
                only, self._pending = self._pending, set()
                await self.reconcile_once(only)
        finally:
            if result is not None:
                sdnotify.notify("READY=1\nSTATUS=" + self.status_line())
            for w in waiters:
                if not w.done():
                    if result is None:
                        result = ReloadResult(False, time.time(), ["the reload failed: see the daemon's log"])
                    w.set_result(result)

    async def _whole_pass(self, due: float) -> bool:
        """The periodic whole pass (`due`: when it became due, monotonic), which gives way to a
        reload that comes while it is still reading the kernel: under emulation at 100,000
        destinations the dump alone takes tens of seconds, and the operator who edited one weight
        should not wait for it. Nothing is lost by abandoning it (it has written nothing; the next
        turn reloads, then runs a whole pass from a fresh dump). A pass that has begun writing runs
        to its end, and so does a pass already an interval late, so that a stream of reloads delays
        the drift repair by one interval at most. Returns whether the pass ran."""
        assert self.client is not None and self.config is not None
        waiting, self._pending = self._pending, set()
        late_at = due + self.config.reconcile_interval  # from then on it no longer gives way
        writes = self.client.writes
        whole = asyncio.ensure_future(self.reconcile_once())
        self._give_way = asyncio.get_running_loop().create_future()
        try:
            while not whole.done():
                await asyncio.wait({whole, self._give_way}, return_when=asyncio.FIRST_COMPLETED)
                if whole.done():
                    break
                self._give_way = asyncio.get_running_loop().create_future()
                if self.reading_kernel and self.client.writes == writes and time.monotonic() < late_at:
                    whole.cancel()
                    await asyncio.gather(whole, return_exceptions=True)
                    self._pending |= waiting
                    log.info("a reload came while the whole pass read the kernel: reloading first")
                    return False
                log.debug(
                    "a reload waits for the whole pass: %s",
                    "it is past its read of the kernel" if not self.reading_kernel
                    else "it is writing" if self.client.writes != writes else "it is an interval late",
                )  # fmt: skip
        except asyncio.CancelledError:  # the daemon stops: so does the pass
            whole.cancel()
            await asyncio.gather(whole, return_exceptions=True)
            raise
        finally:
            self._give_way = None
        await whole
        return True

    # --- lifecycle -------------------------------------------------------------------------------
    async def _watchdog(self, every: float) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and systemd restarts us."""
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def first_dump(self) -> dict[ServiceKey, Service] | None:
        """The kernel before anything is decided, read with `client` (`run` does it once, before
        adopting the config). Health starts from it (servers already in IPVS keep serving through a
        restart), so a failed dump is retried, never replaced by a guess. None: stopped before a
        dump succeeded."""
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

    def _open_fleet(self) -> None:
        """The fleet side (routes, sysctls, table digests), opened after the first pass: its
        modules are a quarter of the daemon's imports, and under emulation the VIPs' first writes
        should not wait for them. The pass's own fleet step is the one `run` calls next."""
        from mhd.announcer import Announcer

        assert self.state is not None
        self.fleet = Announcer(self.state)

    async def run(
        self, on_ready: Callable[[Daemon], Awaitable[Callable[[], Awaitable[None]]]] | None = None
    ) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. `on_ready` starts the API and returns its closer."""
        self.kernel = kernel.info()
        started = time.monotonic()
        config = self.load_config()
        log.info(
            "loaded %s: %d services, %d servers in %.2fs",
            self.config_path, len(config.services), config.server_count, time.monotonic() - started,
        )  # fmt: skip
        gc.freeze()  # the config lives as long as the daemon: no collection rescans 100,000 servers
        for warning in kernel.load_modules(config.schedulers()):
            log.warning("%s", warning)
        self.kernel = kernel.info(config.kernel.mh_tab_index)
        self._refuse_quiesce(config, self.kernel)
        self.state = StateDir(self.state_dir_override or config.state_dir)
        self.state.lock()
        self.client = await IpvsClient.open()
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        tasks: list[asyncio.Task[Any]] = []
        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            observed = await self.first_dump()
            if observed is None:  # stopped while the kernel could not be read: nothing was decided
                return 0
            self.observed = observed
            self.adopt(config)
            self.last_reload = ReloadResult(True, time.time(), [], config.sha256)
            writes_before = self.client.writes
            await self.reconcile_once()
            self._open_fleet()
            await self.step_fleet()
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
            if self.fleet is not None:
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


async def start_api(daemon: Daemon) -> Callable[[], Awaitable[None]]:
    """The API, imported only once the first pass has written the kernel: aiohttp and its 180
    modules are a third of the daemon's imports, and the VIPs should not wait for them."""
    from mhd.api import server as api

    # The API takes the daemon as its read-only view: mypy checks here that `Daemon` satisfies
    # `mhd.api.view.DaemonView`.
    return await api.start(daemon)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sdnotify.setup_logging(getattr(logging, args.log_level.upper()))
    soft, _ = raise_fd_limit()
    if soft < 4096:
        log.warning("only %d file descriptors allowed (RLIMIT_NOFILE): probes beyond that wait (not counted against servers); raise LimitNOFILE", soft)
    daemon = Daemon(find_config(args.config), args.state_dir, stop_deadline=STOP_DEADLINE)
    try:
        return asyncio.run(daemon.run(on_ready=start_api))
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


__all__ = ["Daemon", "ReloadResult", "ServiceConfig", "main", "targets"]
