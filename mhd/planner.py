"""The planner: desired state x observed kernel state -> the operations that make them equal.

Pure and deterministic. The daemon calls it on every reconcile with a *fresh* dump of the kernel
(level-triggered, like a Kubernetes controller), so whatever happened in between (an operator's
`ipvsadm -d`, a crash half-way through a batch) is repaired by the next plan.

Canonical order. The kernel inserts a new destination at the *head* of a service's list and builds the
Maglev table by walking that list, so two directors with the same servers but different histories can
build different tables. For every `mh` service the planner makes the kernel's list (as dumped, head
first) equal to the canonical order, a function of the set of destinations only. The kept destinations
form a suffix of that order; everything in front of them is (re-)added in reverse canonical order.
Keeping the longest suffix that is already in order minimises the operations.

Staged creation. A new service with two or more destinations is created without a scheduler (the
kernel's "none"), given its destinations, and only then its scheduler, in one edit. Until then the
kernel answers its clients as for a service with no destinations, so it goes live with its whole
list at once instead of hashing clients across a growing partial list (which would differ between
directors at different points of their apply), and `mh` builds its table once instead of after
every add: half the kernel time of a cold apply of 1,000 x 16 (bench/README.md). A crash between
the steps, or a server the kernel refused (`goes_live`), leaves a service without a scheduler,
which the next pass sees and finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from mhd.model import NO_SCHEDULER, Dest, DestKey, OpKind, Service, ServiceKey


class Op(NamedTuple):
    """One netlink write. `changes` says, for display, which fields change from what to what.

    A NamedTuple because a cold start plans 18,000 of them, and a frozen dataclass costs several
    times more to construct (0.06 s of the host's 0.2 s of Python in a cold pass)."""

    kind: OpKind
    service: Service  # the desired service (for deletes: the observed one)
    dest: Dest | None = None
    name: str = ""  # the service's name in the config, "" for one mhd no longer knows
    reason: str = ""
    changes: tuple[tuple[str, object, object], ...] = ()

    def describe(self) -> str:
        what = f"{self.kind} {self.name or '-'} {self.service.key}"
        if self.dest is not None:
            what += f" -> {self.dest.key} weight {self.dest.weight}"
        if self.changes:
            what += " (" + ", ".join(f"{k}: {a} -> {b}" for k, a, b in self.changes) + ")"
        if self.reason:
            what += f" [{self.reason}]"
        return what

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"op": self.kind, "service": self.name, "key": str(self.service.key)}
        if self.dest is not None:
            out["server"] = str(self.dest.key)
            out["weight"] = self.dest.weight
        if self.changes:
            out["changes"] = {k: {"from": _jsonable(a), "to": _jsonable(b)} for k, a, b in self.changes}
        if self.reason:
            out["reason"] = self.reason
        return out


def _jsonable(value: object) -> object:
    return value if isinstance(value, int | str | float | bool) or value is None else str(value)


@dataclass(frozen=True)
class Desired:
    """A service as it should be: `service.dests` is the set of destinations that should be in IPVS
    now (healthy and enabled, and quiesced ones at weight 0), in any order.

    `quiesced` maps each weight-0 destination to the weight whose Maglev slots it keeps: the
    in-tree kernel keeps the last non-zero weight, so a quiesced server that has to be (re-)added
    is added at that weight and then set to 0, and the table is the one with the server up."""

    name: str
    service: Service
    adopt: bool = False  # take it over if the kernel already holds it and mhd does not own it
    quiesced: Mapping[DestKey, int] = field(default_factory=dict)


class Claims(NamedTuple):
    """Configured services the kernel already holds and mhd does not own (someone else's)."""

    refused: list[ServiceKey]  # left alone, reported: the default
    adopted: list[ServiceKey]  # `adopt: true`: taken over, owned from now on


def canonical(dests: Iterable[Dest]) -> tuple[Dest, ...]:
    """Destinations in canonical order: the order every director's kernel list must end up in."""
    return tuple(sorted(dests, key=lambda d: d.key.canonical()))


def plan(
    desired: Mapping[ServiceKey, Desired],
    observed: Mapping[ServiceKey, Service],
    owned: Iterable[ServiceKey] = (),
) -> list[Op]:
    """The operations that turn `observed` into `desired`.

    `owned` names services mhd created or managed before (the state dir); those that are no longer
    desired are deleted. A service in `observed` that mhd does not own is never touched: not when
    it is not desired, and not when it is, unless that service says `adopt` (see `claims`).
    """
    owned = set(owned)
    ops: list[Op] = []
    for key in sorted(owned - set(desired), key=ServiceKey.sort_key):
        if key in observed:
            ops.append(Op("delete-service", observed[key], reason="no longer in the config"))
    for key in sorted(desired, key=ServiceKey.sort_key):
        want, have = desired[key], observed.get(key)
        if have is None or key in owned or want.adopt:
            ops.extend(plan_service(want, have))
    return ops


