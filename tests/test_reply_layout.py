"""The one-struct reading of dump replies against the attribute-by-attribute parse it stands in for."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_replies import dest_reply, service_reply
from test_ipvs_codec import dests, services

from mhd import netlink as nl
from mhd import reply_layout
from mhd.ipvs import decode_dest, decode_service, parse_dest, parse_service
from mhd.model import Dest, DestKey, Service, ServiceKey, Stats
from mhd.reply_layout import ANY_SIZE, ReplyReader

# --- the generic reader, on random attribute trees --------------------------------------------------

Tree = list[tuple[int, Any]]  # (type, bytes of a leaf | Tree of a nested attribute)
CODES = {2: "H", 4: "I", 8: "Q", 16: "16s"}


def trees(depth: int = 2) -> st.SearchStrategy[Tree]:
    leaf = st.binary(min_size=0, max_size=20)
    child = leaf if depth == 0 else st.one_of(leaf, st.deferred(lambda: trees(depth - 1)))
    return st.lists(st.tuples(st.integers(1, 40), child), min_size=1, max_size=6, unique_by=lambda a: a[0])


def encode(tree: Tree) -> bytes:
    return b"".join(nl.attr(k, v if isinstance(v, bytes) else encode(v)) for k, v in tree)


def shape(tree: Tree, path: tuple[int, ...] = ()) -> tuple[set[tuple[int, ...]], dict[tuple[int, ...], str]]:
    """The nested paths of a tree, and a code for each leaf (by its size: a fixed code or the whole)."""
    nested: set[tuple[int, ...]] = set()
    wanted: dict[tuple[int, ...], str] = {}
    for kind, value in tree:
        key = (*path, kind)
        if isinstance(value, bytes):
            wanted[key] = CODES.get(len(value), ANY_SIZE)
        else:
            nested.add(key)
            inner_nested, inner_wanted = shape(value, key)
            nested |= inner_nested
            wanted |= inner_wanted
    return nested, wanted


def slow(payload: bytes, skip: int, wanted: dict[tuple[int, ...], str]) -> tuple[Any, ...] | None:
    """What `parse_attrs` and `struct.unpack_from` find for the wanted paths; None when one is missing
    or too short."""
    out: list[Any] = []
    for path, code in wanted.items():
        attrs = nl.parse_attrs(payload[skip:])
        value: memoryview | None = None
        for depth, kind in enumerate(path):
            value = attrs.get(kind)
            if value is None:
                return None
            if depth < len(path) - 1:
                attrs = nl.parse_attrs(value)
        assert value is not None
        if code == ANY_SIZE:
            out.append(bytes(value))
        else:
            try:
                out.append(struct.unpack_from("=" + code, value)[0])
            except struct.error:
                return None
    return tuple(out)


@given(trees(), st.integers(0, 8))
def test_a_well_formed_reply_is_read_in_one_call_as_the_slow_parse_reads_it(tree: Tree, skip: int) -> None:
    payload = bytes(skip) + encode(tree)
    nested, wanted = shape(tree)
    reader = ReplyReader(skip, nested, wanted)
    expected = slow(payload, skip, wanted)
    assert expected is not None
    for _ in range(2):  # the first reply teaches the layout, the second reads with it
        assert reader.read(memoryview(payload)) == (expected if wanted else ())


@given(trees(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4), st.integers(0, 4))
def test_a_damaged_reply_is_read_as_the_slow_parse_reads_it_or_left_to_it(
    tree: Tree, flips: list[tuple[int, int]], cut: int
) -> None:
    """Bytes changed (headers included) or cut off, after the reader learned the original layout:
    it gives the slow parse's values or none, never others."""
    original = encode(tree)
    nested, wanted = shape(tree)
    reader = ReplyReader(0, nested, wanted)
    reader.read(memoryview(original))
    damaged = bytearray(original[: len(original) - cut] if cut < len(original) else original)
    for at, byte in flips:
        if damaged:
            damaged[at % len(damaged)] = byte
    for _ in range(2):
        got = reader.read(memoryview(bytes(damaged)))
        assert got is None or got == slow(bytes(damaged), 0, wanted)


def test_a_repeated_type_is_left_to_the_slow_parse() -> None:
    """parse_attrs keeps the last of two attributes of one type; the reader does not guess."""
    payload = nl.u32(1, 5) + nl.u32(1, 6)
    assert ReplyReader(0, [], {(1,): "I"}).read(memoryview(payload)) is None
    assert slow(payload, 0, {(1,): "I"}) == (6,)


def test_the_reader_forgets_layouts_beyond_its_bound() -> None:
    reader = ReplyReader(0, [], {(1,): ANY_SIZE})
    for size in range(3 * reply_layout.LAYOUTS):
        payload = nl.attr(1, bytes(size * 4))
        assert reader.read(memoryview(payload)) == (bytes(size * 4),)
    assert len(reader._layouts) <= reply_layout.LAYOUTS


# --- IPVS replies as Linux fills them (tests/kernel_replies.py) --------------------------------------


