"""A slot-exact model of the Linux Maglev scheduler ``ip_vs_mh``.

mhd needs to know, before and after every change it makes to an IPVS service, which real server
the kernel will pick for a given client. The kernel's choice is a pure function of the service's
destination list, so it can be computed in user space: this module rebuilds the kernel's lookup
table slot for slot and repeats its lookup.

Everything here follows ``net/netfilter/ipvs/ip_vs_mh.c`` (mainline since Linux 4.18):

* The table has ``M = table_size(CONFIG_IP_VS_MH_TAB_INDEX)`` slots (a prime; 4093 by default).
* Each destination's preference list is the permutation ``offset, offset + skip, ...`` (mod M)
  with ``offset = hsiphash(v, key1) % M`` and ``skip = hsiphash(v, key2) % (M - 1) + 1``, where
  ``v = port + addr`` (u32 arithmetic, host order; IPv6 addresses folded by XOR of their four
  32-bit words) and the keys are fixed (``generate_hash_secret``), so every host agrees.
* Weights are divided by their gcd and shifted right until the largest fits in
  ``IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2`` bits, giving each destination ``turns``.
* Population walks the destination list in order, round after round, each destination taking
  ``turns`` slots per visit: the next free slot along its permutation. It stops when every slot
  is taken. The list order is the kernel's (new destinations are inserted at the head; a netlink
  dump returns the list head first), so the table depends on the order of past operations.
* Lookup hashes the client address (and, with the ``mh-port`` flag, the TCP/UDP/SCTP source
  port) with ``key1`` and reads ``table[hash % M]``.

Two variants are modelled, because mhd meets both in the field:

``"intree"``
    The mainline module. Weights come from ``last_weight`` (the last non-zero weight), so a
    destination whose weight is set to 0 keeps its slots; lookups that land on it return no
    destination, unless the service has the ``mh-fallback`` flag, in which case the kernel walks
    further hashes of the client (``ip_vs_mh_get_fallback``) until it meets an available one.
``"backport"``
    The out-of-tree module mhd was seeded with: ports are always hashed for TCP/UDP/SCTP,
    weight-0 destinations are left out of the table (their slots go to the others), the current
    weight is used and there is no fallback.

Population, the one step that is a long chain of dependent operations, runs in C when the
optional extension ``mhd.maglev._fast`` is built (``setup.py``), and in numpy otherwise or when
the environment sets ``MHD_MAGLEV_PURE=1``; both give the same tables.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import socket
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, reduce
from types import ModuleType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from mhd.maglev.params import Variant
from mhd.maglev.siphash import hsiphash, hsiphash_u32, hsiphash_u32_multi
from mhd.model import MH_PRIMES

# The compiled population loop (mhd/maglev/_fast.c, built by setup.py) is optional.
_maglev_fast: ModuleType | None
try:
    _maglev_fast = importlib.import_module("mhd.maglev._fast")
except ImportError:
    _maglev_fast = None

__all__ = [
    "MAX_WEIGHT",
    "TAB_PRIMES",
    "MaglevTable",
    "MhDest",
    "build_table",
    "fold_address",
    "moved_fraction",
    "table_size",
]

#: Table sizes for CONFIG_IP_VS_MH_TAB_INDEX = 8 .. 17 (``primes[]`` in ip_vs_mh.c).
TAB_PRIMES: Final = MH_PRIMES

#: The kernel stores weights in an ``int``; ip_vs_ctl.c rejects negative ones.
MAX_WEIGHT: Final = 2**31 - 1

#: ``generate_hash_secret``: both halves of each key are the same constant.
KEY_OFFSET: Final = (2654435761, 2654435761)
KEY_SKIP: Final = (2654446892, 2654446892)

#: ``ip_vs_mh_get_port`` reads a port only for these; every other protocol hashes port 0.
PORT_PROTOCOLS: Final = frozenset({"tcp", "udp", "sctp"})

Bits = Literal[64, 32]
Family = Literal[4, 6]

_U32_MASK: Final = 0xFFFFFFFF


def table_size(tab_index: int = 12) -> int:
    """Number of slots of the kernel's table for ``CONFIG_IP_VS_MH_TAB_INDEX = tab_index``."""
    if isinstance(tab_index, bool) or not isinstance(tab_index, int):
        raise TypeError(f"tab_index must be an int, not {type(tab_index).__name__}")
    if not 8 <= tab_index <= 17:
        raise ValueError(f"tab_index must be within 8..17 (Kconfig range), not {tab_index}")
    return TAB_PRIMES[tab_index - 8]


