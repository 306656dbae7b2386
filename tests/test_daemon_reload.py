"""A reload adopts the new config by its difference: the health of untouched servers survives, the
targets of edited services are replaced, and the result equals adopting the whole file afresh."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import ModelKernel, reload_through_the_main_loop

from mhd.config.validate import load
from mhd.daemon import Daemon, ReloadResult, targets
from mhd.kernel import KernelInfo
from mhd.model import Service, ServiceKey
from mhd.planner import Op
from mhd.state import StateDir


def config_text(weights: dict[str, int], interval: str = "2s", services: tuple[str, ...] = ("a", "b", "c")) -> str:
    lines = ["services:"]
    for i, name in enumerate(services):
        lines += [
            f"  - name: {name}",
            f"    address: 10.0.0.{i + 1}",
            "    port: 80",
            f"    check: {{type: tcp, interval: {interval if name == 'b' else '2s'}}}",
            "    servers:",
        ]
        lines += [f"      - {{address: 10.1.{i}.{j}, weight: {weights.get(f'{name}{j}', 1)}}}" for j in range(1, 5)]
    return "\n".join(lines) + "\n"


def daemon(tmp_path: Path, text: str) -> Daemon:
    """A daemon that adopted `text`, on a model kernel (`fakes.ModelKernel`) that starts empty."""
    path = tmp_path / "mhd.yaml"
    path.write_text(text)
    d = Daemon(str(path), str(tmp_path / "state"))
    d.kernel = KernelInfo("6.1.0-test", True, "intree", 12, "default")
    d.client, d.state = ModelKernel(), StateDir(tmp_path / "state")  # type: ignore[assignment]
    d.adopt(d.load_config())
    return d


async def answer(future: asyncio.Future[ReloadResult]) -> ReloadResult:
    """The reload's result; a loop that died would leave it unanswered (bounded: a failure, not a hang)."""
    return await asyncio.wait_for(future, timeout=60)


def reload(d: Daemon, text: str) -> set[str]:
    """Reload `text` as SIGHUP does, through the main loop; the names of the services its scoped pass
    read from the kernel (a key that changed hands names both its old and its new service)."""
    kernel: ModelKernel = d.client  # type: ignore[assignment]
    old, seen = d.config, len(kernel.asked)
    Path(d.config_path).write_text(text)
    assert asyncio.run(reload_through_the_main_loop(d)).ok
    assert d.config is not None and old is not None
    asked = set(kernel.asked[seen:])
    return {s.name for s in (*old.services, *d.config.services) if s.key in asked}


def health_objects(d: Daemon, service: str) -> list[object]:
    return [d.prober.health(t) for (name, _), t in sorted(d.targets.items(), key=str) if name == service]


def assert_same_as_a_fresh_adoption(d: Daemon) -> None:
    assert d.config is not None
    assert d.targets == targets(load(d.config_path).services)
    assert set(d.prober.snapshot()) == set(d.targets.values())


def test_a_weight_edit_touches_one_service_and_keeps_every_health(tmp_path: Path) -> None:
    d = daemon(tmp_path, config_text({}))
    before = {name: health_objects(d, name) for name in "abc"}
    assert reload(d, config_text({"b2": 5})) == {"b"}
    assert d.reloader.incremental_loads == 1
    for name in "abc":  # the weight is not part of the check: every server keeps its state object
        assert all(x is y for x, y in zip(before[name], health_objects(d, name), strict=True))
    assert_same_as_a_fresh_adoption(d)


def test_a_check_edit_replaces_that_service_s_targets_only(tmp_path: Path) -> None:
    d = daemon(tmp_path, config_text({}))
    kept = health_objects(d, "a") + health_objects(d, "c")
    old_b = [t for (name, _), t in d.targets.items() if name == "b"]
    assert reload(d, config_text({}, interval="3s")) == {"b"}
    new_b = [t for (name, _), t in d.targets.items() if name == "b"]
    assert {t.spec.interval for t in new_b} == {3.0}
    assert not set(old_b) & set(d.prober.snapshot())
    assert all(x is y for x, y in zip(kept, health_objects(d, "a") + health_objects(d, "c"), strict=True))
    assert_same_as_a_fresh_adoption(d)


