"""The compiled population loop (mhd.maglev._fast) against the numpy builder and the kernel's loop.

mhd.maglev.table uses the C loop when the extension is built and ``MHD_MAGLEV_PURE`` is not set; these
tests check that both paths give the same tables (under hypothesis and at the benchmark's
sizes) and that the extension refuses bad input with Python exceptions. Build it first with
``.venv/bin/python setup.py build_ext --inplace``; without it the comparisons are skipped.
"""

from __future__ import annotations

import ipaddress
import os
import random
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhd.maglev import populate
from mhd.maglev.table import MaglevTable, MhDest, build_table

fast: Any = populate._compiled
needs_fast = pytest.mark.skipif(
    fast is None, reason="mhd.maglev._fast not built (setup.py build_ext --inplace)"
)

Path = Literal["compiled", "numpy"]


@contextmanager
def _path(path: Path) -> Iterator[None]:
    """Run build_table on one path (the environment is read at every build)."""
    with mock.patch.dict(os.environ, {populate.PURE_ENV: "1" if path == "numpy" else ""}):
        assert populate.populate_path() == path
        yield


def _build_both(dests: list[MhDest], **kw: Any) -> tuple[MaglevTable, MaglevTable]:
    with _path("compiled"):
        compiled = build_table(dests, **kw)
    with _path("numpy"):
        pure = build_table(dests, **kw)
    return compiled, pure


def _same(a: MaglevTable, b: MaglevTable) -> None:
    assert a.slots.dtype == b.slots.dtype == np.intp
    assert a.slots.tolist() == b.slots.tolist()
    assert a.turns == b.turns
    assert not a.slots.flags.writeable


def _fast_populate(offsets: list[int], skips: list[int], turns: list[int], m: int) -> list[int]:
    out = np.empty(m, dtype=np.int64)
    fast.populate(
        np.array(offsets, dtype=np.int64),
        np.array(skips, dtype=np.int64),
        np.array(turns, dtype=np.int64),
        m,
        out,
    )
    return [int(x) for x in out]


# ---------------------------------------------------------------------------------------------
# Path selection (no extension needed)


def test_pure_env_selects_numpy() -> None:
    with mock.patch.dict(os.environ, {populate.PURE_ENV: "1"}):
        assert populate.populate_path() == "numpy"
    for off in ("", "0"):
        with mock.patch.dict(os.environ, {populate.PURE_ENV: off}):
            assert populate.populate_path() == ("numpy" if fast is None else "compiled")


def test_pure_env_never_calls_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("compiled path used despite MHD_MAGLEV_PURE=1")

    monkeypatch.setattr(populate, "populate_compiled", boom)
    monkeypatch.setenv(populate.PURE_ENV, "1")
    table = build_table([MhDest(f"10.0.0.{i}", 80, i) for i in range(1, 9)])
    assert sum(table.slot_counts()) == table.size and all(table.slot_counts())  # built, by numpy


def test_without_extension_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(populate, "_compiled", None)
    monkeypatch.delenv(populate.PURE_ENV, raising=False)
    assert populate.populate_path() == "numpy"
    table = build_table([MhDest("10.0.0.1", 80, 1), MhDest("10.0.0.2", 80, 3)])
    assert sum(table.slot_counts()) == table.size


# ---------------------------------------------------------------------------------------------
# Same tables


@st.composite
def _populate_cases(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], int]:
    m = draw(st.sampled_from([2, 3, 251, 509, 1021, 2039, 4093]))
    n = draw(st.one_of(st.integers(1, 20), st.integers(1, min(m, 400))))
    max_turn = draw(st.sampled_from([1, 1, 3, 63, 255, 2**31 - 1]))
    zero_share = draw(st.sampled_from([0.0, 0.0, 0.3, 0.9, 1.0]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    offsets = [rng.randrange(m) for _ in range(n)]
    skips = [rng.randrange(1, m) for _ in range(n)]
    turns = [0 if rng.random() < zero_share else rng.randint(1, max_turn) for _ in range(n)]
    return offsets, skips, turns, m


@needs_fast
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_populate_cases())
def test_compiled_populate_equals_kernel_loop(case: tuple[list[int], list[int], list[int], int]) -> None:
    offsets, skips, turns, m = case
    got = _fast_populate(offsets, skips, turns, m)
    assert got == populate.populate_reference(offsets, skips, turns, m).tolist()
    # The numpy builder needs some turns and expands them per claim (build_table's turns stay
    # below 2**(tab_index // 2)); the C loop takes any.
    if any(turns) and max(turns) <= 255:
        numpy_path = populate.populate_numpy(
            np.array(offsets, dtype=np.int64),
            np.array(skips, dtype=np.int64),
            np.array(turns, dtype=np.int64),
            m,
        )
        assert got == numpy_path.tolist()


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[MhDest], dict[str, Any]]:
    family = draw(st.sampled_from([4, 6]))
    tab_index = draw(st.sampled_from([8, 10, 12]))
    n = draw(st.integers(0, 40))
    ids = draw(st.lists(st.integers(1, 2**20), min_size=n, max_size=n, unique=True))
    dests = []
    for i in ids:
        if family == 4:
            address = str(ipaddress.IPv4Address(0x0A000000 + i))
        else:
            address = str(ipaddress.IPv6Address((0x20010DB8 << 96) + i * 0x10001))
        weight = draw(st.sampled_from([0, 1, 1, 2, 3, 10, 100, 5000, 2**31 - 1]))
        last = draw(st.sampled_from([None, 0, 1, 7])) if weight == 0 else None
        dests.append(MhDest(address, draw(st.sampled_from([0, 80, 443, 65535])), weight, last))
    kw = {
        "tab_index": tab_index,
        "variant": draw(st.sampled_from(["intree", "backport"])),
        "bits": draw(st.sampled_from([64, 32])),
    }
    return dests, kw


