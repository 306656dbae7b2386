"""Reading the replies of a dump with one struct call each.

A dump of 16,000 destinations is 16,000 replies with the same attributes, in the same order and of the
same sizes: the kernel fills each one with the same function. Read attribute by attribute (`parse_attrs`
into a dict, then a struct call per value) a destination costs ~29 us of Python on the host: 3 s of
every whole pass at 100,000 destinations, ten times that under emulation, where the daemon's own
planning of the same pass costs 0.25 s.

`ReplyReader` learns the byte layout of a reply from one reply, compiles it into one `struct.Struct`,
and reads each later reply of the same length with one unpack and one comparison of all its
attribute headers (length and type, nested ones included): the reply read as one integer, masked to
its header bytes, against the learned reply's, which costs less than unpacking them. Equal headers
at equal offsets mean the attributes are exactly the ones the attribute-by-attribute parse finds,
so the fast read gives the same values or none at all; the caller then parses that reply the slow
way, and the reader learns its layout for the next ones. Nothing here trusts a reply more than the
slow parse does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from mhd.netlink import NLA_TYPE_MASK, NLATTR

ANY_SIZE = "s"  # a wanted value read as the attribute's whole payload, whatever its length
LAYOUTS = 8  # reply lengths remembered; more only when replies keep changing, never in a dump

Path = tuple[int, ...]  # attribute types from the top level down: (DEST, STATS64, CONNS)


@dataclass(frozen=True)
class Layout:
    """One reply's layout: its header bytes (as a mask and their values, over the reply read as one
    little-endian integer) and where each wanted value sits in what `shape` unpacks."""

    shape: struct.Struct
    mask: int
    headers: int
    values: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    absent: tuple[Any, ...]  # the defaults of the optional values this layout lacks, after the unpacked


class _Builder:
    """Walks one reply as `netlink.parse_attrs` would and writes down its struct format."""

    def __init__(self, view: memoryview, nested: frozenset[Path], wanted: Mapping[Path, str]) -> None:
        self.view, self.nested, self.wanted = view, nested, wanted
        self.format: list[str] = ["="]
        self.count = 0  # values the format unpacks so far
        self.header_at: list[int] = []  # byte offsets of the attribute headers
        self.value_at: dict[Path, int] = {}

    def skip(self, size: int) -> None:
        if size:
            self.format.append(f"{size}x")

    def value(self, code: str, path: Path) -> None:
        self.format.append(code)
        self.value_at[path] = self.count
        self.count += 1

    def level(self, offset: int, end: int, path: Path) -> bool:
        """One level of attributes in [offset, end); False where the reply is not one to learn from."""
        seen: set[int] = set()
        while offset + NLATTR.size <= end:
            length, kind = NLATTR.unpack_from(self.view, offset)
            key = (*path, kind & NLA_TYPE_MASK)  # as `netlink.parse_attrs` keys them
            if length < NLATTR.size or offset + length > end or key[-1] in seen:
                return False  # a truncated level or a repeated type: the slow parse's own business
            seen.add(key[-1])
            self.skip(NLATTR.size)  # compared through the mask, not unpacked
            self.header_at.append(offset)
            if not self.attribute(key, offset + NLATTR.size, offset + length):
                return False
            following = min(offset + ((length + 3) & ~3), end)
            self.skip(following - offset - length)
            offset = following
        self.skip(end - offset)  # fewer bytes than a header: ignored, as the slow parse does
        return True

    def attribute(self, key: Path, start: int, end: int) -> bool:
        size = end - start
        if key in self.nested:
            return self.level(start, end, key)
        code = self.wanted.get(key)
        if code is None:
            self.skip(size)
        elif code == ANY_SIZE:
            self.value(f"{size}s", key)
        else:  # a fixed-size value is read from the payload's start, as `struct.unpack_from` reads it
            need = struct.calcsize("=" + code)
            if size < need:
                return False
            self.value(code, key)
            self.skip(size - need)
        return True


def _getter(indexes: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    if len(indexes) > 1:
        return itemgetter(*indexes)
    picked = tuple(indexes)  # itemgetter of one index returns the item, not a tuple; of none, fails
    return lambda values: tuple(values[i] for i in picked)


def learn(
    payload: memoryview,
    skip: int,
    nested: frozenset[Path],
    wanted: Mapping[Path, str],
    optional: Mapping[Path, Any],
) -> Layout | None:
    """The layout of one reply: `skip` bytes of fixed header, then attributes. None when a wanted
    value without a default is missing or the reply is malformed: the slow way reads those."""
    builder = _Builder(payload, nested, wanted)
    builder.skip(skip)
    if len(payload) < skip or not builder.level(skip, len(payload), ()):
        return None
    absent: list[Any] = []
    for path in wanted:
        if path not in builder.value_at:
            if path not in optional:
                return None
            builder.value_at[path] = builder.count + len(absent)
            absent.append(optional[path])
    shape = struct.Struct("".join(builder.format))
    if shape.size != len(payload) or not builder.header_at:  # no attributes: nothing to compare
        return None
    mask = bytearray(len(payload))
    for offset in builder.header_at:
        mask[offset : offset + NLATTR.size] = b"\xff" * NLATTR.size
    headers = int.from_bytes(mask, "little")
    return Layout(
        shape=shape,
        mask=headers,
        headers=int.from_bytes(payload, "little") & headers,
        values=_getter([builder.value_at[path] for path in wanted]),
        absent=tuple(absent),
    )


class ReplyReader:
    """The wanted values of replies that repeat one layout, in the order `wanted` lists them.

    `nested` names the attributes that hold attributes (IPVS does not flag them); every other
    attribute is a leaf. A wanted leaf's code is a struct code read from the start of its payload
    (`"I"` reads a u32 from an attribute of 4 bytes or more, like `struct.unpack_from`) or `ANY_SIZE`
    for its whole payload as bytes. Multi-byte codes are native order, as netlink is. A wanted
    value named in `optional` may be absent (IPVS sends a service's fwmark or its address, never
    both) and reads as its default there, as the slow parse's defaults do.
    """

    def __init__(
        self, skip: int, nested: Iterable[Path], wanted: Mapping[Path, str], optional: Mapping[Path, Any] | None = None
    ) -> None:
        self.skip = skip
        self.nested = frozenset(nested)
        self.wanted = dict(wanted)
        self.optional = dict(optional or {})
        self._layouts: dict[int, Layout] = {}

    def read(self, payload: memoryview) -> tuple[Any, ...] | None:
        """The wanted values, or None: this reply is for the slow parse."""
        known = self._layouts.get(len(payload))
        if known is not None and int.from_bytes(payload, "little") & known.mask == known.headers:
            return known.values(known.shape.unpack(payload) + known.absent)
        # The first reply of its length, or another layout of it. One without a layout to learn
        # (malformed, or without a wanted value) is not remembered: it costs its own learning and no
        # later reply's fast read. Every kernel mhd supports sends what `mhd.ipvs` wants.
        layout = learn(payload, self.skip, self.nested, self.wanted, self.optional)
        if layout is None:
            return None
        if len(self._layouts) >= LAYOUTS:
            self._layouts.clear()
        self._layouts[len(payload)] = layout
        return layout.values(layout.shape.unpack(payload) + layout.absent)
