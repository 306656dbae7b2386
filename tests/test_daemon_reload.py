"""A reload adopts the new config by its difference: the health of untouched servers survives, the
targets of edited services are replaced, and the result equals adopting the whole file afresh."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mhd.config.validate import load
from mhd.daemon import Daemon, changed_services, targets
from mhd.kernel import KernelInfo
from mhd.planner import apply_ops
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
    path = tmp_path / "mhd.yaml"
    path.write_text(text)
    d = Daemon(str(path), str(tmp_path / "state"))
    d.kernel = KernelInfo("6.1.0-test", True, "intree", 12, "default")
    d.config = d._load()
    d._adopt(d.config)
    return d


def reload(d: Daemon, text: str) -> set[str]:
    old = d.config
    Path(d.config_path).write_text(text)
    assert d._reload().ok
    assert d.config is not None and old is not None
    return {s.name for s in (*old.services, *d.config.services) if s.key in changed_services(old, d.config)}


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
    assert d._reloader.incremental_loads == 1
    assert d.config is not None and d._pending == {d.config.services[1].key}
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
    assert d._reloader.incremental_loads == 2


class ModelKernel:
    """IPVS as the planner models it (fine for the daemon's bookkeeping; the VM suite has the real one)."""

    def __init__(self) -> None:
        self.services: dict = {}

    async def service(self, key: object) -> object:
        return self.services.get(key)

    async def apply(self, ops: list) -> list:
        self.services = apply_ops(self.services, ops)
        return []


def test_status_sees_the_kernel_as_the_pass_left_it(tmp_path: Path) -> None:
    """A pass that writes must not leave the daemon's view (status, metrics) on the dump it planned on."""
    d = daemon(tmp_path, config_text({}))
    d.client, d.state = ModelKernel(), StateDir(tmp_path / "state")  # type: ignore[assignment]
    assert d.config is not None
    key = d.config.services[1].key
    asyncio.run(d.reconcile_once({key}))
    assert len(d.observed[key].dests) == 4  # created by this very pass
    reload(d, config_text({"b2": 5}))
    asyncio.run(d.reconcile_once({key}))
    assert {dest.weight for dest in d.observed[key].dests} == {1, 5}
