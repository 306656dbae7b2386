"""Which servers belong in IPVS: health, operator drains and the min-healthy guard (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mhd.config.diff import changed_services
from mhd.config.validate import loads
from mhd.membership import desired_state, membership


def service(n: int, min_healthy: str = "1"):  # type: ignore[no-untyped-def]
    servers = ", ".join(f'"10.0.0.{i + 1}"' for i in range(n))
    text = f"services: [{{name: web, address: 10.9.0.1, port: 80, min-healthy: {min_healthy}, servers: [{servers}]}}]"
    return loads(text).services[0]


@given(n=st.integers(1, 12), up=st.sets(st.integers(0, 11)), need=st.integers(0, 12))
def test_members_are_the_healthy_ones_unless_too_few(n: int, up: set[int], need: int) -> None:
    svc = service(n, str(need))
    healthy = {s.key for i, s in enumerate(svc.servers) if i in up}
    m = membership(svc, lambda _svc, key: key in healthy, set())
    if len(healthy) >= min(need, n):
        assert m.members == healthy and not m.panic
    else:
        assert m.members == {s.key for s in svc.servers} and m.panic


def test_percentage_guard_and_drains() -> None:
    svc = service(4, '"50%"')
    keys = [s.key for s in svc.servers]
    one_up = membership(svc, lambda _s, k: k == keys[0], set())
    assert one_up.panic and len(one_up.members) == 4
    two_up = membership(svc, lambda _s, k: k in keys[:2], set())
    assert not two_up.panic and two_up.members == set(keys[:2])
    # A drained server stays out even in panic: the operator's decision wins.
    drained = membership(svc, lambda _s, _k: False, {str(keys[3])})
    assert drained.panic and drained.members == set(keys[:3])


def test_desired_state_builds_kernel_services() -> None:
    config = loads("services: [{name: a, address: 10.9.0.1, port: 80, servers: [10.0.0.1, 10.0.0.2]}]")
    desired, members = desired_state(config, lambda _s, k: str(k) == "10.0.0.2:80", {})
    (want,) = desired.values()
    assert [str(d.key) for d in want.service.dests] == ["10.0.0.2:80"]
    assert not members["a"].panic


def test_changed_services_names_only_what_a_reload_touched() -> None:
    base = "services:\n" + "".join(
        f"  - {{name: s{i}, address: 10.9.0.{i}, port: 80, servers: [10.0.{i}.1, 10.0.{i}.2]}}\n"
        for i in range(1, 6)
    )
    old = loads(base)
    new = loads(
        base.replace("10.0.3.2]", "{address: 10.0.3.2, weight: 5}]").replace("  - {name: s5", "  - {name: s6")
    )
    # A weight change and a rename (the status is keyed by name) are both changes.
    assert {str(k) for k in changed_services(old, new)} == {"tcp:10.9.0.3:80", "tcp:10.9.0.5:80"}
    assert changed_services(old, old) == set()
    fewer = loads(
        base.replace("  - {name: s2, address: 10.9.0.2, port: 80, servers: [10.0.2.1, 10.0.2.2]}\n", "")
    )
    assert {str(k) for k in changed_services(old, fewer)} == {"tcp:10.9.0.2:80"}