def claims(
    desired: Mapping[ServiceKey, Desired],
    observed: Mapping[ServiceKey, Service],
    owned: Iterable[ServiceKey] = (),
) -> Claims:
    """Configured services that already exist in the kernel without being mhd's: refused (left
    alone) unless they say `adopt`. Taking one over silently would change someone else's scheduler,
    delete their servers, and delete the whole service once it left the config."""
    owned = set(owned)
    foreign = sorted((k for k in desired if k in observed and k not in owned), key=ServiceKey.sort_key)
    return Claims([k for k in foreign if not desired[k].adopt], [k for k in foreign if desired[k].adopt])


def unmanaged(
    desired: Mapping[ServiceKey, Desired],
    observed: Mapping[ServiceKey, Service],
    owned: Iterable[ServiceKey] = (),
) -> list[ServiceKey]:
    """Services in the kernel that mhd does not own and that are not configured: left alone."""
    mine = set(desired) | set(owned)
    return sorted((k for k in observed if k not in mine), key=ServiceKey.sort_key)


def plan_service(want: Desired, have: Service | None) -> list[Op]:
    """Operations for one service: create it, or edit it in place, then fix its destinations."""
    svc = want.service
    if have is None:
        return plan_create(want)
    ops = []
    if svc.settings() != have.settings():
        changes = tuple(
            (label, old, new)
            for label, old, new in (
                ("scheduler", have.scheduler, svc.scheduler),
                ("flags", hex(have.managed_flags), hex(svc.managed_flags)),
            )
            if old != new
        )
        ops.append(Op("edit-service", svc, name=want.name, changes=changes))
    dest_ops = plan_dests(want.name, svc, have.dests, want.quiesced)
    if have.scheduler == NO_SCHEDULER:  # a staged creation cut short: servers first, scheduler last
        return dest_ops + ops
    return ops + dest_ops


def plan_create(want: Desired) -> list[Op]:
    """Operations that create a service: staged without a scheduler when it has several
    destinations (module docstring), in one add otherwise."""
    svc = want.service
    dests = tuple(reversed(canonical(svc.dests)))
    if len(dests) < 2:
        return [Op("add-service", svc, name=want.name), *_adds(want.name, svc, dests, want.quiesced)]
    staged = replace(svc, scheduler=NO_SCHEDULER, dests=())
    return [
        Op("add-service", staged, name=want.name, reason="staged: no scheduler until its servers are in"),
        *_adds(want.name, staged, dests, want.quiesced),
        Op("edit-service", svc, name=want.name, reason="servers in: scheduler on",
           changes=(("scheduler", NO_SCHEDULER, svc.scheduler),)),
    ]  # fmt: skip


def goes_live(op: Op) -> bool:
    """Is this the edit that gives a staged service its scheduler? The client sends it only after
    every other operation of its batch on that service succeeded, so a staged creation goes live
    whole or stays without a scheduler (answering no client) until a later pass completes it."""
    return op.kind == "edit-service" and any(
        field == "scheduler" and old == NO_SCHEDULER for field, old, _new in op.changes
    )


def _adds(
    name: str, svc: Service, dests: Iterable[Dest], quiesced: Mapping[DestKey, int], reason: str = ""
) -> list[Op]:
    """add-dest for each of `dests`, in that order; a quiesced one is added at the weight whose
    slots it keeps, then set to 0 (`Desired.quiesced`)."""
    ops = []
    for d in dests:
        kept = quiesced.get(d.key) if d.weight == 0 else None
        if kept is None:
            ops.append(Op("add-dest", svc, d, name, reason))
            continue
        added = replace(d, weight=kept)
        ops.append(Op("add-dest", svc, added, name, reason or "quiesced: added at its weight"))
        ops.append(Op("edit-dest", svc, d, name, "quiesced: keeps its slots", (("weight", kept, 0),)))
    return ops


