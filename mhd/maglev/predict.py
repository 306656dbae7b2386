"""Maglev answers for kernel services: which server a client goes to, shares, flows a change moves.

The bridge between mhd's kernel model (`Service`, in kernel list order) and the slot-exact table
model (`mhd.maglev.table`). Pure: the callers read the kernel or the config.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping

import numpy as np

from mhd.maglev.params import Model as Model  # re-exported: callers of predict name the model here
from mhd.maglev.table import Family, MaglevTable, MhDest, build_table, moved_fraction
from mhd.model import MH_FALLBACK, MH_PORT, PROTOCOL_NAMES, DestKey, Service, ServiceKey, parse_ip
from mhd.planner import Op, apply_ops

Kept = Mapping[DestKey, int]  # a weight-0 destination's last non-zero weight (params.kept_weights)


def table(svc: Service, model: Model, kept: Kept | None = None) -> MaglevTable:
    """The lookup table the kernel builds for `svc` (its dests in kernel list order)."""
    kept = kept or {}
    dests = [
        MhDest(str(d.key.address), d.key.port, d.weight, kept.get(d.key, 0) if d.weight == 0 else None)
        for d in svc.dests
    ]
    family: Family = 6 if svc.key.family == socket.AF_INET6 else 4
    return build_table(dests, tab_index=model.tab_index, variant=model.variant, family=family)


def parse_client(text: str) -> tuple[str, int]:
    """`addr`, `addr:port` or `[v6addr]:port`; port 0 when absent. ValueError with the reason."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text) or re.fullmatch(r"([0-9.]+)(?::(\d+))?", text)
    address, port = (m.group(1), int(m.group(2) or 0)) if m else (text, 0)
    parse_ip(address)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {text!r}")
    return address, port


def predict(
    svc: Service, clients: list[tuple[str, int]], model: Model, kept: Kept | None = None
) -> list[DestKey | None]:
    """The destination the kernel picks for each (address, port) client; None = no destination."""
    t = table(svc, model, kept)
    if not clients:
        return []
    picks = t.lookup_many(
        [a for a, _ in clients],
        np.array([p for _, p in clients], dtype=np.int64),
        mh_port=bool(svc.flags & MH_PORT),
        fallback=bool(svc.flags & MH_FALLBACK),
        protocol=PROTOCOL_NAMES.get(svc.key.protocol, "udp"),
    )
    return [svc.dests[int(i)].key if i >= 0 else None for i in picks]


def shares(svc: Service, model: Model, kept: Kept | None = None) -> dict[DestKey, float]:
    """Each destination's share of the table's slots (a quiesced one keeps its share, which the
    fallback walk hands on)."""
    t = table(svc, model, kept)
    return {d.key: share for d, share in zip(svc.dests, t.slot_shares(), strict=True)}


def moves(before: Service | None, after: Service | None, model: Model, kept: Kept | None = None) -> float:
    """The share of the hash space whose server changes between two kernel states of a service
    (a quiesced server's slots count as changed: the fallback walk sends their flows elsewhere)."""
    if before is None or after is None or (before.scheduler != "mh" and after.scheduler != "mh"):
        return 0.0 if before == after else 1.0
    return moved_fraction(table(before, model, kept), table(after, model, kept), lookups=True)


def plan_moves(
    observed: Mapping[ServiceKey, Service],
    ops: Iterable[Op],
    model: Model,
    kept: Mapping[ServiceKey, Kept] | None = None,
) -> dict[ServiceKey, float]:
    """For every mh service a plan changes, the share of flows it moves to another server
    (`kept`: per service, `kept_weights`)."""
    ops = list(ops)
    after = apply_ops(observed, ops)
    out: dict[ServiceKey, float] = {}
    for key in {op.service.key for op in ops}:
        new = after.get(key)
        if (new is None or new.scheduler != "mh") and (
            key not in observed or observed[key].scheduler != "mh"
        ):
            continue
        out[key] = moves(observed.get(key), new, model, (kept or {}).get(key))
    return out
