"""The bridge from kernel services to the Maglev model: predictions, shares, flows a plan moves."""

from __future__ import annotations

import socket

import pytest

from mhd.maglev.predict import Model, moves, parse_client, plan_moves, predict, shares
from mhd.maglev.table import MhDest, build_table, moved_fraction
from mhd.model import MH_PORT, Dest, DestKey, Service, ServiceKey, parse_ip
from mhd.planner import Desired, plan

KEY = ServiceKey(socket.AF_INET, protocol=17, address=parse_ip("203.0.113.53"), port=53)
MODEL = Model(12, "intree")


def svc(ids: list[int], weights: dict[int, int] | None = None) -> Service:
    weights = weights or {}
    dests = tuple(Dest(DestKey(parse_ip(f"10.0.0.{i}"), 53), weights.get(i, 1)) for i in ids)
    return Service(KEY, "mh", MH_PORT, dests=dests)


def test_predict_follows_the_kernel_list_order_and_the_model() -> None:
    s = svc([3, 1, 2])
    table = build_table([MhDest(f"10.0.0.{i}", 53, 1) for i in (3, 1, 2)], tab_index=12)
    clients = [("198.51.100.1", 1000 + i) for i in range(200)]
    picks = predict(s, clients, MODEL)
    for (addr, port), pick in zip(clients, picks, strict=True):
        idx = table.lookup(addr, port, mh_port=True, fallback=False, protocol="udp")
        assert idx is not None and pick == s.dests[idx].key


def test_shares_sum_to_one_and_follow_weights() -> None:
    got = shares(svc([1, 2, 3], {2: 2}), MODEL)
    assert sum(got.values()) == pytest.approx(1.0)
    assert got[DestKey(parse_ip("10.0.0.2"), 53)] == pytest.approx(0.5, abs=0.01)


def test_plan_moves_is_the_share_of_slots_that_change_server() -> None:
    before = svc([1, 2, 3, 4])  # canonical order, as mhd keeps it
    observed = {KEY: before}
    want = {KEY: Desired("dns", svc([1, 2, 3, 4, 5]))}
    ops = plan(want, observed, owned={KEY})
    moved = plan_moves(observed, ops, MODEL)
    assert set(moved) == {KEY}
    assert 0.0 < moved[KEY] < 0.5  # adding a fifth server moves about a fifth of the flows
    after = svc([1, 2, 3, 4, 5])
    expected = moved_fraction(
        build_table([MhDest(f"10.0.0.{i}", 53, 1) for i in (1, 2, 3, 4)]),
        build_table([MhDest(f"10.0.0.{i}", 53, 1) for i in (1, 2, 3, 4, 5)]),
    )
    assert moved[KEY] == pytest.approx(expected)
    assert moves(after, after, MODEL) == 0.0
    assert plan_moves(observed, [], MODEL) == {}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.1", ("10.0.0.1", 0)),
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ],
)
def test_parse_client(text: str, parsed: tuple[str, int]) -> None:
    assert parse_client(text) == parsed


@pytest.mark.parametrize("text", ["10.0.0", "example.com:80", "[2001:db8::1]:70000"])
def test_parse_client_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_client(text)
