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
optional extension ``mhd.maglev._fast`` is built (``setup.py``; see mhd.maglev.populate), and in numpy otherwise or when
the environment sets ``MHD_MAGLEV_PURE=1``; both give the same tables.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, reduce
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from mhd.maglev.params import Variant
from mhd.maglev.populate import populate
from mhd.maglev.siphash import hsiphash, hsiphash_u32, hsiphash_u32_multi
from mhd.model import MH_PRIMES

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


def moved_fraction(before: MaglevTable, after: MaglevTable, *, lookups: bool = False) -> float:
    """The share of slots whose destination differs between two tables of the same size.

    Destinations are compared by (address, port), not by index, because the same server usually
    sits at a different list position after a change. An empty slot counts as its own value.
    The result is symmetric and 0.0 for identical tables. With `lookups`, a slot of an in-tree
    weight-0 destination counts as sending its clients elsewhere (the fallback walk, or nowhere):
    the share of flows that move, so that quiescing a server moves its share and nothing else.
    """
    if before.size != after.size:
        raise ValueError(f"tables differ in size ({before.size} and {after.size} slots)")
    ids: dict[tuple[str, int], int] = {}
    for d in (*before.dests, *after.dests):
        ids.setdefault(d.key, len(ids))

    def owners(t: MaglevTable) -> npt.NDArray[np.int64]:
        elsewhere = lookups and t.variant == "intree"
        return np.array(
            [-2 if elsewhere and d.weight == 0 else ids[d.key] for d in t.dests] + [-1], dtype=np.int64
        )

    # Index -1 (empty slot) picks the trailing -1 of each map.
    changed = owners(before)[before.slots] != owners(after)[after.slots]
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
        slots = populate(offsets, skips, turns_np, m)
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
