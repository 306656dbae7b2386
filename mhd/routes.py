"""The kernel edge for announcements: mhd's routes in its own table, and optionally the VIP addresses.

Level-triggered like the IPVS planner: observe (a dump), plan (pure), act (a few rtnetlink writes).

Routes. For every prefix `mhd.announce` decides to announce, mhd keeps one route in table `table`
marked with protocol `protocol`; the routing daemon imports that table (BIRD: a `kernel` protocol on
the table with `learn`; FRR: `ip import-table`) and exports it over BGP with next-hop self. Only
routes of that table *and* that protocol are mhd's: anything else in the table is never touched, so
the table may be shared and an operator's route in it survives every pass.

Route type: `blackhole`. A route that only exists to be announced is an origination, not a forwarding
instruction, and a blackhole says exactly that: it needs no interface or gateway (nothing to resolve,
nothing that goes away with a link), BIRD's `kernel` protocol imports it (RTD_BLACKHOLE) and exports it
over BGP with its own address as next hop, FRR's zebra imports it as a blackhole nexthop. Packets to a
VIP never use it: the VIP is a local address (the `local` table is consulted first), and table
`table` is not consulted at all unless a rule points at it. Were it misused as a forwarding table,
a blackhole fails closed instead of looping. Do not use the `main` or `local` table.

Addresses (`announce.vip-interface`). mhd adds each VIP as a /32 or /128 to that interface (creating
it as a `dummy` link when it does not exist) and records what it added in `routes.json` in the state
dir *before* adding it; it removes only addresses it recorded, so an address an operator put on the
interface is never removed (and never adopted). Addresses follow the config, not the announcement: a
withdrawn VIP stays local, so packets still in flight while the routers converge are served.

Restart and stop: stopping changes nothing; a restart with nothing changed plans zero writes, since
the plan is the difference between the dump and the desired state.

pyroute2's `IPRoute` (synchronous in 0.7.2, Debian 12's, and in 0.9.x) is the only I/O; a pass is a
few dumps and usually no write, so the daemon can run it in an executor.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from mhd.announce import Prefix
from mhd.state import StateDir

RTN_UNICAST = 1
RTN_BLACKHOLE = 6
ROUTE_TYPE = RTN_BLACKHOLE
IFF_UP = 0x1
RECORD_FILE = "routes.json"

RouteOpKind = Literal["add-route", "delete-route", "add-link", "link-up", "add-address", "delete-address"]


class Route(NamedTuple):
    """A route as dumped: enough to know whether it is mhd's and what it says."""

    prefix: Prefix
    table: int
    protocol: int
    type: int


class RouteOp(NamedTuple):
    kind: RouteOpKind
    prefix: Prefix | None = None
    link: str = ""
    reason: str = ""

    def describe(self) -> str:
        what = f"{self.kind} {self.prefix if self.prefix is not None else ''}".rstrip()
        if self.link:
            what += f" dev {self.link}"
        return what + (f" [{self.reason}]" if self.reason else "")


@dataclass(frozen=True)
class Link:
    """The VIP interface as dumped."""

    name: str
    index: int
    up: bool
    addresses: frozenset[Prefix] = frozenset()


@dataclass(frozen=True)
class Owned:
    """What mhd added and may therefore remove: addresses per interface, and links it created."""

    addresses: frozenset[Prefix] = frozenset()
    link_created: bool = False
    link: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "link_created": self.link_created,
            "addresses": sorted(str(p) for p in sorted(self.addresses, key=_prefix_order)),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Owned:
        return cls(
            frozenset(ipaddress.ip_network(a) for a in data.get("addresses", [])),
            bool(data.get("link_created", False)),
            str(data.get("link", "")),
        )


@dataclass(frozen=True)
class AddressPlan:
    """The address operations, the ownership to record before them and the one after them."""

    ops: list[RouteOp]
    owned_before: Owned
    owned_after: Owned
    foreign: list[Prefix] = field(default_factory=list)  # desired, present, not ours: left alone


def _prefix_order(p: Prefix) -> tuple[int, int, int]:
    return (p.version, int(p.network_address), p.prefixlen)


