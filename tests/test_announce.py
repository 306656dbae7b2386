"""The announcement policy: drain, first verdicts, health, shared VIPs, hold-down, determinism."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from mhd.announce import (
    Decision,
    Options,
    Record,
    ServiceHealth,
    by_vip,
    decide,
    prefix,
    seed,
    service_vips,
)
from mhd.model import IPAddress, ServiceKey

VIP = ipaddress.IPv4Address("203.0.113.10")
VIP6 = ipaddress.IPv6Address("2001:db8::10")
OPTS = Options(announce_panic=False, hold_down=30.0)


def h(state: str = "ok", verdicts: bool = True, name: str = "web", members: str = "") -> ServiceHealth:
    return ServiceHealth(name, state, verdicts, frozenset(members.split()))


def run(
    vips: dict[IPAddress, tuple[ServiceHealth, ...]],
    previous: dict[IPAddress, Record] | None = None,
    *,
    drained: bool = False,
    now: float = 100.0,
    options: Options = OPTS,
) -> Decision:
    return decide(vips, drained=drained, options=options, previous=previous or {}, now=now)


def test_ok_and_degraded_announce_down_withdraws() -> None:
    assert run({VIP: (h("ok"),)}).announce == {prefix(VIP)}
    assert run({VIP6: (h("degraded"),)}).announce == {ipaddress.ip_network("2001:db8::10/128")}
    assert run({VIP: (h("down"),)}).announce == frozenset()


def test_panic_follows_the_config() -> None:
    assert run({VIP: (h("panic"),)}).announce == frozenset()
    assert run({VIP: (h("panic"),)}, options=Options(announce_panic=True)).announce == {prefix(VIP)}


def test_first_verdicts_pending_never_announces_but_keeps_a_seeded_route() -> None:
    d = run({VIP: (h("ok", verdicts=False),)})
    assert d.announce == frozenset()
    assert "first health verdicts of web" in d.reasons[VIP]
    # A restart: the route is in the kernel; it stays through the first verdicts (zero writes).
    kept = run({VIP: (h("ok", verdicts=False),)}, seed([prefix(VIP)], 50.0))
    assert kept.announce == {prefix(VIP)}


def test_drain_withdraws_everything_and_undrain_announces_at_once() -> None:
    vips = {VIP: (h(),), VIP6: (h(verdicts=False),)}
    drained = run(vips, seed([prefix(VIP), prefix(VIP6)], 0.0), drained=True, now=10.0)
    assert drained.announce == frozenset()
    undrained = run({VIP: (h(),)}, drained.records, now=11.0)
    assert undrained.announce == {prefix(VIP)}


def test_hold_down_delays_the_reannouncement_only() -> None:
    first = run({VIP: (h(),)}, now=0.0)
    assert first.announce == {prefix(VIP)}
    failed = run({VIP: (h("down"),)}, first.records, now=1.0)
    assert failed.announce == frozenset()
    back = run({VIP: (h(),)}, failed.records, now=2.0)
    assert back.announce == frozenset() and back.recheck_at == 32.0
    assert "hold-down" in back.reasons[VIP]
    assert run({VIP: (h(),)}, back.records, now=31.9).announce == frozenset()
    assert run({VIP: (h(),)}, back.records, now=32.0).announce == {prefix(VIP)}


def test_servers_returning_one_by_one_restart_the_hold_down() -> None:
    """Regression (found by the fleet scenarios on a real kernel): a director cut off from every
    server came back degraded with 2 of 5 servers, and its hold-down, counted from that moment, expired
    while the others were still rising: it re-announced the VIP with a table its peers did not build.
    While the VIP waits to come back, each change of its servers restarts the hold-down."""
    all5 = "a b c d e"
    d = run({VIP: (h(members=all5),)}, now=0.0)
    d = run({VIP: (h("down"),)}, d.records, now=1.0)
    d = run({VIP: (h("degraded", members="a e"),)}, d.records, now=10.0)
    d = run({VIP: (h("degraded", members="a b e"),)}, d.records, now=30.0)
    assert d.announce == frozenset() and d.recheck_at == 60.0  # not 40: the list changed at 30
    d = run({VIP: (h(members=all5),)}, d.records, now=50.0)
    assert run({VIP: (h(members=all5),)}, d.records, now=79.9).announce == frozenset()
    assert run({VIP: (h(members=all5),)}, d.records, now=80.0).announce == {prefix(VIP)}


def test_a_stable_partial_list_is_announced_after_the_hold_down() -> None:
    """A server down on every director leaves the same list everywhere: announce after the hold-down."""
    d = run({VIP: (h("down"),)}, run({VIP: (h(members="a b c"),)}, now=0.0).records, now=1.0)
    d = run({VIP: (h("degraded", members="a b"),)}, d.records, now=2.0)
    assert run({VIP: (h("degraded", members="a b"),)}, d.records, now=32.0).announce == {prefix(VIP)}


def test_a_flap_during_the_hold_down_restarts_it() -> None:
    d = run({VIP: (h("down"),)}, run({VIP: (h(),)}, now=0.0).records, now=1.0)
    d = run({VIP: (h(),)}, d.records, now=2.0)
    d = run({VIP: (h("down"),)}, d.records, now=20.0)
    d = run({VIP: (h(),)}, d.records, now=25.0)
    assert run({VIP: (h(),)}, d.records, now=40.0).announce == frozenset()
    assert run({VIP: (h(),)}, d.records, now=55.0).announce == {prefix(VIP)}


def test_shared_vip_needs_all_services_unless_any() -> None:
    vips = {VIP: (h("ok", name="http"), h("down", name="https"))}
    d = run(vips)
    assert d.announce == frozenset() and "https is down" in d.reasons[VIP]
    assert run(vips, options=Options(shared="any")).announce == {prefix(VIP)}


def test_fwmark_services_announce_their_listed_addresses() -> None:
    fw = ServiceKey(socket.AF_INET, fwmark=7)
    web = ServiceKey(socket.AF_INET, protocol=6, address=VIP, port=80)
    other = ipaddress.IPv4Address("203.0.113.11")
    assert service_vips(fw, [VIP, other]) == (VIP, other)
    assert service_vips(web) == (VIP,)
    grouped = by_vip([(service_vips(fw, [VIP, other]), h(name="fw")), (service_vips(web), h(name="web"))])
    assert grouped == {VIP: (h(name="fw"), h(name="web")), other: (h(name="fw"),)}


def test_vips_that_left_the_config_are_forgotten() -> None:
    d = run({}, seed([prefix(VIP)], 0.0))
    assert d.announce == frozenset() and d.records == {}


# ---- properties ----------------------------------------------------------------------------------

states = st.sampled_from(["ok", "degraded", "panic", "down"])
healths = st.builds(ServiceHealth, st.sampled_from(["a", "b", "c"]), states, st.booleans())
vip_addrs = st.sampled_from([VIP, VIP6, ipaddress.IPv4Address("203.0.113.11")])
inputs = st.dictionaries(vip_addrs, st.lists(healths, min_size=1, max_size=3).map(tuple), max_size=3)
options = st.builds(
    Options, st.booleans(), st.sampled_from([0.0, 5.0, 30.0]), st.sampled_from(["all", "any"])
)
steps = st.lists(st.tuples(inputs, st.booleans(), st.floats(0.0, 20.0)), min_size=1, max_size=15)


def simulate(opts: Options, sequence: list[tuple[dict[IPAddress, tuple[ServiceHealth, ...]], bool, float]]):  # type: ignore[no-untyped-def]
    records: dict[IPAddress, Record] = {}
    now = 0.0
    for vips, drained, dt in sequence:
        now += dt
        d = decide(vips, drained=drained, options=opts, previous=records, now=now)
        yield vips, drained, now, records, d
        records = d.records


@given(opts=options, sequence=steps)
def test_never_announces_while_drained(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    for _vips, drained, _now, _prev, d in simulate(opts, sequence):
        if drained:
            assert d.announce == frozenset()


@given(opts=options, sequence=steps)
def test_never_newly_announces_before_first_verdicts(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    for vips, _drained, _now, prev, d in simulate(opts, sequence):
        for vip, services in vips.items():
            if not all(s.verdicts for s in services) and prefix(vip) in d.announce:
                assert prev[vip].announced


@given(opts=options, sequence=steps)
def test_announces_only_announceable_and_withdraws_down(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    for vips, _drained, _now, _prev, d in simulate(opts, sequence):
        for vip, services in vips.items():
            if all(s.verdicts for s in services) and prefix(vip) in d.announce:
                ok = [
                    s.state in ("ok", "degraded") or (s.state == "panic" and opts.announce_panic)
                    for s in services
                ]
                assert any(ok) if opts.shared == "any" else all(ok)
            if (
                opts.shared == "all"
                and all(s.verdicts for s in services)
                and any(s.state == "down" for s in services)
            ):
                assert prefix(vip) not in d.announce


@given(opts=options, sequence=steps)
def test_deterministic(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    a = [(d.announce, d.records, d.recheck_at) for *_, d in simulate(opts, sequence)]
    b = [(d.announce, d.records, d.recheck_at) for *_, d in simulate(opts, sequence)]
    assert a == b


@given(opts=options, sequence=steps)
def test_no_health_flap_faster_than_hold_down(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    """With no drain involved, a VIP withdrawn at t is not announced again before t + hold_down
    (a VIP that leaves the config is forgotten: one that comes back is new, like an undrain)."""
    withdrawn_at: dict[IPAddress, float] = {}
    for vips, drained, now, prev, d in simulate(opts, [(v, False, dt) for v, _, dt in sequence]):
        assert not drained
        withdrawn_at = {vip: t for vip, t in withdrawn_at.items() if vip in vips}
        for vip in vips:
            was = vip in prev and prev[vip].announced
            now_on = prefix(vip) in d.announce
            if was and not now_on:
                withdrawn_at[vip] = now
            if now_on and not was and vip in withdrawn_at:
                assert now >= withdrawn_at[vip] + opts.hold_down


@given(opts=options, sequence=steps)
def test_recheck_at_is_when_a_held_vip_becomes_announceable(opts: Options, sequence) -> None:  # type: ignore[no-untyped-def]
    """Calling again at `recheck_at` with the same inputs announces something new (the wake-up is
    never spurious), and calling before it changes nothing."""
    for vips, drained, now, _prev, d in simulate(opts, sequence):
        if d.recheck_at is None:
            continue
        assert d.recheck_at > now
        early = decide(vips, drained=drained, options=opts, previous=d.records, now=(now + d.recheck_at) / 2)
        assert early.announce == d.announce
        later = decide(vips, drained=drained, options=opts, previous=d.records, now=d.recheck_at)
        assert later.announce > d.announce
