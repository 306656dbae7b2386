"""The announcement policy: which VIP prefixes this director should announce to its routers, now.

Pure and deterministic (no clock, no I/O): the daemon passes the services' states, whether the
director is drained, the previous decision records and `now`; it gets the prefixes to announce (the
routes `mhd.routes` keeps in its table), the new records and when to decide again. Level-triggered
like the IPVS planner: the same inputs always give the same answer.

The rules, per VIP address:

- **Drained: withdraw.** An operator's drain withdraws every route at once, whatever the health.
- **Before the first verdicts: never announce.** While some server of a service on the VIP has had no
  health verdict yet, the VIP keeps its previous decision: a VIP that was not announced stays
  withdrawn; one that was (a restart: `seed` builds the records from the routes found in the kernel)
  stays announced, so a restart with nothing changed writes no route.
- **Health.** A service is announceable when it is `ok` or `degraded`, and in `panic` when the config
  says so (`Options.announce_panic`, default True: panic means the min-healthy guard keeps every
  server in IPVS because too few look healthy, which is just as likely the checker's own network as
  the servers; if every director withdrew on panic, a fleet-wide check failure would take the VIP off
  the network, the very black hole min-healthy exists to prevent). `down` (no server in the kernel)
  always withdraws.
- **A VIP shared by several services** (ports 80 and 443) is announceable only when *all* of them
  are (`Options.shared = "all"`, the default): the route attracts the traffic of every port, and a
  director that black-holes one of them should let the other directors take the VIP. `"any"` keeps it
  announced while any one service is announceable, for fleets that prefer to keep the healthy ports
  reachable when a sibling service fails on every director.
- **Hold-down.** A withdrawal for health is immediate (sending clients to a director that cannot
  serve them is the worse error), but the next announcement waits until the VIP has been announceable
  without interruption for `hold_down` seconds. So a flapping service flaps its route at most once
  per hold-down (the routers would otherwise recompute ECMP on every flap), and a route that comes
  back is backed by a service that has stayed up for a while. The first announcement of a VIP (start,
  or a VIP new in the config) and an undrain do not wait: nothing flapped, and an operator who
  undrains wants the traffic back. A VIP whose first verdicts say it is not announceable is armed
  like one that failed: it waits the hold-down once it recovers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from mhd.model import IPAddress, ServiceKey

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
SharedRule = Literal["all", "any"]
HEALTHY_STATES = frozenset({"ok", "degraded"})
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
# The kernel's own route protocols (0-4), and those /etc/iproute2/rt_protos gives to routing daemons:
# mhd deletes every route of its table that carries its protocol, so sharing BIRD's (12) or zebra's
# (11) would delete theirs.
RESERVED_PROTOCOLS = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
    11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 18: "keepalived",
    42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp",
}  # fmt: skip
DEFAULT_PROTOCOL = 250


@dataclass(frozen=True)
class ServiceHealth:
    """What the policy needs of one service: its summary state (`mhd.membership.service_state`) and
    whether every one of its servers has had its first health verdict."""

    name: str
    state: str  # ok | degraded | panic | down
    verdicts: bool
    # the servers in IPVS now (their keys): the table this director builds; compared, never shown
    members: frozenset[object] = frozenset()


@dataclass(frozen=True)
class Options:
    """The config's `announce:` policy knobs."""

    announce_panic: bool = True
    hold_down: float = 30.0
    shared: SharedRule = "all"