def plan_dests(
    name: str, svc: Service, current: tuple[Dest, ...], quiesced: Mapping[DestKey, int] | None = None
) -> list[Op]:
    """Destination operations for one existing service.

    For `mh` the result leaves the kernel list in canonical order; for other schedulers the list
    order does not matter, so only the set and the settings are fixed.
    """
    want = canonical(svc.dests)
    if current == want:  # in sync, the common case of every periodic pass: no dict to build
        return []
    wanted = {d.key: d for d in want}
    ops = [Op("delete-dest", svc, d, name, "not desired") for d in current if d.key not in wanted]
    remaining = [d for d in current if d.key in wanted]
    present = {d.key for d in remaining}
    if svc.scheduler == "mh":
        split = len(want) - _kept_suffix(want, remaining)
        front, kept = want[:split], {d.key for d in want[split:]}
    else:
        front, kept = tuple(d for d in want if d.key not in present), present
    for d in remaining:
        if d.key in kept and d.settings() != wanted[d.key].settings():
            changes = _dest_changes(d, wanted[d.key])
            ops.append(Op("edit-dest", svc, wanted[d.key], name, changes=changes))
    ops += [
        Op("delete-dest", svc, d, name, "canonical order: re-sent") for d in remaining if d.key not in kept
    ]
    for d in reversed(front):
        ops += _adds(name, svc, (d,), quiesced or {}, "canonical order: re-sent" if d.key in present else "")
    return ops


def _kept_suffix(want: tuple[Dest, ...], remaining: list[Dest]) -> int:
    """Length of the longest suffix of `want` whose destinations appear in `remaining` in order.

    Those can stay in the kernel untouched; everything in front of them must be (re)added, because
    the kernel only ever inserts at the head.
    """
    position = {d.key: i for i, d in enumerate(remaining)}
    k, last = 0, len(remaining)
    for d in reversed(want):
        i = position.get(d.key)
        if i is None or i >= last:
            break
        k, last = k + 1, i
    return k


def _dest_changes(old: Dest, new: Dest) -> tuple[tuple[str, object, object], ...]:
    pairs = (
        ("weight", old.weight, new.weight),
        ("forward", old.forward, new.forward),
        ("u_threshold", old.u_threshold, new.u_threshold),
        ("l_threshold", old.l_threshold, new.l_threshold),
    )
    return tuple(p for p in pairs if p[1] != p[2])


def apply_ops(observed: Mapping[ServiceKey, Service], ops: Iterable[Op]) -> dict[ServiceKey, Service]:
    """What the kernel holds after `ops`, simulated with the kernel's own list semantics.

    Head insertion on add, in-place edits, removal on delete. Used by the tests (idempotence and
    canonical order properties), by `mhctl plan` to predict the table after a change, and by every
    pass for the kernel state it leaves (status, metrics). The destination lists a plan touches are
    edited as lists and frozen once at the end: rebuilding a tuple per operation made a cold pass
    of 1,000 x 16 quadratic per service (136,000 comparisons).
    """
    state = dict(observed)
    lists: dict[ServiceKey, _DestList] = {}
    for op in ops:
        key = op.service.key
        if op.kind == "add-service":
            state[key] = Service(key, op.service.scheduler, op.service.flags, dests=())
            lists[key] = _DestList(())
        elif op.kind == "delete-service":
            state.pop(key, None)
            lists.pop(key, None)
        elif op.kind == "edit-service":
            state[key] = Service(key, op.service.scheduler, op.service.flags, dests=state[key].dests)
        else:
            assert op.dest is not None
            if key not in lists:
                lists[key] = _DestList(state[key].dests)
            lists[key].apply(op.kind, op.dest)
    for key, dests in lists.items():
        svc = state[key]
        state[key] = Service(svc.key, svc.scheduler, svc.flags, svc.timeout, svc.netmask, dests.frozen())
    return state


class _DestList:
    """A destination list being edited by a plan, stored tail first so that the kernel's head
    insertion is an append."""

    def __init__(self, dests: tuple[Dest, ...]) -> None:
        self.reversed = list(reversed(dests))
        self.keys = {d.key for d in dests}

    def apply(self, kind: OpKind, dest: Dest) -> None:
        present = dest.key in self.keys
        if present:
            i = next(i for i, d in enumerate(self.reversed) if d.key == dest.key)
            if kind == "edit-dest":
                self.reversed[i] = dest
                return
            del self.reversed[i]
            self.keys.discard(dest.key)
        if kind == "add-dest":
            self.reversed.append(dest)
            self.keys.add(dest.key)

    def frozen(self) -> tuple[Dest, ...]:
        return tuple(reversed(self.reversed))