def plan_routes(
    desired: Iterable[Prefix], observed: Iterable[Route], table: int, protocol: int
) -> list[RouteOp]:
    """Route operations making mhd's routes (table `table`, protocol `protocol`) equal `desired`.

    Routes of any other table or protocol are ignored. One of ours with the wrong type is replaced.
    """
    want = set(desired)
    ours: dict[Prefix, Route] = {}
    for r in observed:
        if r.table == table and r.protocol == protocol:
            ours[r.prefix] = r
    ops: list[RouteOp] = []
    for p in sorted(set(ours) | want, key=_prefix_order):
        have = ours.get(p)
        if have is not None and (p not in want or have.type != ROUTE_TYPE):
            ops.append(
                RouteOp("delete-route", p, reason="withdrawn" if p not in want else "wrong route type")
            )
        if p in want and (have is None or have.type != ROUTE_TYPE):
            ops.append(RouteOp("add-route", p, reason="announce"))
    return ops


def plan_addresses(desired: Iterable[Prefix], name: str, link: Link | None, owned: Owned) -> AddressPlan:
    """Address operations on interface `name` (None: it does not exist yet).

    Adds the desired addresses it lacks and removes the recorded ones no longer desired. An address
    that is present without being ours is left alone and not adopted; a recorded one that vanished
    is forgotten. The ownership is recorded before the writes (`owned_before`) so a crash half-way
    still knows what mhd added, and trimmed after them (`owned_after`).
    """
    want = set(desired)
    mine = set(owned.addresses) if owned.link == name else set()
    created = owned.link_created and owned.link == name
    ops: list[RouteOp] = []
    if link is None:
        ops.append(RouteOp("add-link", link=name, reason="dummy for the VIPs"))
        created, present, mine = True, set[Prefix](), set()
    else:
        present = set(link.addresses)
        mine &= present
        if not link.up and created:
            ops.append(RouteOp("link-up", link=name, reason="mhd created it"))
    adds = sorted(want - present, key=_prefix_order)
    deletes = sorted(mine - want, key=_prefix_order)
    ops += [RouteOp("add-address", p, name) for p in adds]
    ops += [RouteOp("delete-address", p, name, "no longer a VIP") for p in deletes]
    foreign = sorted((want & present) - mine, key=_prefix_order)
    before = Owned(frozenset(mine | set(adds)), created, name)
    after = Owned(frozenset(mine - set(deletes) | set(adds)), created, name)
    return AddressPlan(ops, before, after, foreign)


# ---- the state dir record ------------------------------------------------------------------------


def read_owned(state: StateDir) -> Owned:
    """mhd's addresses from the state dir (none when the file does not exist)."""
    return state.read_file(RECORD_FILE, _owned_from_json, b"{}", RECORD_FIX)


RECORD_FIX = (
    "it records the VIP addresses mhd added; remove it only after deleting those addresses by hand,"
    " or mhd will treat them as someone else's and leave them"
)