@dataclass(frozen=True)
class Record:
    """The policy's memory of one VIP between two decisions.

    `announced`: the decision. `healthy_since`: since when the VIP has been announceable for health
    without interruption (None: it is not). `held`: a health failure was seen since the last
    announcement, so the next one waits the hold-down. `changed`: when `announced` last changed.
    """

    announced: bool
    healthy_since: float | None = None
    held: bool = False
    changed: float = 0.0
    members: frozenset[tuple[str, object]] = frozenset()  # (service, server) in IPVS at the last decision


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation. `reasons` says, per VIP, why (for status and logs)."""

    announce: frozenset[Prefix]
    records: dict[IPAddress, Record]
    recheck_at: float | None
    reasons: dict[IPAddress, str] = field(default_factory=dict)


def route_key_problems(table: int, protocol: int) -> list[str]:
    """Problems with an `announce:` table and protocol, as messages naming the key and the fix."""
    problems = []
    if not 1 <= table <= 0xFFFFFFFF or table in RESERVED_TABLES:
        name = RESERVED_TABLES.get(table, "out of range")
        problems.append(
            f"announce.table {table} ({name}) cannot be used: give a table of mhd's own (1..252, or 256 and up)"
        )
    if not 1 <= protocol <= 255 or protocol in RESERVED_PROTOCOLS:
        name = RESERVED_PROTOCOLS.get(protocol, "out of range")
        problems.append(
            f"announce.protocol {protocol} ({name}) cannot be used: mhd deletes every route of its table "
            "with its protocol, so give a number of mhd's own in 1..255 that neither the kernel nor "
            f"another daemon uses (see /etc/iproute2/rt_protos), such as {DEFAULT_PROTOCOL}"
        )
    return problems


def prefix(address: IPAddress) -> Prefix:
    """The host prefix of an address: /32 or /128."""
    return ipaddress.ip_network(address)


def service_vips(key: ServiceKey, addresses: Iterable[IPAddress] = ()) -> tuple[IPAddress, ...]:
    """The VIPs a service announces: its own address, or for a fwmark service the addresses the
    config lists for it (a fwmark has no address of its own)."""
    own = (key.address,) if key.address is not None and not key.fwmark else ()
    return tuple(dict.fromkeys((*own, *addresses)))


def by_vip(
    services: Iterable[tuple[Iterable[IPAddress], ServiceHealth]],
) -> dict[IPAddress, tuple[ServiceHealth, ...]]:
    """Group services by the VIPs they use: the input `decide` takes."""
    out: dict[IPAddress, list[ServiceHealth]] = {}
    for vips, health in services:
        for vip in vips:
            out.setdefault(vip, []).append(health)
    return {vip: tuple(hs) for vip, hs in out.items()}


def seed(announced: Iterable[Prefix], now: float) -> dict[IPAddress, Record]:
    """Records for the routes found in the kernel at start: announced, not held (a restart is not a
    flap), so that an unchanged director keeps its routes through the first verdicts."""
    return {p.network_address: Record(True, None, False, now) for p in announced if p.num_addresses == 1}


def service_ok(h: ServiceHealth, options: Options) -> bool:
    return h.state in HEALTHY_STATES or (h.state == "panic" and options.announce_panic)


def vip_health(services: Sequence[ServiceHealth], options: Options) -> tuple[bool | None, str]:
    """Whether a VIP is announceable for health: True, False, or None while verdicts are pending."""
    if not services:
        return False, "no service uses it"
    if not all(h.verdicts for h in services):
        pending = ", ".join(h.name for h in services if not h.verdicts)
        return None, f"waiting for the first health verdicts of {pending}"
    bad = [h for h in services if not service_ok(h, options)]
    if options.shared == "any" and len(bad) < len(services):
        return True, "announceable" + (f" ({_states(bad)} not)" if bad else "")
    if bad:
        return False, _states(bad)
    return True, "announceable"


def _states(services: Iterable[ServiceHealth]) -> str:
    return ", ".join(f"{h.name} is {h.state}" for h in services)


def decide_vip(
    services: Sequence[ServiceHealth],
    *,
    drained: bool,
    options: Options,
    previous: Record | None,
    now: float,
) -> tuple[Record, str, float | None]:
    """One VIP: its new record, the reason, and when to look again (a hold-down expiry) or None."""
    healthy, reason = vip_health(services, options)
    members = frozenset((h.name, m) for h in services for m in h.members)
    prev = previous if previous is not None else Record(False, None, False, now, members)
    # Waiting to come back after a failure, the hold-down counts from the last change of the server
    # lists: a director whose servers return one by one re-announces only once its table has settled,
    # never with a partial table that its peers (which kept every server) do not build.
    restart = prev.held and not prev.announced and members != prev.members
    prev = replace(prev, members=members, healthy_since=None if restart else prev.healthy_since)
    if healthy is None:  # verdicts pending: keep the decision, never newly announce
        if drained:
            return _set(prev, False, now), "drained", None
        return prev, reason, None
    if not healthy:
        record = replace(_set(prev, False, now), healthy_since=None, held=True)
        return record, ("drained; " if drained else "") + reason, None
    since = prev.healthy_since if prev.healthy_since is not None else now
    record = replace(prev, healthy_since=since)
    if drained:
        return _set(record, False, now), "drained", None
    if record.announced:
        return record, reason, None
    if record.held and now < since + options.hold_down:
        until = since + options.hold_down
        return record, f"hold-down: announceable since {since:g}, waits until {until:g}", until
    return replace(_set(record, True, now), held=False), reason, None


def _set(record: Record, announced: bool, now: float) -> Record:
    if record.announced == announced:
        return record
    return replace(record, announced=announced, changed=now)


def decide(
    vips: Mapping[IPAddress, Sequence[ServiceHealth]],
    *,
    drained: bool,
    options: Options,
    previous: Mapping[IPAddress, Record],
    now: float,
) -> Decision:
    """The prefixes to announce now, the records to keep, and the next time to call again.

    VIPs no longer in `vips` are dropped (withdrawn, forgotten). `recheck_at` is the earliest
    hold-down expiry, or None when nothing changes until the inputs do.
    """
    records: dict[IPAddress, Record] = {}
    reasons: dict[IPAddress, str] = {}
    wakeups: list[float] = []
    for vip in sorted(vips, key=lambda a: (a.version, int(a))):
        record, reason, wake = decide_vip(
            vips[vip], drained=drained, options=options, previous=previous.get(vip), now=now
        )
        records[vip], reasons[vip] = record, reason
        if wake is not None:
            wakeups.append(wake)
    announce = frozenset(prefix(vip) for vip, r in records.items() if r.announced)
    return Decision(announce, records, min(wakeups) if wakeups else None, reasons)
