"""The route and address planners: reach the desired state, idempotent, never touch what is not mhd's."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mhd.announce import Prefix, route_key_problems
from mhd.routes import (
    RTN_BLACKHOLE,
    RTN_UNICAST,
    Link,
    Owned,
    Route,
    RouteOp,
    plan_addresses,
    plan_routes,
    read_owned,
    write_owned,
)
from mhd.state import StateDir

T, P = 100, 252


def net(i: int) -> Prefix:
    return (
        ipaddress.ip_network(f"2001:db8::{i:x}/128")
        if i % 3 == 0
        else ipaddress.ip_network(f"203.0.113.{i}/32")
    )


def run_routes(ops: list[RouteOp], routes: list[Route]) -> list[Route]:
    """The kernel's table after the ops (exact-match delete of our table+protocol, as the edge sends)."""
    out = list(routes)
    for op in ops:
        assert op.prefix is not None
        if op.kind == "add-route":
            out.append(Route(op.prefix, T, P, RTN_BLACKHOLE))
        else:
            match = next(r for r in out if r.prefix == op.prefix and r.table == T and r.protocol == P)
            out.remove(match)
    return out


prefixes = st.sets(st.integers(1, 30).map(net), max_size=8)
foreign_routes = st.lists(
    st.builds(
        Route,
        st.integers(1, 30).map(net),
        st.sampled_from([T, 254, 101]),
        st.sampled_from([P, 4, 186]),
        st.sampled_from([RTN_UNICAST, RTN_BLACKHOLE]),
    ).filter(lambda r: not (r.table == T and r.protocol == P)),
    max_size=6,
)
our_routes = st.lists(
    st.builds(
        Route,
        st.integers(1, 30).map(net),
        st.just(T),
        st.just(P),
        st.sampled_from([RTN_BLACKHOLE, RTN_UNICAST]),
    ),
    max_size=6,
    unique_by=lambda r: r.prefix,
)


@given(want=prefixes, ours=our_routes, foreign=foreign_routes)
def test_routes_reach_desired_touch_only_ours_and_rerun_is_empty(
    want: set[Prefix], ours: list[Route], foreign: list[Route]
) -> None:
    ops = plan_routes(want, ours + foreign, T, P)
    after = run_routes(ops, ours + foreign)
    assert {r.prefix for r in after if r.table == T and r.protocol == P} == want
    assert all(r.type == RTN_BLACKHOLE for r in after if r.table == T and r.protocol == P)

    def order(r: Route) -> tuple[int, int, int, int, int]:
        return (r.prefix.version, int(r.prefix.network_address), r.table, r.protocol, r.type)

    assert sorted((r for r in after if not (r.table == T and r.protocol == P)), key=order) == sorted(
        foreign, key=order
    )
    assert plan_routes(want, after, T, P) == []


def test_route_plan_is_ordered_and_explains() -> None:
    ours = [Route(net(5), T, P, RTN_BLACKHOLE), Route(net(7), T, P, RTN_UNICAST)]
    ops = plan_routes([net(1), net(7)], ours, T, P)
    assert [op.describe() for op in ops] == [
        "add-route 203.0.113.1/32 [announce]",
        "delete-route 203.0.113.5/32 [withdrawn]",
        "delete-route 203.0.113.7/32 [wrong route type]",
        "add-route 203.0.113.7/32 [announce]",
    ]


def run_addresses(ops: list[RouteOp], link: Link | None) -> Link:
    addrs = set(link.addresses) if link else set()
    up = link.up if link else False
    for op in ops:
        if op.kind == "add-link" or op.kind == "link-up":
            up = True
        elif op.kind == "add-address":
            assert op.prefix not in addrs
            addrs.add(op.prefix)
        else:
            addrs.remove(op.prefix)
    return Link("vip0", 7, up, frozenset(addrs))


@given(
    want=prefixes,
    mine=prefixes,
    others=prefixes,
    exists=st.booleans(),
    up=st.booleans(),
    created=st.booleans(),
)
def test_addresses_reach_desired_never_remove_foreign_and_rerun_is_empty(
    want: set[Prefix], mine: set[Prefix], others: set[Prefix], exists: bool, up: bool, created: bool
) -> None:
    others = others - mine
    link = Link("vip0", 7, up, frozenset(mine | others)) if exists else None
    owned = Owned(frozenset(mine), created, "vip0")
    plan = plan_addresses(want, "vip0", link, owned)
    after = run_addresses(plan.ops, link)
    assert want <= after.addresses
    if exists:
        assert others <= after.addresses  # never removed
    assert not (plan.owned_after.addresses & (others - want)), "a foreign address is never adopted"
    assert plan.owned_before.addresses >= plan.owned_after.addresses
    assert after.addresses - want <= others
    again = plan_addresses(want, "vip0", after, plan.owned_after)
    assert again.ops == [] or again.ops == [RouteOp("link-up", link="vip0", reason="mhd created it")]


def test_address_plan_on_a_missing_link_creates_a_dummy_and_records_it() -> None:
    plan = plan_addresses([net(1)], "vip0", None, Owned())
    assert [op.kind for op in plan.ops] == ["add-link", "add-address"]
    assert plan.owned_before == Owned(frozenset({net(1)}), True, "vip0")


def test_a_withdrawn_vip_keeps_its_address() -> None:
    """Addresses follow the VIP list, not the announcement: nothing is planned for a withdrawal."""
    link = Link("vip0", 7, True, frozenset({net(1)}))
    assert plan_addresses([net(1)], "vip0", link, Owned(frozenset({net(1)}), True, "vip0")).ops == []


def test_a_record_for_another_interface_is_not_ours_here() -> None:
    link = Link("vip1", 8, True, frozenset({net(1)}))
    plan = plan_addresses([], "vip1", link, Owned(frozenset({net(1)}), True, "vip0"))
    assert plan.ops == []


def test_owned_record_round_trips_atomically(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert read_owned(state) == Owned()
    owned = Owned(frozenset({net(1), net(3)}), True, "vip0")
    write_owned(state, owned)
    assert read_owned(state) == owned
    assert not list(tmp_path.glob(".*.tmp"))


def test_validate_refuses_reserved_tables_and_protocols() -> None:
    assert route_key_problems(100, 252) == []
    problems = route_key_problems(254, 2)
    assert "announce.table 254 (main)" in problems[0]
    assert "announce.protocol 2 (kernel)" in problems[1]