def _tab_bits(tab_index: int) -> int:
    return tab_index // 2


@dataclass(frozen=True)
class MhDest:
    """One real server of an IPVS service, as the scheduler sees it.

    ``address`` is normalised to its canonical text form, so destinations compare equal exactly
    when the kernel would treat them as the same one (same address and port).

    ``last_weight`` is the in-tree kernel's memory of the last non-zero weight: ip_vs_ctl.c sets
    it on every add and on every edit to a non-zero weight. ``None`` means "equal to ``weight``",
    which is what the kernel holds after an add or any non-zero edit; it only needs a value for a
    destination edited down to weight 0. A destination *added* with weight 0 has
    ``last_weight == 0`` and takes no slots.
    """

    address: str
    port: int
    weight: int
    last_weight: int | None = None

    def __post_init__(self) -> None:
        try:
            addr = ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise ValueError(f"not an IPv4/IPv6 address: {self.address!r}") from exc
        object.__setattr__(self, "address", str(addr))
        _check_int("port", self.port, 0, 0xFFFF)
        _check_int("weight", self.weight, 0, MAX_WEIGHT)
        if self.last_weight is not None:
            _check_int("last_weight", self.last_weight, 0, MAX_WEIGHT)
            if self.weight != 0 and self.last_weight != self.weight:
                raise ValueError(
                    "last_weight differs from a non-zero weight, which the kernel never holds "
                    f"(weight={self.weight}, last_weight={self.last_weight})"
                )

    @cached_property
    def _parsed(self) -> tuple[int, int]:
        """(address as an integer, IP version), parsed once: tables get rebuilt often."""
        addr = ipaddress.ip_address(self.address)
        return int(addr), addr.version

    @property
    def family(self) -> Family:
        """4 or 6: the address family of ``address``."""
        return 6 if self._parsed[1] == 6 else 4

    def fold(self, family: Family | None = None) -> int:
        """:func:`fold_address` of this destination's address, read as ``family``."""
        return _fold_value(*self._parsed, family)

    @property
    def key(self) -> tuple[str, int]:
        """What identifies the destination within a service: (address, port)."""
        return (self.address, self.port)

    def effective_last_weight(self) -> int:
        """The in-tree kernel's ``last_weight`` for this destination."""
        return self.weight if self.last_weight is None else self.last_weight


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be within {lo}..{hi}, not {value}")


def fold_address(address: str, family: Family | None = None) -> int:
    """The 32-bit host-order value ``ip_vs_mh_hashkey`` adds to the port for ``address``.

    An IPv4 address is its own value; an IPv6 address is the XOR of its four 32-bit words. The
    kernel reads the address through the *service's* family (``svc->af``), which only matters
    for the mixed-family destinations IPVS allows with tunnelling: an IPv4 destination of an
    IPv6 service hashes as its own value (the rest of ``union nf_inet_addr`` is zero), an IPv6
    destination of an IPv4 service hashes as its first 32-bit word. ``family=None`` uses the
    address's own family.
    """
    addr = ipaddress.ip_address(address)
    return _fold_value(int(addr), addr.version, family)


def _fold_value(value: int, version: int, family: Family | None) -> int:
    if version == 4:
        return value
    if family == 4:
        return value >> 96
    return (value >> 96) ^ ((value >> 64) & _U32_MASK) ^ ((value >> 32) & _U32_MASK) ^ (value & _U32_MASK)