def test_removing_and_adding_services(tmp_path: Path) -> None:
    d = daemon(tmp_path, config_text({}))
    assert reload(d, config_text({}, services=("a", "c"))) == {"b", "c"}  # c moved to b's address
    assert_same_as_a_fresh_adoption(d)
    assert reload(d, config_text({}, services=("a", "c", "d"))) == {"d"}
    assert_same_as_a_fresh_adoption(d)
    assert d.reloader.incremental_loads == 2


def test_status_sees_the_kernel_as_the_pass_left_it(tmp_path: Path) -> None:
    """A pass that writes must not leave the daemon's view (status, metrics) on the dump it planned on."""
    d = daemon(tmp_path, config_text({}))
    assert d.config is not None
    key = d.config.services[1].key
    asyncio.run(d.reconcile_once({key}))
    assert len(d.observed[key].dests) == 4  # created by this very pass
    assert reload(d, config_text({"b2": 5})) == {"b"}  # and the reload's own pass over b
    assert {dest.weight for dest in d.observed[key].dests} == {1, 5}


BAD_FILES = {
    "tagged": "services: []\nreconcile-interval: !!int abc\n",
    "tag on a mapping": "services: []\nreconcile-interval: !!set {a, b}\n",
    "nan": "services: []\nreconcile-interval: .nan\n",
    "control character": "services: []\nstate-dir: /var/\x07lib\n",
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_an_invalid_reload_keeps_the_running_config(tmp_path: Path, text: str) -> None:
    d = daemon(tmp_path, config_text({}))
    running, running_targets = d.config, dict(d.targets)
    Path(d.config_path).write_text(text)
    result = asyncio.run(d.reload())
    assert not result.ok and result.errors[0].startswith(f"{d.config_path}:2:"), result.errors
    assert d.config is running and d.targets == running_targets
    assert d.reload_counts == {"ok": 0, "error": 1}


def test_an_unexpected_loader_error_keeps_the_running_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A loader bug (here injected) is an error result and one logged traceback, not the end of mhd."""
    d = daemon(tmp_path, config_text({}))
    running = d.config

    def broken(_path: object) -> None:
        raise RuntimeError("injected loader bug")

    monkeypatch.setattr(d.reloader, "load", broken)
    for _ in range(3):
        result = asyncio.run(d.reload())
        assert not result.ok and "injected loader bug" in result.errors[0]
    assert d.config is running
    tracebacks = [r for r in caplog.records if r.exc_info and "injected loader bug" in r.getMessage()]
    assert len(tracebacks) == 1  # once, however often it recurs


class FailingKernel:
    """A kernel client whose every dump fails with an error no code path expects."""

    def __init__(self) -> None:
        self.calls = 0
        self.writes = 0

    async def services(self) -> object:
        self.calls += 1
        raise RuntimeError("injected pass failure")

    async def service(self, key: object) -> object:
        return await self.services()


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # a bound on waiting, not an assertion on time
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_the_main_loop_survives_failing_passes_and_any_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon(tmp_path, "reconcile-interval: 100ms\n" + config_text({}))
    kernel = FailingKernel()
    d.client = kernel  # type: ignore[assignment]
    good = Path(d.config_path).read_text()

    async def scenario() -> None:
        main = asyncio.create_task(d.main_loop())
        await wait_until(lambda: kernel.calls >= 3, "three failed passes")
        for text in BAD_FILES.values():
            Path(d.config_path).write_text(text)
            assert not (await answer(d.request_reload())).ok
        Path(d.config_path).write_text(good.replace("weight: 1", "weight: 2", 1))
        assert (await answer(d.request_reload())).ok
        await wait_until(lambda: kernel.calls >= 6, "passes after the reloads")
        assert not main.done()
        d.stop()
        await asyncio.gather(main, return_exceptions=True)

    asyncio.run(scenario())
    failures = [r for r in caplog.records if "injected pass failure" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "reconcile pass" in failures[0].getMessage()
    assert d.reload_counts == {"ok": 1, "error": len(BAD_FILES)}


def test_a_reload_is_parsed_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a big file is parsed, the loop keeps running probes, the API and the watchdog: here the
    load waits for a callback that only a running loop can deliver."""
    d = daemon(tmp_path, config_text({}))
    loop_ran = threading.Event()
    real_load = d.reloader.load
    seen: list[bool] = []

    def slow_load(path: str) -> object:
        seen.append(loop_ran.wait(timeout=10))  # on the loop's own thread this could only time out
        return real_load(path)

    monkeypatch.setattr(d.reloader, "load", slow_load)

    async def scenario() -> None:
        main = asyncio.create_task(d.main_loop())
        future = d.request_reload()
        asyncio.get_running_loop().call_later(0.01, loop_ran.set)
        assert (await answer(future)).ok
        d.stop()
        await asyncio.gather(main, return_exceptions=True)

    asyncio.run(scenario())
    assert seen == [True]


class HeldKernel(ModelKernel):
    """A model kernel whose whole dumps (or writes) can be held, as a dump of 16,000 destinations
    under emulation holds a pass for seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_dumps = self.hold_writes = False
        self.release = asyncio.Event()
        self.held = 0  # calls now waiting for `release`
        self.dumps_done = self.dumps_cancelled = 0

    async def _held(self) -> None:
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1

    async def services(self) -> dict[ServiceKey, Service]:
        try:
            if self.hold_dumps:
                await self._held()
        except asyncio.CancelledError:
            self.dumps_cancelled += 1
            raise
        self.dumps_done += 1
        return await super().services()

    async def apply(self, ops: list[Op]) -> list[Any]:
        if self.hold_writes:
            self.writes += len(ops)  # sent, not yet acknowledged
            await self._held()
            self.writes -= len(ops)
        return await super().apply(ops)


def weight_in_kernel(d: Daemon, service: str, server: str) -> int:
    assert d.config is not None and d.client is not None
    svc = d.config.by_name(service)
    assert svc is not None
    table: dict[ServiceKey, Service] = d.client.table  # type: ignore[attr-defined]
    return next(x.weight for x in table[svc.key].dests if str(x.key.address) == server)


def test_a_reload_does_not_wait_for_a_whole_pass_still_reading_the_kernel(tmp_path: Path) -> None:
    """Regression (issue 15, peer benchmark at 16,000 destinations under emulation): a SIGHUP that
    came during the periodic dump waited 9 s for the whole pass. The pass gives way while it has
    written nothing, unless it is already an interval late: then it runs to its end whatever comes."""
    d = daemon(tmp_path, "reconcile-interval: 1s\n" + config_text({}))
    kernel = HeldKernel()
    d.client = kernel  # type: ignore[assignment]

    async def scenario() -> None:
        await d.reconcile_once()
        kernel.hold_dumps = True
        main = asyncio.create_task(d.main_loop())
        await wait_until(lambda: kernel.held == 1, "a whole pass reading the kernel")
        Path(d.config_path).write_text("reconcile-interval: 1s\n" + config_text({"a1": 5}))
        assert (await answer(d.request_reload())).ok  # while the dump is still held
        assert weight_in_kernel(d, "a", "10.1.0.1") == 5
        assert kernel.dumps_cancelled == 1
        await wait_until(lambda: kernel.held == 1, "the next whole pass reading the kernel")
        Path(d.config_path).write_text("reconcile-interval: 1s\n" + config_text({"a1": 6}))
        await asyncio.sleep(1.1)  # the pass is now more than an interval late
        second = d.request_reload()
        await asyncio.sleep(0.2)
        assert not second.done(), "a whole pass an interval late gave way: reloads could starve drift repair"
        done = kernel.dumps_done
        kernel.release.set()
        assert (await answer(second)).ok
        assert kernel.dumps_done > done and weight_in_kernel(d, "a", "10.1.0.1") == 6
        d.stop()
        await asyncio.gather(main, return_exceptions=True)

    asyncio.run(scenario())


def test_a_whole_pass_that_writes_is_not_abandoned_for_a_reload(tmp_path: Path) -> None:
    d = daemon(tmp_path, "reconcile-interval: 100ms\n" + config_text({}))
    kernel = HeldKernel()
    d.client = kernel  # type: ignore[assignment]

    async def scenario() -> None:
        await d.reconcile_once()
        kernel.table.clear()  # drift: the next whole pass writes everything back
        kernel.hold_writes = True
        main = asyncio.create_task(d.main_loop())
        await wait_until(lambda: kernel.held == 1, "a whole pass writing")
        Path(d.config_path).write_text("reconcile-interval: 100ms\n" + config_text({"a1": 5}))
        future = d.request_reload()
        await asyncio.sleep(0.2)
        assert not future.done() and kernel.held == 1
        kernel.release.set()
        assert (await answer(future)).ok
        assert weight_in_kernel(d, "a", "10.1.0.1") == 5 and len(kernel.table) == 3
        d.stop()
        await asyncio.gather(main, return_exceptions=True)

    asyncio.run(scenario())
