"""`on-failure: quiesce` as pure functions: membership, the planner's weight edits, the config
rules, and the Maglev model's figures. `remove` (the default) must plan exactly as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhd.config.records import ServiceConfig
from mhd.config.validate import loads
from mhd.config.yamlsource import ConfigError
from mhd.daemon import Daemon
from mhd.kernel import KernelError, KernelInfo
from mhd.maglev.digest import differing_share, digest
from mhd.maglev.params import Model, kept_weights
from mhd.maglev.predict import moves, plan_moves, predict, shares
from mhd.membership import HealthView, Membership, desired_state, quiesce_refusals
from mhd.model import MH_FALLBACK, DestKey, ServiceKey
from mhd.planner import Desired, apply_ops, canonical, plan

MODEL = Model(tab_index=9)


def config_text(n: int, policy: str | None, min_healthy: int = 1, weights: tuple[int, ...] = ()) -> str:
    servers = ", ".join(
        f"{{address: 10.0.0.{i + 1}, weight: {weights[i] if i < len(weights) else 1}}}" for i in range(n)
    )
    extra = f", on-failure: {policy}" if policy else ""
    return (
        f"services: [{{name: web, address: 10.9.0.1, port: 80, protocol: udp, mh-port: true,"
        f" min-healthy: {min_healthy}{extra}, servers: [{servers}]}}]"
    )


def health(up: set[DestKey]) -> HealthView:
    return lambda _service, key: key in up


def old_membership(svc: ServiceConfig, healthy: HealthView, disabled: set[str]) -> Membership:
    """The membership of the commit before quiesce (c3d6675), verbatim: `remove` must not change."""
    enabled = [s for s in svc.servers if str(s.key) not in disabled] if disabled else list(svc.servers)
    up = frozenset(s.key for s in enabled if healthy(svc.name, s.key))
    need = svc.min_healthy.required(len(enabled))
    if len(up) < need:
        return Membership(frozenset(s.key for s in enabled), True, len(up), len(enabled))
    return Membership(up, False, len(up), len(enabled))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, tuple[int, ...], int, set[int], set[int], set[int]]:
    """Servers, their weights, min-healthy, who was up before, who is up now, who is drained."""
    n = draw(st.integers(1, 8))
    weights = tuple(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)))
    indexes = st.sets(st.integers(0, n - 1))
    return n, weights, draw(st.integers(0, n)), draw(indexes), draw(indexes), draw(indexes)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_remove_plans_exactly_as_before(scenario) -> None:  # type: ignore[no-untyped-def]
    n, weights, need, before, now, drained = scenario
    for text in (config_text(n, None, need, weights), config_text(n, "remove", need, weights)):
        config = loads(text)
        svc = config.services[0]
        keys = [s.key for s in svc.servers]
        disabled = {"web": {str(keys[i]) for i in drained}}
        observed = apply_ops({}, plan(desired_state(config, health({keys[i] for i in before}), {})[0], {}))
        desired, members = desired_state(config, health({keys[i] for i in now}), disabled)
        old = old_membership(svc, health({keys[i] for i in now}), disabled["web"])
        assert members["web"] == old
        old_desired = {svc.key: Desired("web", svc.service(set(old.members)))}
        assert desired == old_desired
        assert plan(desired, observed, {svc.key}) == plan(old_desired, observed, {svc.key})


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_quiesce_never_deletes_an_enabled_server_and_keeps_the_table(scenario, data) -> None:  # type: ignore[no-untyped-def]
    n, weights, need, before, now, drained = scenario
    config = loads(config_text(n, "quiesce", need, weights))
    svc = config.services[0]
    keys = [s.key for s in svc.servers]
    disabled = {"web": {str(keys[i]) for i in drained}}
    # Any history of health changes, each applied by a pass, ends in the same kernel list.
    observed = apply_ops({}, plan(desired_state(config, health({keys[i] for i in before}), disabled)[0], {}))
    for up in [*data.draw(st.lists(st.sets(st.integers(0, n - 1)), max_size=3)), now]:
        desired, members = desired_state(config, health({keys[i] for i in up}), disabled)
        ops = plan(desired, observed, {svc.key})
        enabled = {k for k in keys if str(k) not in disabled["web"]}
        assert not [op for op in ops if op.kind == "delete-dest" and op.dest and op.dest.key in enabled]
        observed = apply_ops(observed, ops)
        m = members["web"]
        kernel = observed[svc.key]
        assert [d.key for d in kernel.dests] == [d.key for d in canonical(svc.service(enabled).dests)]
        assert {d.key for d in kernel.dests if d.weight == 0} == m.quiesced
        assert m.quiesced == (set() if m.panic else enabled - {keys[i] for i in up})
        assert kernel.flags & MH_FALLBACK
        assert plan(desired, observed, {svc.key}) == []  # idempotent
    # The table is the one with every enabled server up: only the quiesced servers' flows move.
    everyone = apply_ops({}, plan(desired_state(config, health(set(keys)), disabled)[0], {}))[svc.key]
    moved = moves(everyone, observed[svc.key], MODEL, kept_weights(svc))
    share = shares(everyone, MODEL)
    assert moved == pytest.approx(sum(share[k] for k in desired[svc.key].quiesced))


def test_plan_disruption_of_quiesce_is_the_servers_share_and_of_remove_more() -> None:
    figures = {}
    for policy in ("quiesce", "remove"):
        config = loads(config_text(5, policy))
        svc = config.services[0]
        keys = [s.key for s in svc.servers]
        observed = apply_ops({}, plan(desired_state(config, health(set(keys)), {})[0], {}))
        failing = desired_state(config, health(set(keys[1:])), {})[0]
        ops = plan(failing, observed, {svc.key})
        figures[policy] = plan_moves(observed, ops, MODEL, {svc.key: kept_weights(svc)})[svc.key]
    share = shares(observed[svc.key], MODEL)[keys[0]]
    assert figures["quiesce"] == pytest.approx(share)
    assert figures["remove"] > share


def test_a_quiesced_server_is_added_at_its_weight_then_set_to_zero() -> None:
    """At creation (or a canonical re-send) the kernel must learn the weight whose slots it keeps:
    the in-tree module remembers the last non-zero weight, and one added at 0 would take none."""
    config = loads(config_text(3, "quiesce", weights=(1, 4, 1)))
    svc = config.services[0]
    keys = [s.key for s in svc.servers]
    desired, _ = desired_state(config, health({keys[0], keys[2]}), {})
    assert desired[svc.key].quiesced == {keys[1]: 4}
    ops = plan(desired, {})
    assert [(op.kind, op.dest.weight if op.dest else None) for op in ops] == [
        ("add-service", None),
        ("add-dest", 1),
        ("add-dest", 4),
        ("edit-dest", 0),
        ("add-dest", 1),
        ("edit-service", None),
    ]
    made = apply_ops({}, ops)[svc.key]
    assert [d.weight for d in made.dests] == [1, 0, 1]
    # The model, told what the quiesced server keeps, predicts the table of all three up.
    up = apply_ops({}, plan(desired_state(config, health(set(keys)), {})[0], {}))[svc.key]
    clients = [(f"10.200.0.{i % 250 + 1}", 10000 + i) for i in range(3000)]
    with_kept = predict(made, clients, MODEL, kept_weights(svc))
    all_up = predict(up, clients, MODEL)
    assert all(a == b for a, b in zip(with_kept, all_up, strict=True) if b != keys[1])
    assert keys[1] not in with_kept and None not in with_kept


def test_on_failure_is_checked_where_it_is_written() -> None:
    assert loads(config_text(2, None)).services[0].on_failure == "remove"
    quiet = loads(config_text(2, "quiesce")).services[0]
    assert quiet.on_failure == "quiesce" and quiet.flags & MH_FALLBACK
    with pytest.raises(ConfigError, match="on-failure must be one of remove, quiesce"):
        loads(config_text(2, "drain"))
    wrr = "services: [{name: w, address: 10.9.0.1, port: 80, scheduler: wrr, on-failure: quiesce, servers: [10.0.0.1]}]"
    with pytest.raises(ConfigError, match="only applies to scheduler mh"):
        loads(wrr)
    # From defaults, a non-mh service simply keeps removing; the mh one quiesces.
    inherited = (
        "defaults: {on-failure: quiesce}\nservices:\n"
        "  - {name: w, address: 10.9.0.1, port: 80, scheduler: wrr, servers: [10.0.0.1]}\n"
        "  - {name: m, address: 10.9.0.2, port: 80, servers: [10.0.0.1]}\n"
    )
    assert [s.on_failure for s in loads(inherited).services] == ["remove", "quiesce"]
    with pytest.raises(ConfigError, match="needs the in-tree ip_vs_mh") as caught:
        loads("kernel: {module: backport}\n" + inherited)
    assert [(p.line, p.path) for p in caught.value.problems] == [(2, "defaults.on-failure")]
    # Config weights stay > 0: quiesce is a runtime state only.
    with pytest.raises(ConfigError, match="weight 0 is not allowed"):
        loads(config_text(1, "quiesce", weights=(0,)))


def test_quiesce_is_refused_on_a_detected_backport() -> None:
    config = loads(config_text(2, "quiesce"))
    assert quiesce_refusals(config, "intree") == quiesce_refusals(config, None) == []
    (message,) = quiesce_refusals(config, "backport")
    assert "service web" in message and "on-failure: remove" in message
    assert quiesce_refusals(loads(config_text(2, "remove")), "backport") == []


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ("{interval: 2s, timeout: 200ms, fast-interval: 500ms, down-interval: 10s}", None),
        ("{interval: 2s, fast-interval: 3s}", "fast-interval .* at most the interval"),
        ("{interval: 2s, timeout: 1s, fast-interval: 1s}", "longer than the timeout"),
        ("{interval: 2s, down-interval: 1s}", "down-interval .* must not be shorter"),
        ("{interval: 2s, down-interval: 2h}", "check.down-interval"),
        ("{fast-interval: 1ms}", "check.fast-interval"),
    ],
)
def test_fast_and_down_intervals(check: str, error: str | None) -> None:
    text = f"services: [{{name: a, address: 10.9.0.1, port: 80, check: {check}, servers: [10.0.0.1]}}]"
    if error is None:
        spec = loads(text).services[0].check
        assert (spec.fast_interval, spec.down_interval) == (0.5, 10.0)
    else:
        with pytest.raises(ConfigError, match=error):
            loads(text)


def test_kept_weights_are_the_configured_ones() -> None:
    svc = loads(config_text(2, "quiesce", weights=(3, 7))).services[0]
    assert list(kept_weights(svc).values()) == [3, 7]
    assert kept_weights(None) == {}
    assert isinstance(svc.key, ServiceKey)


def test_the_daemon_refuses_quiesce_on_a_detected_backport_at_start_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "mhd.yaml"
    path.write_text(config_text(2, "remove"))
    d = Daemon(str(path), str(tmp_path / "state"))
    d.kernel = KernelInfo("6.1.0-test", True, "backport", 12, "default")
    d.config = d.load_config()  # remove: fine on the backport
    path.write_text(config_text(2, "quiesce"))
    with pytest.raises(KernelError, match="service web: on-failure: quiesce needs the in-tree"):
        d.load_config()  # what start does
    running = d.config
    result = asyncio.run(d.reload())
    assert not result.ok and "needs the in-tree ip_vs_mh" in result.errors[0]
    assert d.config is running  # the running config stays, nothing downgraded


def test_a_quiesced_server_starts_down_after_a_restart(tmp_path: Path) -> None:
    """A restart finds it in IPVS at weight 0: it must not get its weight back before its check
    says so (a server in IPVS otherwise starts up, mhd.health.initial)."""
    path = tmp_path / "mhd.yaml"
    path.write_text(config_text(3, "quiesce").replace("servers:", "check: {type: tcp}, servers:"))
    d = Daemon(str(path), str(tmp_path / "state"))
    d.kernel = KernelInfo("6.1.0-test", True, "intree", 12, "default")
    config = d.load_config()
    svc = config.services[0]
    keys = [s.key for s in svc.servers]
    d.observed = apply_ops({}, plan(desired_state(config, health({keys[0], keys[2]}), {})[0], {}))
    d.adopt(config)
    assert [d.healthy("web", k) for k in keys] == [True, False, True]
    desired, _ = desired_state(config, d.healthy, {})
    assert plan(desired, d.observed, {svc.key}) == []


def test_digests_and_differing_shares_see_a_quiesced_server() -> None:
    """Two directors that quiesced the same server agree; against one with every server up, only
    the quiesced server's share differs (and the digest says they differ)."""
    config = loads(config_text(5, "quiesce"))
    svc = config.services[0]
    keys = [s.key for s in svc.servers]
    up = apply_ops({}, plan(desired_state(config, health(set(keys)), {})[0], {}))[svc.key]
    failing = desired_state(config, health(set(keys[1:])), {})[0]
    quiet = apply_ops({svc.key: up}, plan(failing, {svc.key: up}, {svc.key}))[svc.key]
    kept = kept_weights(svc)
    born_quiet = apply_ops({}, plan(failing, {}))[svc.key]  # created while the server was down
    assert digest(quiet, MODEL, kept) == digest(born_quiet, MODEL, kept) != digest(up, MODEL, kept)
    assert differing_share(up, quiet, MODEL, kept=kept) == pytest.approx(shares(up, MODEL)[keys[0]])
    assert differing_share(quiet, quiet, MODEL, kept=kept) == 0.0
