"""Planner properties: idempotence, canonical order whatever the history, minimality, ownership."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mhd.model import MH_PORT, Dest, DestKey, Service, ServiceKey
from mhd.planner import Claims, Desired, Op, apply_ops, canonical, claims, goes_live, plan, unmanaged

KEY = ServiceKey(socket.AF_INET, protocol=17, address=ipaddress.IPv4Address("203.0.113.15"), port=80)
MINE = {KEY}  # what the state dir says mhd owns
OTHER = ServiceKey(socket.AF_INET, protocol=6, address=ipaddress.IPv4Address("203.0.113.16"), port=443)


def dest(i: int, weight: int = 1) -> Dest:
    return Dest(DestKey(ipaddress.IPv4Address(f"10.0.{i // 250}.{i % 250 + 1}"), 80), weight)


def desired(dests: list[Dest], scheduler: str = "mh", key: ServiceKey = KEY) -> dict[ServiceKey, Desired]:
    return {key: Desired("web", Service(key, scheduler, MH_PORT, dests=tuple(dests)))}


servers = st.lists(st.integers(0, 40), unique=True, max_size=12)
weights = st.integers(1, 5)


@st.composite
def kernel_lists(draw: st.DrawFn) -> tuple[Dest, ...]:
    """Any list the kernel could hold: any subset, any order, any weights."""
    ids = draw(servers)
    return tuple(dest(i, draw(weights)) for i in draw(st.permutations(ids)))


@given(want=servers, have=kernel_lists(), w=weights)
def test_plan_reaches_desired_in_canonical_order_and_is_idempotent(
    want: list[int], have: tuple[Dest, ...], w: int
) -> None:
    want_dests = [dest(i, w) for i in want]
    observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
    result = apply_ops(observed, plan(desired(want_dests), observed, MINE))
    assert result[KEY].dests == canonical(want_dests)
    assert plan(desired(want_dests), result, MINE) == []


@given(want=servers, histories=st.lists(kernel_lists(), min_size=2, max_size=2))
def test_two_histories_end_in_the_same_kernel_list(
    want: list[int], histories: list[tuple[Dest, ...]]
) -> None:
    ends = []
    for have in histories:
        observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
        ends.append(apply_ops(observed, plan(desired([dest(i) for i in want]), observed, MINE))[KEY].dests)
    assert ends[0] == ends[1]


@given(want=servers, have=kernel_lists())
def test_plan_is_minimal(want: list[int], have: tuple[Dest, ...]) -> None:
    """No destination is touched twice more than re-sending needs, and kept ones are not deleted."""
    want_dests = canonical(dest(i) for i in want)
    observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
    ops = plan(desired(list(want_dests)), observed, MINE)
    # Lower bound: everything not wanted goes; everything wanted but absent comes.
    have_keys = {d.key for d in have}
    want_keys = {d.key for d in want_dests}
    must = len(have_keys - want_keys) + len(want_keys - have_keys)
    resent = [op for op in ops if op.reason.startswith("canonical")]
    edits = [op for op in ops if op.kind == "edit-dest"]
    assert len(ops) == must + len(resent) + len(edits)
    # Re-sending only happens when the kept destinations are out of canonical order.
    kernel_order = [d.key for d in have if d.key in want_keys]
    if kernel_order == [d.key for d in want_dests if d.key in have_keys] and not want_keys - have_keys:
        assert resent == []


def test_new_destination_in_the_middle_resends_only_the_part_in_front() -> None:
    have = canonical(dest(i) for i in (1, 2, 4, 5))
    observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
    ops = plan(desired([dest(i) for i in (1, 2, 3, 4, 5)]), observed, MINE)
    assert [(op.kind, str(op.dest.key) if op.dest else "") for op in ops] == [
        ("delete-dest", "10.0.0.2:80"),
        ("delete-dest", "10.0.0.3:80"),
        ("add-dest", "10.0.0.4:80"),
        ("add-dest", "10.0.0.3:80"),
        ("add-dest", "10.0.0.2:80"),
    ]


def test_weight_change_is_an_edit_in_place() -> None:
    have = canonical(dest(i) for i in (1, 2, 3))
    observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
    ops = plan(desired([dest(1), dest(2, 7), dest(3)]), observed, MINE)
    assert [op.kind for op in ops] == ["edit-dest"]
    assert ops[0].changes == (("weight", 1, 7),)


def test_scheduler_or_flag_change_is_a_service_edit() -> None:
    observed = {KEY: Service(KEY, "wrr", 0, dests=canonical([dest(1)]))}
    ops = plan(desired([dest(1)]), observed, MINE)
    assert [op.kind for op in ops] == ["edit-service"]
    assert dict((k, (a, b)) for k, a, b in ops[0].changes) == {
        "scheduler": ("wrr", "mh"),
        "flags": ("0x0", "0x10"),
    }


def test_non_mh_service_does_not_reorder() -> None:
    have = (dest(3), dest(1))
    observed = {KEY: Service(KEY, "wrr", MH_PORT, dests=have)}
    assert plan(desired([dest(1), dest(3)], "wrr"), observed, MINE) == []


def test_unowned_services_are_left_alone_and_reported() -> None:
    foreign = Service(OTHER, "rr", 0, dests=(dest(9),))
    observed = {OTHER: foreign}
    ops = plan(desired([dest(1)]), observed, MINE)
    assert all(op.service.key == KEY for op in ops)
    assert unmanaged(desired([dest(1)]), observed) == [OTHER]


@given(want=servers, have=kernel_lists(), sched=st.sampled_from(["mh", "wrr", "none"]))
def test_a_configured_service_mhd_does_not_own_is_left_alone_unless_adopted(
    want: list[int], have: tuple[Dest, ...], sched: str
) -> None:
    """Someone else's service at a configured key: not a single operation on it, and reported as
    refused; with adopt it is planned exactly as if mhd owned it (before: adopted silently)."""
    observed = {KEY: Service(KEY, sched, 0, dests=have)}
    refused = desired([dest(i) for i in want])
    assert plan(refused, observed) == []
    assert claims(refused, observed) == Claims([KEY], []) and unmanaged(refused, observed) == []
    adopt = {KEY: replace(refused[KEY], adopt=True)}
    assert plan(adopt, observed) == plan(refused, observed, MINE)
    assert claims(adopt, observed) == Claims([], [KEY])
    # Owned, or absent from the kernel: nothing to claim, and adopt changes nothing.
    assert claims(refused, observed, MINE) == claims(refused, {}) == Claims([], [])
    assert plan(adopt, {}) == plan(refused, {})


def test_only_the_edit_that_ends_a_staged_creation_goes_live() -> None:
    staged = plan(desired([dest(1), dest(2), dest(3)]), {})
    assert [goes_live(op) for op in staged] == [False] * 4 + [True]
    cut_short = {KEY: Service(KEY, "none", MH_PORT, dests=(dest(2),))}
    assert [goes_live(op) for op in plan(desired([dest(1), dest(2)]), cut_short, MINE)] == [False, True]
    switched = {KEY: Service(KEY, "wrr", MH_PORT, dests=(dest(1),))}
    assert [goes_live(op) for op in plan(desired([dest(1)]), switched, MINE)] == [False]
    assert not any(goes_live(op) for op in plan(desired([dest(1)]), {}))


def test_owned_service_removed_from_config_is_deleted() -> None:
    observed = {OTHER: Service(OTHER, "rr", 0, dests=(dest(9),))}
    ops = plan({}, observed, owned=[OTHER])
    assert [(op.kind, op.service.key) for op in ops] == [("delete-service", OTHER)]


@settings(max_examples=50)
@given(want=servers)
def test_fresh_service_is_added_in_reverse_canonical_order(want: list[int]) -> None:
    ops = plan(desired([dest(i) for i in want]), {})
    assert ops[0].kind == "add-service"
    added = [op.dest.key for op in ops[1:] if op.dest]
    assert added == [d.key for d in reversed(canonical(dest(i) for i in want))]


@settings(max_examples=50)
@given(want=st.lists(st.integers(0, 40), unique=True, min_size=2, max_size=12), sched=st.sampled_from(["mh", "wrr"]))
def test_new_service_gets_its_scheduler_only_after_all_its_servers(want: list[int], sched: str) -> None:
    """Staged creation: while servers are added the service has no scheduler, so no client is ever
    hashed across a partial list; the edit that turns the scheduler on comes last and once."""
    ops = plan(desired([dest(i) for i in want], sched), {})
    assert ops[0].kind == "add-service" and ops[0].service.scheduler == "none"
    assert ops[0].service.flags == MH_PORT  # the flags are there from the start: the edit only adds the scheduler
    assert [op.kind for op in ops[1:-1]] == ["add-dest"] * len(want)
    assert ops[-1].kind == "edit-service" and ops[-1].service.scheduler == sched
    assert ops[-1].changes == (("scheduler", "none", sched),)
    state: dict[ServiceKey, Service] = {}
    for op in ops[:-1]:
        state = apply_ops(state, [op])
        assert state[KEY].scheduler == "none"
    result = apply_ops(state, ops[-1:])
    assert result[KEY] == Service(KEY, sched, MH_PORT, dests=canonical(dest(i) for i in want))


def test_new_service_with_one_server_is_not_staged() -> None:
    """Nothing partial to hide: one add and the server, as before."""
    ops = plan(desired([dest(1)]), {})
    assert [(op.kind, op.service.scheduler) for op in ops] == [("add-service", "mh"), ("add-dest", "mh")]
    assert [op.kind for op in plan(desired([]), {})] == ["add-service"]


def test_service_left_without_scheduler_by_a_crash_is_finished_in_place() -> None:
    """A director that stopped between the staged steps: the next pass edits, never re-creates."""
    observed = {KEY: Service(KEY, "none", MH_PORT, dests=(dest(2), dest(3)))}
    ops = plan(desired([dest(1), dest(2), dest(3)]), observed, MINE)
    assert [op.kind for op in ops] == ["add-dest", "edit-service"]
    assert ops[-1].changes == (("scheduler", "none", "mh"),)
    assert plan(desired([dest(1), dest(2), dest(3)]), apply_ops(observed, ops), MINE) == []


def naive_apply(observed: dict[ServiceKey, Service], ops: list[Op]) -> dict[ServiceKey, Service]:
    """The kernel's list rules written the obvious way (a new tuple per operation): the oracle."""
    state = dict(observed)
    for op in ops:
        key, svc = op.service.key, state.get(op.service.key)
        if op.kind == "add-service":
            state[key] = Service(key, op.service.scheduler, op.service.flags)
        elif op.kind == "delete-service":
            state.pop(key, None)
        elif op.kind == "edit-service":
            assert svc is not None
            state[key] = Service(key, op.service.scheduler, op.service.flags, dests=svc.dests)
        else:
            assert svc is not None and op.dest is not None
            others = tuple(d for d in svc.dests if d.key != op.dest.key)
            if op.kind == "add-dest":
                dests = (op.dest, *others)
            elif op.kind == "delete-dest":
                dests = others
            else:
                dests = tuple(op.dest if d.key == op.dest.key else d for d in svc.dests)
            state[key] = Service(key, svc.scheduler, svc.flags, svc.timeout, svc.netmask, dests)
    return state


dest_ops = st.lists(
    st.tuples(st.sampled_from(["add-dest", "delete-dest", "edit-dest"]), st.integers(0, 12), weights), max_size=40
)


@given(have=kernel_lists(), steps=dest_ops)
def test_apply_ops_follows_the_kernels_list_rules(have: tuple[Dest, ...], steps: list[tuple[str, int, int]]) -> None:
    """Any sequence, including adds of present servers and edits or deletes of absent ones."""
    observed = {KEY: Service(KEY, "mh", MH_PORT, dests=have)}
    svc = observed[KEY]
    ops = [Op(kind, svc, dest(i, w)) for kind, i, w in steps]  # type: ignore[arg-type]
    ops.append(Op("edit-service", Service(KEY, "wrr", 0)))
    assert apply_ops(observed, ops) == naive_apply(observed, ops)