counters = st.lists(st.integers(0, 2**64 - 1), min_size=10, max_size=10)
connections = st.tuples(*[st.integers(0, 2**32 - 1)] * 3)


@given(st.lists(st.tuples(dests(), counters, connections, st.booleans()), min_size=1, max_size=5))
def test_kernel_dest_replies_decode_as_the_reference_parse_decodes_them(
    replies: list[tuple[Dest, list[int], tuple[int, int, int], bool]],
) -> None:
    """A dump's replies, of kernels with and without tunnel attributes, IPv4 and IPv6 mixed: each one
    read in one call equals the attribute-by-attribute parse and the destination it was built from."""
    for dest, values, conns, tunnel in replies:
        payload = dest_reply(dest, values, conns, tunnel)
        got = decode_dest(payload, socket.AF_INET)
        assert got == parse_dest(payload, socket.AF_INET) == dest
        assert got is not None and got.stats == Stats(*conns, *values[:5])


@given(st.lists(st.tuples(services(), counters), min_size=1, max_size=5))
def test_kernel_service_replies_decode_as_the_reference_parse_decodes_them(
    replies: list[tuple[Service, list[int]]],
) -> None:
    for svc, values in replies:
        payload = service_reply(svc, values)
        got = decode_service(payload)
        assert got == parse_service(payload)
        assert got is not None and got.key == svc.key and got.scheduler == svc.scheduler
        assert got.flags == svc.flags and got.stats == Stats(0, 0, 0, *values[:5])


def outcome(parse: Any, *args: Any) -> Any:
    try:
        return parse(*args)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        return type(exc)


@given(
    dests(), counters, connections, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3)
)
def test_a_damaged_dest_reply_decodes_as_the_reference_parse_decodes_it(
    dest: Dest, values: list[int], conns: tuple[int, int, int], flips: list[tuple[int, int]]
) -> None:
    good = dest_reply(dest, values, conns)
    decode_dest(good, socket.AF_INET)  # the reader knows this layout
    damaged = bytearray(good)
    for at, byte in flips:
        damaged[at % len(damaged)] = byte
    view = memoryview(bytes(damaged))
    assert outcome(decode_dest, view, socket.AF_INET) == outcome(parse_dest, view, socket.AF_INET)


@pytest.mark.parametrize("tunnel", [True, False])
def test_a_dump_is_read_in_one_call_per_reply(tunnel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only equal but fast: no reply of a kernel's dump goes to the attribute-by-attribute parse."""
    import mhd.ipvs

    wanted = [Dest(DestKey(ipaddress.ip_address(f"10.0.0.{n}"), 80), weight=n) for n in range(1, 9)]
    replies = [dest_reply(d, [n] * 10, (1, 2, 3), tunnel) for n, d in enumerate(wanted)]
    monkeypatch.setattr(mhd.ipvs, "parse_dest", lambda *args: pytest.fail("parsed attribute by attribute"))
    assert [decode_dest(r, socket.AF_INET) for r in replies] == wanted


def test_services_with_and_without_fwmark_are_read_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel sends a fwmark or (protocol, address, port), never both: one layout each."""
    import mhd.ipvs

    wanted = [
        Service(ServiceKey(socket.AF_INET, protocol=6, address=ipaddress.ip_address("10.1.0.1"), port=443), "mh", 0x30),
        Service(ServiceKey(socket.AF_INET6, fwmark=7), "mh", 0x10, timeout=300, netmask=128),
        Service(ServiceKey(socket.AF_INET6, protocol=17, address=ipaddress.ip_address("2001:db8::5"), port=53), "wrr", 0),
    ]  # fmt: skip
    replies = [service_reply(s, [n] * 10) for n, s in enumerate(wanted)]
    monkeypatch.setattr(mhd.ipvs, "parse_service", lambda *args: pytest.fail("parsed attribute by attribute"))
    got = [decode_service(r) for r in replies]
    assert [(g.key, g.scheduler, g.flags, g.timeout, g.netmask) for g in got if g is not None] == [
        (s.key, s.scheduler, s.flags, s.timeout, s.netmask) for s in wanted
    ]


def test_a_whole_dump_reuses_the_keys_of_the_last_and_forgets_removed_servers() -> None:
    """Equal keys either way; the same objects while a server stays, none held once it is gone."""
    from mhd.ipvs import DestKeys

    a, b = (Dest(DestKey(ipaddress.ip_address(ip), 80)) for ip in ("10.0.0.1", "2001:db8::1"))
    keys = DestKeys()
    keys.turn()
    first = [decode_dest(dest_reply(d, [0] * 10, (0, 0, 0)), socket.AF_INET, keys) for d in (a, b)]
    keys.settle()
    keys.turn()
    again = decode_dest(dest_reply(a, [5] * 10, (1, 0, 0)), socket.AF_INET, keys)
    keys.settle()
    assert first == [a, b] and again == a
    assert again is not None and first[0] is not None and again.key is first[0].key
    assert list(keys.now.values()) == [a.key] and keys.last == {}  # b's key is no longer held