def _fold_many(addresses: Iterable[str], family: Family) -> npt.NDArray[np.uint32]:
    """Fold many client addresses of one family; repeated addresses are parsed once."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    cache: dict[str, int] = {}
    out: list[int] = []
    append = out.append
    for text in addresses:
        value = cache.get(text)
        if value is None:
            try:
                raw = socket.inet_pton(af, text)
            except (OSError, TypeError) as exc:
                raise ValueError(f"not an IPv{family} address: {text!r}") from exc
            if family == 4:
                value = int.from_bytes(raw, "big")
            else:
                w = int.from_bytes(raw, "big")
                value = (w >> 96) ^ ((w >> 64) & _U32_MASK) ^ ((w >> 32) & _U32_MASK) ^ (w & _U32_MASK)
            cache[text] = value
        append(value)
    return np.array(out, dtype=np.uint32)


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, eq=False)
class MaglevTable:
    """A predicted ``ip_vs_mh`` lookup table.

    ``slots[i]`` is the index into ``dests`` of the destination the kernel stores in slot ``i``,
    or -1 when the slot is empty (the kernel leaves all of them empty when no destination has a
    positive weight). ``turns[j]`` is how many slots ``dests[j]`` takes per round; 0 means the
    destination takes no slots at all.
    """

    dests: tuple[MhDest, ...]
    slots: npt.NDArray[np.intp] = field(repr=False)
    turns: tuple[int, ...]
    tab_index: int = 12
    variant: Variant = "intree"
    bits: Bits = 64
    family: Family = 4

    @property
    def size(self) -> int:
        """M, the number of slots."""
        return int(self.slots.shape[0])

    @property
    def empty(self) -> bool:
        """True when the kernel's table holds no destination at all."""
        return bool(self.size == 0 or self.slots[0] < 0)

    def slot_counts(self) -> list[int]:
        """How many slots each destination holds, in ``dests`` order."""
        used = self.slots[self.slots >= 0]
        return [int(c) for c in np.bincount(used, minlength=len(self.dests))]

    def slot_shares(self) -> list[float]:
        """The share of the hash space (slots) each destination holds, in ``dests`` order.

        For the in-tree variant a weight-0 destination keeps its share here even though lookups
        landing on it find no destination (or fall back): this is the table, not the traffic.
        """
        m = self.size
        return [c / m for c in self.slot_counts()]

    def max_mean_ratio(self) -> float:
        """Maglev's imbalance figure: the largest ratio of a destination's slots to its fair share.

        The fair share of a destination is ``M * turns / sum(turns)``, so for equal weights this
        is the paper's max/mean load. 1.0 is perfect balance; an empty table gives 0.0.
        """
        total = sum(self.turns)
        if total == 0 or self.empty:
            return 0.0
        counts = self.slot_counts()
        m = self.size
        return max(c / (m * t / total) for c, t in zip(counts, self.turns, strict=True) if t > 0)

    def _available(self) -> npt.NDArray[np.bool_]:
        """Per destination: would ``is_unavailable()`` pass it (weight > 0)."""
        return np.array([d.weight > 0 for d in self.dests], dtype=bool)

    def _hash_port(self, port: int, mh_port: bool, protocol: str) -> int:
        if protocol.lower() not in PORT_PROTOCOLS:
            return 0
        if self.variant == "backport" or mh_port:
            return port
        return 0

    def lookup(
        self,
        client_address: str,
        client_port: int,
        *,
        mh_port: bool,
        fallback: bool,
        protocol: str = "udp",
    ) -> int | None:
        """The index into ``dests`` the kernel schedules this client to, or None.

        ``mh_port`` and ``fallback`` are the service's ``mh-port`` and ``mh-fallback`` flags;
        the port only counts for TCP, UDP and SCTP. None is the kernel's "no destination
        available": an empty table, or (in-tree) a weight-0 destination without fallback, or a
        fallback walk that found no available destination. The backport ignores both flags.
        """
        _check_int("client_port", client_port, 0, 0xFFFF)
        if self.empty:
            return None
        fold = self._client_fold(client_address)
        port = self._hash_port(client_port, mh_port, protocol)
        m = self.size
        key, bits = KEY_OFFSET, self.bits
        ihash = hsiphash(((port + fold) & _U32_MASK).to_bytes(4, "little"), key, bits=bits) % m
        idx = int(self.slots[ihash])
        if idx < 0:
            return None
        if self.variant == "backport" or self.dests[idx].weight > 0:
            return idx
        if not fallback:
            return None
        # ip_vs_mh_get_fallback: rehash with increasing offsets, starting from ihash.
        for offset in range(m):
            roffset = (offset + ihash) % m
            v = (roffset + port + fold) & _U32_MASK
            idx = int(self.slots[hsiphash(v.to_bytes(4, "little"), key, bits=bits) % m])
            if idx < 0:
                return None
            if self.dests[idx].weight > 0:
                return idx
        return None

    def lookup_many(
        self,
        addresses: Sequence[str] | npt.NDArray[np.integer],
        ports: Sequence[int] | npt.NDArray[np.integer] | int,
        *,
        mh_port: bool,
        fallback: bool,
        protocol: str = "udp",
    ) -> npt.NDArray[np.intp]:
        """Vectorised :meth:`lookup`: an array of ``dests`` indices, -1 for "no destination".

        ``addresses`` is a sequence of address strings of the table's family, or an integer
        array of already folded values (:func:`fold_address`; for IPv4 simply the address as an
        integer), which skips parsing. ``ports`` is a sequence, an array or one port for all.
        """
        if isinstance(addresses, np.ndarray):
            folds = addresses.astype(np.uint64) & np.uint64(_U32_MASK)
        else:
            if self.empty:
                folds = np.zeros(len(addresses), dtype=np.uint64)
            else:
                folds = _fold_many(addresses, self.family).astype(np.uint64)
        n = folds.shape[0]
        port_arr = np.broadcast_to(np.asarray(ports, dtype=np.int64), (n,))
        if port_arr.size and (port_arr.min() < 0 or port_arr.max() > 0xFFFF):
            raise ValueError("ports must be within 0..65535")
        if self.empty or n == 0:
            return np.full(n, -1, dtype=np.intp)
        if self._hash_port(1, mh_port, protocol) == 0:
            port_arr = np.zeros(n, dtype=np.int64)
        base = (folds + port_arr.astype(np.uint64)) & np.uint64(_U32_MASK)
        m = self.size
        ihash = hsiphash_u32(base, KEY_OFFSET, bits=self.bits).astype(np.int64) % m
        result = self.slots[ihash].astype(np.intp)
        if self.variant == "backport":
            return result
        avail = self._available()
        bad = np.flatnonzero((result >= 0) & ~avail[np.maximum(result, 0)])
        result[bad] = -1
        if not fallback or bad.size == 0:
            return result
        if not avail[self.slots].any():
            return result  # the walk would go round the whole table and find nobody
        # ip_vs_mh_get_fallback for the clients that landed on an unavailable destination,
        # all of them advancing through the offsets together.
        pend = bad
        pend_ihash = ihash[pend]
        pend_base = base[pend]
        for offset in range(m):
            roffset = (pend_ihash + offset) % m
            v = (pend_base + roffset.astype(np.uint64)) & np.uint64(_U32_MASK)
            idx = self.slots[hsiphash_u32(v, KEY_OFFSET, bits=self.bits).astype(np.int64) % m]
            # An empty slot ends the walk with no destination (only possible in an empty
            # table, which never gets here, but the kernel checks it and so does the model).
            ok = (idx >= 0) & avail[np.maximum(idx, 0)]
            result[pend[ok]] = idx[ok]
            keep = (idx >= 0) & ~ok
            if not keep.any():
                break
            pend, pend_ihash, pend_base = pend[keep], pend_ihash[keep], pend_base[keep]
        return result

    def _client_fold(self, address: str) -> int:
        addr = ipaddress.ip_address(address)
        if addr.version != self.family:
            raise ValueError(f"client {address} is not IPv{self.family} like the service")
        return fold_address(address, self.family)