@needs_fast
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_build_table_same_on_both_paths(case: tuple[list[MhDest], dict[str, Any]]) -> None:
    dests, kw = case
    _same(*_build_both(dests, **kw))


def _servers(n: int) -> list[MhDest]:
    """The benchmark's servers: 10.x.y.z:80, weight 1."""
    return [MhDest(str(ipaddress.IPv4Address(0x0A000000 + i + 1)), 80, 1) for i in range(n)]


@needs_fast
@pytest.mark.parametrize(
    ("tab_index", "n"), [(16, 1000), (12, 16), (17, 1000), (17, 5), (8, 251), (12, 4093)]
)
def test_benchmark_sizes_same_on_both_paths(tab_index: int, n: int) -> None:
    _same(*_build_both(_servers(n), tab_index=tab_index))
    rng = random.Random(tab_index * 7919 + n)
    weighted = [MhDest(d.address, d.port, rng.choice([1, 1, 2, 5, 100])) for d in _servers(n)]
    _same(*_build_both(weighted, tab_index=tab_index))


# ---------------------------------------------------------------------------------------------
# Bad input raises, never crashes


def _args(m: int = 251, n: int = 3) -> list[Any]:
    return [
        np.zeros(n, dtype=np.int64),
        np.ones(n, dtype=np.int64),
        np.ones(n, dtype=np.int64),
        m,
        np.empty(m, dtype=np.int64),
    ]


@needs_fast
def test_accepts_array_q_and_fills_minus_one_without_turns() -> None:
    m = 251
    out = array("q", [7]) * m
    fast.populate(array("q", [0, 5]), array("q", [1, 2]), array("q", [0, 0]), m, out)
    assert list(out) == [-1] * m
    fast.populate(array("q"), array("q"), array("q"), m, out)
    assert list(out) == [-1] * m
    fast.populate(array("q", [4]), array("q", [9]), array("q", [1]), m, out)
    assert list(out) == [0] * m


@needs_fast
@pytest.mark.parametrize(
    ("index", "value", "error"),
    [
        (0, np.zeros(3, dtype=np.int32), TypeError),  # wrong item type
        (0, np.zeros(3, dtype=np.float64), TypeError),
        (0, np.zeros(3, dtype=np.uint64), TypeError),
        (0, np.zeros(3, dtype=">i8"), TypeError),  # foreign byte order
        (1, np.ones((3, 1), dtype=np.int64), TypeError),  # two dimensions
        (1, np.ones(6, dtype=np.int64)[::2], TypeError),  # not contiguous
        (2, [1, 1, 1], TypeError),  # no buffer
        (2, b"\x01" * 24, TypeError),  # bytes, not int64
        (4, np.empty(251, dtype=np.int32), TypeError),
        (4, bytes(8 * 251), TypeError),  # read-only
        (4, np.empty(250, dtype=np.int64), ValueError),  # out too short
        (4, np.empty(252, dtype=np.int64), ValueError),
        (1, np.ones(2, dtype=np.int64), ValueError),  # lengths differ
        (2, np.ones(4, dtype=np.int64), ValueError),
        (0, np.array([0, 0, 251], dtype=np.int64), ValueError),  # offset out of range
        (0, np.array([0, -1, 0], dtype=np.int64), ValueError),
        (1, np.array([1, 0, 1], dtype=np.int64), ValueError),  # skip out of range
        (1, np.array([1, 1, 251], dtype=np.int64), ValueError),
        (2, np.array([1, -1, 1], dtype=np.int64), ValueError),  # negative turns
        (3, 250, ValueError),  # m not prime
        (3, 1, ValueError),
        (3, -7, ValueError),
        (3, 2**31, (ValueError, OverflowError)),  # OverflowError where long has 32 bits
        (3, 2**80, OverflowError),
        (3, 251.0, TypeError),
    ],
)
def test_bad_input_raises(
    index: int, value: Any, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    args = _args()
    args[index] = value
    with pytest.raises(error):
        fast.populate(*args)


@needs_fast
def test_bad_input_leaves_buffers_released() -> None:
    """A failed call must release every buffer it took (else the arrays could not be resized)."""
    offsets = array("q", [0, 0, 0])
    out = array("q", [0]) * 250
    with pytest.raises(ValueError):
        fast.populate(offsets, array("q", [1, 1, 1]), array("q", [1, 1, 1]), 251, out)
    offsets.append(1)  # BufferError if an export leaked
    out.append(0)
    fast.populate(array("q", [0]), array("q", [1]), array("q", [1]), 251, out)
    assert list(out) == [0] * 251


@needs_fast
def test_wrong_argument_count() -> None:
    with pytest.raises(TypeError):
        fast.populate(*_args()[:4])