def _owned_from_json(data: object) -> Owned:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        return Owned.from_json(data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def write_owned(state: StateDir, owned: Owned) -> None:
    """Record mhd's addresses atomically (`StateDir`'s temporary file, fsync, rename)."""
    state.write_file(RECORD_FILE, owned.to_json())


# ---- the rtnetlink edge --------------------------------------------------------------------------


def _family(p: Prefix) -> int:
    return socket.AF_INET6 if p.version == 6 else socket.AF_INET


class RtnlError(Exception):
    pass


class Kernel:
    """The thin rtnetlink edge: dumps and writes through pyroute2's `IPRoute`."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self.writes = 0  # counted, so tests and status can show that a steady pass writes nothing

    @classmethod
    def open(cls) -> Kernel:
        from pyroute2 import IPRoute  # the full pyroute2 package: only the announcing daemon pays it

        return cls(IPRoute())

    def close(self) -> None:
        self.ipr.close()

    def routes(self, table: int) -> list[Route]:
        """The host routes of one table, both families (filtered here: the same on 0.7 and 0.9)."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.route("dump", family=family):
                t = msg.get_attr("RTA_TABLE") or msg["table"]
                dst = msg.get_attr("RTA_DST")
                if t != table or dst is None:
                    continue
                p = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
                out.append(Route(p, t, msg["proto"], msg["type"]))
        return out

    def announced(self, table: int, protocol: int) -> set[Prefix]:
        """The prefixes mhd's routes announce now: what `mhd.announce.seed` starts from at a restart."""
        return {r.prefix for r in self.routes(table) if r.protocol == protocol}

    def link(self, name: str) -> Link | None:
        """The interface and its addresses, or None when there is none of that name."""
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            return None
        index = found[0]
        msg = self.ipr.get_links(index)[0]
        addrs = set()
        for a in self.ipr.addr("dump"):
            if a["index"] != index:
                continue
            text = a.get_attr("IFA_ADDRESS") if a["family"] == socket.AF_INET6 else a.get_attr("IFA_LOCAL")
            if text:
                addrs.add(ipaddress.ip_network(f"{text}/{a['prefixlen']}", strict=False))
        return Link(name, index, bool(msg["flags"] & IFF_UP), frozenset(addrs))

    def apply_routes(self, ops: Iterable[RouteOp], table: int, protocol: int) -> list[tuple[RouteOp, str]]:
        """Write route ops; returns the failed ones with the kernel's reason (the rest go on)."""
        failures = []
        for op in ops:
            assert op.prefix is not None
            command = "add" if op.kind == "add-route" else "del"
            try:
                self.writes += 1
                self.ipr.route(
                    command,
                    dst=str(op.prefix),
                    family=_family(op.prefix),
                    table=table,
                    proto=protocol,
                    type=ROUTE_TYPE,
                )
            except Exception as exc:  # NetlinkError, OSError: reported per op, never fatal
                failures.append((op, _reason(exc)))
        return failures

    def apply_addresses(self, ops: Iterable[RouteOp]) -> list[tuple[RouteOp, str]]:
        """Write link and address ops; the failed ones with the reason (the rest go on)."""
        failures: list[tuple[RouteOp, str]] = []
        indexes: dict[str, int] = {}
        for op in ops:
            try:
                index = indexes.get(op.link) or self._index(op.link, create=op.kind == "add-link")
                indexes[op.link] = index
                if op.kind in ("add-link", "link-up"):
                    self.writes += 1
                    self.ipr.link("set", index=index, state="up")
                    continue
                assert op.prefix is not None
                self.writes += 1
                self.ipr.addr(
                    "add" if op.kind == "add-address" else "del",
                    index=index,
                    address=str(op.prefix.network_address),
                    prefixlen=op.prefix.prefixlen,
                    family=_family(op.prefix),
                )
            except Exception as exc:  # NetlinkError, OSError: reported per op, never fatal
                failures.append((op, _reason(exc)))
        return failures

    def _index(self, name: str, *, create: bool) -> int:
        if create:
            self.writes += 1
            self.ipr.link("add", ifname=name, kind="dummy")
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise RtnlError(f"no interface {name}")
        return int(found[0])


def _reason(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return f"{os.strerror(code)} (errno {code})"
    return str(exc) or type(exc).__name__


@dataclass
class SyncResult:
    ops: list[RouteOp]
    failures: list[tuple[RouteOp, str]]
    foreign: list[Prefix]


def sync(
    kernel: Kernel,
    state: StateDir,
    *,
    announce: Iterable[Prefix],
    vips: Iterable[Prefix],
    table: int,
    protocol: int,
    interface: str | None,
    dry_run: bool = False,
) -> SyncResult:
    """One pass: the addresses (when `interface` is set) and then the routes.

    Addresses first, so a VIP is local before its route draws traffic. The ownership record is
    written before the address writes and trimmed after them, only when it changes.
    """
    ops: list[RouteOp] = []
    failures: list[tuple[RouteOp, str]] = []
    foreign: list[Prefix] = []
    if interface:
        owned = read_owned(state)
        ap = plan_addresses(vips, interface, kernel.link(interface), owned)
        ops += ap.ops
        foreign = ap.foreign
        if not dry_run and ap.ops:
            if ap.owned_before != owned:
                write_owned(state, ap.owned_before)
            failures += kernel.apply_addresses(ap.ops)
            failed = {op.prefix for op, _ in failures if op.kind == "add-address"}
            created = ap.owned_after.link_created and not any(op.kind == "add-link" for op, _ in failures)
            after = Owned(ap.owned_after.addresses - failed, created, interface)
            if after != ap.owned_before:
                write_owned(state, after)
        elif not dry_run and ap.owned_after != owned:
            write_owned(state, ap.owned_after)  # a vanished address forgotten: a file write, no kernel write
    route_ops = plan_routes(announce, kernel.routes(table), table, protocol)
    ops += route_ops
    if not dry_run:
        failures += kernel.apply_routes(route_ops, table, protocol)
    return SyncResult(ops, failures, foreign)
