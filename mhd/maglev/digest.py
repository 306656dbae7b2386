"""Seeing the fleet agree: a short digest of the Maglev table a service's kernel list builds, and the
share of flows two tables send to different servers.

Pure. The table is the one `mhd.predict.table` builds from the live destination list (kernel order,
head first), so the digest is order-sensitive exactly as the kernel is: two directors with the same
servers added in different orders usually build different tables, and get different digests.

What the digest covers: which server (address, port) each slot sends its clients to, the table size
M, the module variant (in-tree or backport: they build and look up differently) and the lookup
flags (`mh-port`, `mh-fallback`: they change which slot a client reads, and what happens on a slot
whose server is unavailable). Equal digests mean the two directors send every client to the same
server. It names servers, not list positions: two lists whose tables agree slot for slot (one
server, say) get the same digest. Sixteen hex digits of a sha256 (64 bits): short enough for a
metric label and `mhctl status`, and a chance collision between two tables of a fleet is negligible.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping
from typing import Any

import numpy as np

from mhd.maglev.predict import Kept, Model, table
from mhd.maglev.table import MaglevTable, moved_fraction
from mhd.model import MH_FALLBACK, MH_PORT, Dest, DestKey, Service, ServiceKey, parse_ip

DIGEST_LENGTH = 16
FORMAT = "mhd-table-1"


def digest_table(t: MaglevTable, flags: int = 0) -> str:
    """The digest of a built table (see the module docstring for what it covers)."""
    servers = sorted(
        {d.key for d in t.dests}, key=lambda k: (parse_ip(k[0]).version, int(parse_ip(k[0])), k[1])
    )
    position = {k: i for i, k in enumerate(servers)}
    # Slot -> server position in the sorted server list; -1 (empty) stays -1; -2 for the slots of an
    # in-tree weight-0 (quiesced) server, whose clients the fallback walk sends elsewhere.
    elsewhere = t.variant == "intree"
    remap = np.array(
        [-2 if elsewhere and d.weight == 0 else position[d.key] for d in t.dests] + [-1], dtype="<i4"
    )
    slots = remap[t.slots]
    lookup = f"mh-port={int(bool(flags & MH_PORT))} fallback={int(bool(flags & MH_FALLBACK))}"
    header = f"{FORMAT} M={t.size} variant={t.variant} bits={t.bits} ipv{t.family} {lookup}\n"
    listing = "".join(f"{a} {p}\n" for a, p in servers)
    h = hashlib.sha256(header.encode())
    h.update(listing.encode())
    h.update(slots.astype("<i4").tobytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def digest(svc: Service, model: Model, kept: Kept | None = None) -> str:
    """The digest of the table the kernel builds for `svc` (an observed service, kernel order;
    `kept`: the weights its quiesced servers keep, `mhd.maglev.params.kept_weights`)."""
    return digest_table(table(svc, model, kept), svc.flags)


def differing_share(
    a: Service, b: Service, model: Model, model_b: Model | None = None, kept: Kept | None = None
) -> float | None:
    """The share of clients the two services' tables send to different servers, 0.0 to 1.0: the
    flows that break when ECMP moves them between the two directors.

    None when it cannot be said from the tables: different table sizes or variants, or different
    lookup flags (then the two directors hash clients differently and nearly every flow differs).
    A quiesced server's slots count as differing from the same slots of one that is up: its flows
    go elsewhere (`moved_fraction(lookups=True)`).
    """
    model_b = model_b or model
    if model != model_b or (a.flags & (MH_PORT | MH_FALLBACK)) != (b.flags & (MH_PORT | MH_FALLBACK)):
        return None
    return moved_fraction(table(a, model, kept), table(b, model_b, kept), lookups=True)


def table_json(svc: Service, model: Model) -> dict[str, Any]:
    """What a director publishes so another can be compared with it (`mhctl compare`): the digest
    and the inputs of its table, the destination list in kernel order."""
    return {
        "digest": digest(svc, model),
        "table_size": table(svc, model).size,
        "tab_index": model.tab_index,
        "variant": model.variant,
        "flags": svc.flags & (MH_PORT | MH_FALLBACK),
        "family": 6 if svc.key.family == socket.AF_INET6 else 4,
        "dests": [[str(d.key.address), d.key.port, d.weight] for d in svc.dests],
    }


def from_table_json(data: Mapping[str, Any]) -> tuple[Service, Model]:
    """The service and model of a `table_json` document (ValueError/KeyError/TypeError on a bad one)."""
    family = socket.AF_INET6 if data["family"] == 6 else socket.AF_INET
    dests = tuple(Dest(DestKey(parse_ip(str(a)), int(p)), int(w)) for a, p, w in data["dests"])
    svc = Service(ServiceKey(family), "mh", int(data["flags"]), dests=dests)
    variant = data["variant"]
    if variant not in ("intree", "backport"):
        raise ValueError(f"unknown ip_vs_mh variant {variant!r}")
    return svc, Model(int(data["tab_index"]), variant)
