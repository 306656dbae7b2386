"""Table digests: order-sensitive like the kernel, equal exactly when the client -> server mapping is,
stable across releases; the share of flows two tables disagree on."""

from __future__ import annotations

import json
import socket

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mhd.maglev.digest import differing_share, digest, from_table_json, table_json
from mhd.maglev.predict import Model, table
from mhd.model import MH_FALLBACK, MH_PORT, Dest, DestKey, Service, ServiceKey, parse_ip

KEY = ServiceKey(socket.AF_INET, protocol=17, address=parse_ip("203.0.113.53"), port=53)
MODEL = Model(12, "intree")
SMALL = Model(8, "intree")  # 251 slots: fast properties
PINNED = "ad6540be4a65a57f"  # digest of servers 10.0.0.1..5:53, in that order, M=4093 in-tree, mh-port


def svc(ids: list[int], weights: dict[int, int] | None = None, flags: int = MH_PORT) -> Service:
    weights = weights or {}
    dests = tuple(Dest(DestKey(parse_ip(f"10.0.0.{i}"), 53), weights.get(i, 1)) for i in ids)
    return Service(KEY, "mh", flags, dests=dests)


def mapping(s: Service, model: Model) -> list[DestKey | None]:
    t = table(s, model)
    return [s.dests[i].key if i >= 0 else None for i in t.slots.tolist()]


def test_digest_is_short_stable_and_pinned() -> None:
    d = digest(svc([1, 2, 3, 4, 5]), MODEL)
    assert len(d) == 16 and int(d, 16) >= 0
    # Pinned: a change of this value changes every fleet's metric label; bump FORMAT if intended.
    assert d == PINNED


def test_insertion_order_changes_the_digest_like_it_changes_the_kernel_table() -> None:
    a, b = svc([1, 2, 3, 4, 5]), svc([5, 4, 3, 2, 1])
    assert mapping(a, MODEL) != mapping(b, MODEL)
    assert digest(a, MODEL) != digest(b, MODEL)
    assert digest(a, MODEL) == digest(svc([1, 2, 3, 4, 5]), MODEL)
    share = differing_share(a, b, MODEL)
    assert share is not None and 0.0 < share < 0.1


def test_size_variant_and_lookup_flags_are_part_of_the_digest() -> None:
    s = svc([1, 2, 3], {1: 2})
    digests = {
        digest(s, MODEL),
        digest(s, Model(13, "intree")),
        digest(s, Model(12, "backport")),
        digest(svc([1, 2, 3], {1: 2}, flags=0), MODEL),
        digest(svc([1, 2, 3], {1: 2}, flags=MH_PORT | MH_FALLBACK), MODEL),
    }
    assert len(digests) == 5
    assert differing_share(s, svc([1, 2, 3], {1: 2}, flags=0), MODEL) is None
    assert differing_share(s, s, MODEL, Model(13, "intree")) is None


lists = st.lists(st.integers(1, 12), unique=True, min_size=0, max_size=6)
weights = st.dictionaries(st.integers(1, 12), st.integers(1, 4))


@given(a=lists, b=lists, wa=weights, wb=weights)
def test_equal_digest_iff_equal_mapping_and_share_agrees(
    a: list[int], b: list[int], wa: dict[int, int], wb: dict[int, int]
) -> None:
    sa, sb = svc(a, wa), svc(b, wb)
    same = mapping(sa, SMALL) == mapping(sb, SMALL)
    assert (digest(sa, SMALL) == digest(sb, SMALL)) == same
    share = differing_share(sa, sb, SMALL)
    assert share is not None
    assert (share == 0.0) == same
    ma, mb = np.array([str(k) for k in mapping(sa, SMALL)]), np.array([str(k) for k in mapping(sb, SMALL)])
    assert share == np.count_nonzero(ma != mb) / 251


@given(ids=lists, w=weights, v6=st.booleans())
def test_table_json_round_trips_through_json(ids: list[int], w: dict[int, int], v6: bool) -> None:
    s = svc(ids, w)
    if v6:
        key = ServiceKey(socket.AF_INET6, protocol=17, address=parse_ip("2001:db8::53"), port=53)
        dests = tuple(Dest(DestKey(parse_ip(f"2001:db8::{i}"), 53), w.get(i, 1)) for i in ids)
        s = Service(key, "mh", MH_PORT, dests=dests)
    doc = json.loads(json.dumps(table_json(s, SMALL)))
    back, model = from_table_json(doc)
    assert model == SMALL
    assert digest(back, model) == doc["digest"] == digest(s, SMALL)
    assert differing_share(back, s, SMALL) == 0.0
