"""The population loop of ``ip_vs_mh`` (``ip_vs_mh_populate``): the one step of building a Maglev
table that is a long chain of dependent operations, so it gets three implementations that give the
same tables: the kernel's loop in C (the optional extension ``mhd.maglev._fast``), a numpy builder
that scans permutations ahead of a short Python loop, and a transcription of the kernel's loop that is
slow and obviously right (the oracle of the tests).
"""

from __future__ import annotations

import importlib
import math
import os
from array import array
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

# The compiled population loop (mhd/maglev/_fast.c, built by setup.py) is optional.
_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("mhd.maglev._fast")
except ImportError:
    _compiled = None


def populate(
    offsets: npt.NDArray[np.int64], skips: npt.NDArray[np.int64], turns: npt.NDArray[np.int64], m: int
) -> npt.NDArray[np.intp]:
    """The owner of each of the ``m`` slots (-1: none), by the fastest loop available now."""
    if populate_path() == "compiled":
        return populate_compiled(offsets, skips, turns, m)
    return populate_numpy(offsets, skips, turns, m)


#: Set to 1 to make ``build_table`` use the numpy builder although the compiled one is built.
PURE_ENV: Final = "MHD_MAGLEV_PURE"


def populate_path() -> Literal["compiled", "numpy"]:
    """Which population loop ``build_table`` runs now: ``"compiled"`` (``mhd.maglev._fast``)
    when that module was built and ``MHD_MAGLEV_PURE`` is unset, empty or ``0``; else
    ``"numpy"``. Both give the same tables; the environment is read at every build, so tests
    and the benchmark can switch paths in one process."""
    if _compiled is None or os.environ.get(PURE_ENV, "") not in ("", "0"):
        return "numpy"
    return "compiled"


def populate_compiled(
    offsets: npt.NDArray[np.int64],
    skips: npt.NDArray[np.int64],
    turns: npt.NDArray[np.int64],
    m: int,
) -> npt.NDArray[np.intp]:
    """The same table as :func:`populate_reference`, by the kernel's loop in C."""
    if _compiled is None:
        raise RuntimeError("mhd.maglev._fast is not built")
    out = np.empty(m, dtype=np.int64)
    _compiled.populate(
        np.ascontiguousarray(offsets, dtype=np.int64),
        np.ascontiguousarray(skips, dtype=np.int64),
        np.ascontiguousarray(turns, dtype=np.int64),
        m,
        out,
    )
    return out.astype(np.intp, copy=False)


def populate_reference(
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


def populate_numpy(
    offsets: npt.NDArray[np.int64],
    skips: npt.NDArray[np.int64],
    turns: npt.NDArray[np.int64],
    m: int,
) -> npt.NDArray[np.intp]:
    """The same table as :func:`populate_reference`, built faster.

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