def moved_fraction(before: MaglevTable, after: MaglevTable) -> float:
    """The share of slots whose destination differs between two tables of the same size.

    Destinations are compared by (address, port), not by index, because the same server usually
    sits at a different list position after a change. An empty slot counts as its own value.
    The result is symmetric and 0.0 for identical tables.
    """
    if before.size != after.size:
        raise ValueError(f"tables differ in size ({before.size} and {after.size} slots)")
    ids: dict[tuple[str, int], int] = {}
    for d in (*before.dests, *after.dests):
        ids.setdefault(d.key, len(ids))
    map_b = np.array([ids[d.key] for d in before.dests] + [-1], dtype=np.int64)
    map_a = np.array([ids[d.key] for d in after.dests] + [-1], dtype=np.int64)
    # Index -1 (empty slot) picks the trailing -1 of each map.
    changed = map_b[before.slots] != map_a[after.slots]
    return float(np.count_nonzero(changed)) / before.size


# ---------------------------------------------------------------------------------------------
# Building


def build_table(
    dests: Sequence[MhDest],
    *,
    tab_index: int = 12,
    variant: Variant = "intree",
    bits: Bits = 64,
    family: Family | None = None,
) -> MaglevTable:
    """Predict the kernel's lookup table for a service whose destination list is ``dests``.

    ``dests`` must be in the kernel's list order (a netlink dump's order, head first).
    ``bits`` selects the hash of a 64-bit or a 32-bit kernel. ``family`` is the service's
    address family; it defaults to the destinations' one and must be given when they mix.
    """
    table_size(tab_index)
    if variant not in ("intree", "backport"):
        raise ValueError(f"variant must be 'intree' or 'backport', not {variant!r}")
    if bits not in (64, 32):
        raise ValueError(f"bits must be 64 or 32, not {bits!r}")
    dests = tuple(dests)
    for d in dests:
        if not isinstance(d, MhDest):
            raise TypeError(f"destinations must be MhDest, not {type(d).__name__}")
    if len({d.key for d in dests}) != len(dests):
        raise ValueError("the same (address, port) appears twice; IPVS refuses that")
    families = {d.family for d in dests}
    if family is None:
        if len(families) > 1:
            raise ValueError("destinations mix IPv4 and IPv6: pass the service's family")
        family = families.pop() if families else 4
    elif family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    m = table_size(tab_index)
    if len(dests) > m:
        raise ValueError(f"{len(dests)} destinations exceed the {m} slots (kernel: EINVAL)")

    weights = [d.weight if variant == "backport" else d.effective_last_weight() for d in dests]
    turns = _turns(weights, _tab_bits(tab_index))
    slots: npt.NDArray[np.intp]
    if not any(turns):
        slots = np.full(m, -1, dtype=np.intp)
    else:
        offsets, skips = _permutations(dests, family, m, bits)
        turns_np = np.array(turns, dtype=np.int64)
        if _populate_path() == "compiled":
            slots = _populate_compiled(offsets, skips, turns_np, m)
        else:
            slots = _populate(offsets, skips, turns_np, m)
    slots.setflags(write=False)
    return MaglevTable(
        dests=dests,
        slots=slots,
        turns=tuple(turns),
        tab_index=tab_index,
        variant=variant,
        bits=bits,
        family=family,
    )


def _turns(weights: Sequence[int], tab_bits: int) -> list[int]:
    """``ip_vs_mh_gcd_weight``, ``ip_vs_mh_shift_weight`` and the ``turns`` of each dest."""
    positive = [w for w in weights if w > 0]
    if not positive:
        return [0] * len(weights)
    g = reduce(math.gcd, positive)
    # fls(max / gcd) - TAB_BITS, at least 0; int.bit_length() is fls().
    shift = max(0, (max(positive) // g).bit_length() - tab_bits)
    return [((w // g) >> shift) or (1 if w != 0 else 0) for w in weights]


def _permutations(
    dests: Sequence[MhDest], family: Family, m: int, bits: Bits
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``ip_vs_mh_permutate``: each destination's starting offset and skip."""
    base = np.array([(d.fold(family) + d.port) & _U32_MASK for d in dests], dtype=np.uint64)
    both = hsiphash_u32_multi(np.stack([base, base]), [KEY_OFFSET, KEY_SKIP], bits=bits)
    hashes = both.astype(np.int64)
    return hashes[0] % m, hashes[1] % (m - 1) + 1


#: Set to 1 to make :func:`build_table` use the numpy builder although the compiled one is built.
PURE_ENV: Final = "MHD_MAGLEV_PURE"


def _populate_path() -> Literal["compiled", "numpy"]:
    """Which population loop :func:`build_table` runs now: ``"compiled"`` (``mhd.maglev._fast``)
    when that module was built and ``MHD_MAGLEV_PURE`` is unset, empty or ``0``; else
    ``"numpy"``. Both give the same tables; the environment is read at every build, so tests
    and the benchmark can switch paths in one process."""
    if _maglev_fast is None or os.environ.get(PURE_ENV, "") not in ("", "0"):
        return "numpy"
    return "compiled"


def _populate_compiled(
    offsets: npt.NDArray[np.int64],
    skips: npt.NDArray[np.int64],
    turns: npt.NDArray[np.int64],
    m: int,
) -> npt.NDArray[np.intp]:
    """The same table as :func:`_populate_reference`, by the kernel's loop in C."""
    if _maglev_fast is None:
        raise RuntimeError("mhd.maglev._fast is not built")
    out = np.empty(m, dtype=np.int64)
    _maglev_fast.populate(
        np.ascontiguousarray(offsets, dtype=np.int64),
        np.ascontiguousarray(skips, dtype=np.int64),
        np.ascontiguousarray(turns, dtype=np.int64),
        m,
        out,
    )
    return out.astype(np.intp, copy=False)


def _populate_reference(
    offsets: Sequence[int], skips: Sequence[int], turns: Sequence[int], m: int
) -> npt.NDArray[np.intp]:
    """``ip_vs_mh_populate`` transcribed loop for loop: slow, obviously right, the oracle."""
    table = [-1] * m
    perm = [int(o) for o in offsets]
    skip = [int(s) for s in skips]
    order = [(i, int(t)) for i, t in enumerate(turns) if t > 0]
    filled = 0
    while order and filled < m:
        for i, t in order:
            for _ in range(t):
                c = perm[i]
                while table[c] >= 0:
                    c += skip[i]
                    if c >= m:
                        c -= m
                perm[i] = c
                table[c] = i
                filled += 1
                if filled == m:
                    return np.array(table, dtype=np.intp)
    return np.array(table, dtype=np.intp)


def _populate(
    offsets: npt.NDArray[np.int64],
    skips: npt.NDArray[np.int64],
    turns: npt.NDArray[np.int64],
    m: int,
) -> npt.NDArray[np.intp]:
    """The same table as :func:`_populate_reference`, built faster.

    Population is a sequence of M claims ("events"): round after round, each destination in list
    order claims ``turns`` times. Which destination makes the e-th claim is known in advance,
    and a claim always takes the *first free slot of the destination's permutation* (every slot
    before it was taken earlier, by it or by others). The claims themselves are inherently
    sequential, so they run in a plain Python loop; what numpy does is everything per slot:
    it scans the permutations ahead of the loop, in blocks of events, and hands the loop
    lists of the slots that are still free, so the loop rarely looks at a taken slot.

    Near the end, when few slots are free, scanning permutations wastes most of its work on
    taken slots; the remaining claims then use the inverse view instead: for every free slot,
    its position in each destination's permutation, sorted.
    """
    events = _event_sequence(turns, m)
    n = offsets.shape[0]
    # owner[s]: destination holding slot s, -1 free. owner[m] stays -1: it is the "end of
    # candidate list" marker, which the loop's "is it free?" test lets through.
    owner = array("q", [-1]) * (m + 1)
    owner_np = np.frombuffer(owner, dtype=np.int64)
    # pos[d]: every position of d's permutation before pos[d] holds a taken slot.
    pos = np.zeros(n, dtype=np.int64)
    ptr = [0] * n
    scanner = _Scanner(offsets, skips, m, owner_np)
    e = 0
    tail = _tail_size(n, m)
    while m - e > tail:
        free = m - e
        block = events[e : e + max(_MIN_BLOCK, free // _DIV)]
        cnt = np.bincount(block, minlength=n)
        rows = np.flatnonzero(cnt)
        # c claims of one destination need about c * M / free positions, more as the block
        # itself takes slots; the margin makes a shortfall (handled below) rare.
        c = cnt[rows]
        length = np.minimum(
            ((c * _SLACK + _SPREAD * (np.sqrt(c) + 1.0)) * (m / free)).astype(np.int64) + 4, m
        )
        cand, cand_pos, starts = scanner.scan(rows, pos[rows], length)
        ptr_np = np.array(ptr, dtype=np.int64)
        ptr_np[rows] = starts
        ptr = ptr_np.tolist()
        refill = max(64, int(_REFILL * 1.5 * m / free))
        order = block.tolist()
        for d in order:
            k = ptr[d]
            s = cand[k]
            while owner[s] >= 0:
                k += 1
                s = cand[k]
            while s == m:
                # d used up its candidates: scan further along its permutation.
                start = cand_pos[k]
                k = len(cand)
                scanner.extend(d, start, refill, cand, cand_pos)
                s = cand[k]
                while owner[s] >= 0:
                    k += 1
                    s = cand[k]
            owner[s] = d
            ptr[d] = k + 1
        at = np.frombuffer(cand_pos, dtype=np.int64)
        pos[rows] = at[np.array(ptr, dtype=np.int64)[rows]]
        del at  # a live view would forbid growing cand_pos
        e += len(order)
    if e < m:
        _populate_tail(offsets, skips, m, events[e:], owner, owner_np)
    return owner_np[:m].astype(np.intp)


_MIN_BLOCK: Final = 64
# Scanning: blocks of a third of the remaining claims; look-ahead of
# (claims * _SLACK + _SPREAD * (sqrt(claims) + 1)) * M / free positions per destination; a
# destination that still runs out scans _REFILL * M / free more. Chosen by measurement: a
# refill costs as much as scanning a few thousand positions.
_DIV: Final = 3
_SLACK: Final = 1.2
_SPREAD: Final = 1.2
_REFILL: Final = 6


def _tail_size(n: int, m: int) -> int:
    """How many claims to leave to :func:`_populate_tail`.

    The tail's cost grows with (destinations) x (free slots); scanning's with M / (free slots).
    """
    return min(m, max(16, int(math.sqrt(m * 2.0)), 4 * min(n, 64)))


def _event_sequence(turns: npt.NDArray[np.int64], m: int) -> npt.NDArray[np.int64]:
    """Which destination makes each of the M claims (``ip_vs_mh_populate``'s visiting order)."""
    active = np.flatnonzero(turns > 0)
    one_round = np.repeat(active, turns[active])
    rounds = -(-m // one_round.shape[0])
    events: npt.NDArray[np.int64] = np.tile(one_round, rounds)[:m]
    return events


class _Scanner:
    """Lists the free slots along destinations' permutations, for the claim loop.

    Each result is a pair of flat ``array('q')``: the free slots in permutation order, and
    their positions; each row ends with the marker slot M, whose "position" is where the next
    scan of that row starts. ``owner_np`` has M + 1 entries, the last one -1 for the marker.

    The work buffers are kept and written in place: a fresh numpy array of a few hundred
    kilobytes costs page faults each time (glibc hands large freed blocks back to the kernel),
    and under virtualisation those cost more than the arithmetic itself.
    """

    def __init__(
        self,
        offsets: npt.NDArray[np.int64],
        skips: npt.NDArray[np.int64],
        m: int,
        owner_np: npt.NDArray[np.int64],
    ) -> None:
        self.offsets, self.skips, self.m, self.owner = offsets, skips, m, owner_np
        self._slot32 = np.empty(0, dtype=np.int32)
        self._slot64 = np.empty(0, dtype=np.int64)
        self._held = np.empty(0, dtype=np.int64)
        self._free = np.empty(0, dtype=bool)

    def _grow(self, size: int) -> None:
        if self._held.shape[0] < size:
            cap = max(size, int(self._held.shape[0] * 1.5), 4096)
            self._slot32 = np.empty(cap, dtype=np.int32)
            self._slot64 = np.empty(cap, dtype=np.int64)
            self._held = np.empty(cap, dtype=np.int64)
            self._free = np.empty(cap, dtype=bool)

    def _fill(
        self,
        out_rows: int,
        width: int,
        base: npt.NDArray[np.int64],
        step: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.signedinteger[Any]]:
        """``(base + j * step) % M`` for j = 0 .. width-1, one row per base, in a work buffer.

        int32 whenever that cannot overflow: numpy vectorises 32-bit multiply and modulo but
        not 64-bit ones here, and this is most of the work of scanning.
        """
        size = out_rows * width
        j = np.arange(width, dtype=np.int64)
        if width * self.m < 2**31:
            out32 = self._slot32[:size].reshape(out_rows, width)
            np.multiply(j.astype(np.int32), step.astype(np.int32)[:, None], out=out32)
            np.add(out32, base.astype(np.int32)[:, None], out=out32)
            np.remainder(out32, np.int32(self.m), out=out32)
            return out32
        out64 = self._slot64[:size].reshape(out_rows, width)
        np.multiply(j, step[:, None], out=out64)
        np.add(out64, base[:, None], out=out64)
        np.remainder(out64, self.m, out=out64)
        return out64

    def _keep_free(self, slot: npt.NDArray[np.signedinteger[Any]]) -> npt.NDArray[np.intp]:
        flat = slot.reshape(-1)
        held = np.take(self.owner, flat, out=self._held[: flat.shape[0]], mode="clip")
        return np.flatnonzero(np.less(held, 0, out=self._free[: flat.shape[0]]))

    def scan(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        length: npt.NDArray[np.int64],
    ) -> tuple[array[int], array[int], npt.NDArray[np.int64]]:
        """Free slots of destinations ``rows`` at positions ``[start, start+length)``, and the
        index at which each row begins in the result."""
        # One rectangle, wide enough for the longest row; shorter rows just look further.
        # Only very unequal weights make that wasteful; then the rows are scanned in groups.
        if rows.shape[0] * (int(length.max()) + 1) > 2.0 * float(length.sum() + rows.shape[0]):
            return self._scan_grouped(rows, start, length)
        return self._scan_rect(rows, start, length)

    def _scan_rect(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        length: npt.NDArray[np.int64],
    ) -> tuple[array[int], array[int], npt.NDArray[np.int64]]:
        m = self.m
        n_rows = rows.shape[0]
        widest = int(length.max())
        width = widest + 1
        self._grow(n_rows * width)
        base = (self.offsets[rows] + start * self.skips[rows]) % m
        slot = self._fill(n_rows, width, base, self.skips[rows])
        slot[:, widest] = m
        keep = self._keep_free(slot)
        row_begin = np.arange(n_rows, dtype=np.int64) * width
        starts = np.searchsorted(keep, row_begin)
        counts = np.diff(np.append(starts, keep.shape[0]))
        cand = array("q")
        cand.frombytes(_raw(slot.reshape(-1)[keep].astype(np.int64)))
        cand_pos = array("q")
        cand_pos.frombytes(_raw(keep + np.repeat(start - row_begin, counts)))
        return cand, cand_pos, starts

    def _scan_grouped(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        length: npt.NDArray[np.int64],
    ) -> tuple[array[int], array[int], npt.NDArray[np.int64]]:
        """:meth:`scan` for rows of very different lengths: rectangles of rows whose
        lengths are within a factor 2, concatenated."""
        group = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
        cand, cand_pos = array("q"), array("q")
        starts = np.empty(rows.shape[0], dtype=np.int64)
        for g in np.unique(group).tolist():
            sel = np.flatnonzero(group == g)
            c, p, st = self._scan_rect(rows[sel], start[sel], length[sel])
            starts[sel] = st + len(cand)
            cand.extend(c)
            cand_pos.extend(p)
        return cand, cand_pos, starts

    def extend(self, d: int, start: int, length: int, cand: array[int], cand_pos: array[int]) -> None:
        """Append the free slots of destination d at positions ``[start, start+length)``,
        then a marker, to ``cand`` / ``cand_pos`` (the rare single-row refill)."""
        m = self.m
        length = max(16, min(length, m))
        self._grow(length)
        base = np.array([(int(self.offsets[d]) + start * int(self.skips[d])) % m])
        slot = self._fill(1, length, base, self.skips[d : d + 1])
        keep = self._keep_free(slot)
        cand.frombytes(_raw(slot.reshape(-1)[keep].astype(np.int64)))
        cand.append(m)
        cand_pos.frombytes(_raw(keep + start))
        cand_pos.append(start + length)


def _raw(values: npt.NDArray[np.signedinteger[Any]]) -> memoryview:
    """The bytes of an array, without the copy ``tobytes()`` makes (which, for the sizes here,
    cost more than the whole scan)."""
    return np.ascontiguousarray(values, dtype=np.int64).data.cast("B")


def _populate_tail(
    offsets: npt.NDArray[np.int64],
    skips: npt.NDArray[np.int64],
    m: int,
    events: npt.NDArray[np.int64],
    owner: array[int],
    owner_np: npt.NDArray[np.int64],
) -> None:
    """The last claims, from each destination's ranking of the slots still free.

    A slot's position in destination d's permutation is ``(s - offset) * skip^-1 mod M`` (M is
    prime), so ordering the free slots by it lists them in the order d would probe them. Each
    block of claims ranks the slots free at its start and keeps, per destination, only the few
    best (as many as it claims in the block, plus a margin for slots others take first).
    """
    inv = _modinv(skips, m)
    e, total = 0, events.shape[0]
    ptr: dict[int, int] = {}
    while e < total:
        free = np.flatnonzero(owner_np[:m] < 0)
        n_free = free.shape[0]
        if n_free * min(n_free, offsets.shape[0]) <= _TAIL_ONE_SHOT:
            block = events[e:]  # small enough to rank everything at once
        else:
            block = events[e : e + max(8, n_free // 2)]
        rows, cnt = np.unique(block, return_counts=True)
        rank = (free[None, :] - offsets[rows, None]) % m * inv[rows, None] % m
        keep = min(n_free, int(cnt.max()) + _TAIL_MARGIN)
        if keep < n_free:
            best = np.argpartition(rank, keep - 1, axis=1)[:, :keep]
            best = np.take_along_axis(best, np.argsort(np.take_along_axis(rank, best, 1), 1), 1)
        else:
            best = np.argsort(rank, axis=1)
        prefs = np.full((rows.shape[0], keep + 1), m, dtype=np.int64)
        prefs[:, :keep] = free[best]
        cand = prefs.ravel().tolist()
        for r, d in enumerate(rows.tolist()):
            ptr[d] = r * (keep + 1)
        for d in block.tolist():
            k = ptr[d]
            s = cand[k]
            while owner[s] >= 0:
                k += 1
                s = cand[k]
            if s == m:
                # All of d's best few went to others: rank every slot free now.
                now = np.flatnonzero(owner_np[:m] < 0)
                order = np.argsort((now - offsets[d]) % m * inv[d] % m)
                k = len(cand)
                cand.extend(now[order].tolist())
                s = cand[k]
            owner[s] = d
            ptr[d] = k + 1
        e += block.shape[0]


_TAIL_MARGIN: Final = 3
_TAIL_ONE_SHOT: Final = 8192


def _modinv(values: npt.NDArray[np.int64], m: int) -> npt.NDArray[np.int64]:
    """``values ** -1 mod m`` for a prime m, by Fermat's little theorem (vectorised)."""
    result = np.ones_like(values)
    base = values % m
    e = m - 2
    while e:
        if e & 1:
            result = result * base % m
        base = base * base % m
        e >>= 1
    return result
