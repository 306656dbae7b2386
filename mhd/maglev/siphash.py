"""SipHash as the Linux kernel computes it, for predicting ``ip_vs_mh`` tables.

The Maglev scheduler hashes every destination and every client with ``hsiphash()`` under fixed keys
(``generate_hash_secret`` in ``net/netfilter/ipvs/ip_vs_mh.c``). Predicting the kernel's choices
therefore needs the kernel's exact hash, which is not a single algorithm (``lib/siphash.c``):

* On 64-bit kernels ``hsiphash`` is SipHash-1-3 over 64-bit words (one compression round, three
  finalisation rounds), whose 64-bit result the ``u32`` return type truncates to the low 32 bits.
* On 32-bit kernels ``hsiphash`` is HalfSipHash-1-3 over 32-bit words.

The scalar functions take any byte string and exist to pin the implementation against the kernel's
published self-test vectors (``lib/siphash_kunit.c``). The ``*_u32`` functions are the hot path: the
kernel only ever hashes one host-order ``u32`` (``hsiphash(&v, sizeof(v), key)``), and they hash a
whole numpy array of such values at once. Only little-endian hosts are modelled: on those the four
bytes of ``v`` in memory are the little-endian encoding the SipHash message schedule reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "halfsiphash",
    "halfsiphash13_u32",
    "hsiphash",
    "hsiphash_u32",
    "hsiphash_u32_multi",
    "siphash",
    "siphash13_u32",
]

_M64: Final = (1 << 64) - 1
_M32: Final = (1 << 32) - 1

# "somepseudorandomlygeneratedbytes", the SipHash initialisation constants.
_C0: Final = 0x736F6D6570736575
_C1: Final = 0x646F72616E646F6D
_C2: Final = 0x6C7967656E657261
_C3: Final = 0x7465646279746573
# HalfSipHash starts v2/v3 from the high halves of C2/C3 and v0/v1 from zero.
_H2: Final = 0x6C796765
_H3: Final = 0x74656462


def _rol64(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _rol32(x: int, b: int) -> int:
    return ((x << b) | (x >> (32 - b))) & _M32


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rol64(v1, 13) ^ v0
    v0 = _rol64(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rol64(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rol64(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rol64(v1, 17) ^ v2
    v2 = _rol64(v2, 32)
    return v0, v1, v2, v3


def _halfround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M32
    v1 = _rol32(v1, 5) ^ v0
    v0 = _rol32(v0, 16)
    v2 = (v2 + v3) & _M32
    v3 = _rol32(v3, 8) ^ v2
    v0 = (v0 + v3) & _M32
    v3 = _rol32(v3, 7) ^ v0
    v2 = (v2 + v1) & _M32
    v1 = _rol32(v1, 13) ^ v2
    v2 = _rol32(v2, 16)
    return v0, v1, v2, v3


def siphash(data: bytes, key: tuple[int, int], *, c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d of ``data`` under the 128-bit key ``(k0, k1)``, as a 64-bit integer.

    The defaults give the kernel's ``siphash()`` (SipHash-2-4); ``c_rounds=1, d_rounds=3`` gives
    the 64-bit kernel's ``hsiphash()`` before truncation.
    """
    k0, k1 = key[0] & _M64, key[1] & _M64
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def halfsiphash(data: bytes, key: tuple[int, int], *, c_rounds: int = 1, d_rounds: int = 3) -> int:
    """HalfSipHash-c-d (32-bit output) of ``data`` under the 64-bit key ``(k0, k1)``.

    The defaults give the 32-bit kernel's ``hsiphash()``.
    """
    k0, k1 = key[0] & _M32, key[1] & _M32
    v0, v1, v2, v3 = k0, k1, k0 ^ _H2, k1 ^ _H3
    full = len(data) - len(data) % 4
    for i in range(0, full, 4):
        m = int.from_bytes(data[i : i + 4], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _halfround(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 24) | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _halfround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _halfround(v0, v1, v2, v3)
    return v1 ^ v3


def hsiphash(data: bytes, key: tuple[int, int], *, bits: Literal[64, 32] = 64) -> int:
    """The kernel's ``hsiphash(data, len, key)`` for a kernel with ``BITS_PER_LONG == bits``."""
    if bits == 64:
        return siphash(data, key, c_rounds=1, d_rounds=3) & _M32
    if bits == 32:
        return halfsiphash(data, key)
    raise ValueError(f"bits must be 64 or 32, not {bits!r}")


# Vectorised forms for a single u32 message (the only shape ip_vs_mh hashes). numpy integer
# arithmetic wraps silently on arrays, which is exactly the kernel's u64/u32 arithmetic. Every
# constant is a numpy scalar of the array's dtype, so numpy 1.x value-based casting and numpy 2
# (NEP 50) promotion give the same dtype.

_U64 = np.uint64
_U32 = np.uint32


def _rotl64(x: npt.NDArray[np.uint64], b: int) -> npt.NDArray[np.uint64]:
    return (x << _U64(b)) | (x >> _U64(64 - b))


def _rotl32(x: npt.NDArray[np.uint32], b: int) -> npt.NDArray[np.uint32]:
    return (x << _U32(b)) | (x >> _U32(32 - b))


def _key_arrays(
    keys: Sequence[tuple[int, int]], shape: tuple[int, ...], mask: int, dtype: type[np.generic]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Per-message key halves: ``keys[i]`` applies to ``values[i]`` (a leading axis)."""
    k0 = np.array([k[0] & mask for k in keys], dtype=dtype)
    k1 = np.array([k[1] & mask for k in keys], dtype=dtype)
    extra = (1,) * (len(shape) - 1)
    return k0.reshape((len(keys), *extra)), k1.reshape((len(keys), *extra))


def siphash13_u32(values: npt.ArrayLike, key: tuple[int, int]) -> npt.NDArray[np.uint32]:
    """64-bit kernels' ``hsiphash_1u32(v, key)`` for every ``v`` in ``values`` (uint32 result).

    A 4-byte message has no full 64-bit block: SipHash-1-3 goes straight to the final block
    ``b = 4 << 56 | v``, one compression round, then three finalisation rounds.
    """
    out: npt.NDArray[np.uint32] = siphash13_u32_multi(np.asarray(values)[np.newaxis], [key])[0]
    return out


def siphash13_u32_multi(values: npt.ArrayLike, keys: Sequence[tuple[int, int]]) -> npt.NDArray[np.uint32]:
    """:func:`siphash13_u32` of ``values[i]`` under ``keys[i]``, for all i in one pass.

    ip_vs_mh hashes every destination under two keys; one pass halves numpy's per-call cost,
    which dominates for the handful of destinations a service has.
    """
    m = np.asarray(values).astype(np.uint64) & _U64(_M32)
    if m.ndim == 0 or m.shape[0] != len(keys):
        raise ValueError("values needs one leading row per key")
    k0, k1 = _key_arrays(keys, m.shape, _M64, np.uint64)
    b = m | _U64(4 << 56)
    v0 = np.broadcast_to(k0 ^ _U64(_C0), m.shape).copy()
    v1 = np.broadcast_to(k1 ^ _U64(_C1), m.shape).copy()
    v2 = np.broadcast_to(k0 ^ _U64(_C2), m.shape).copy()
    v3 = b ^ (k1 ^ _U64(_C3))
    for r in range(4):
        # SIPROUND, written with in-place operations to keep temporaries few.
        v0 += v1
        v1 = _rotl64(v1, 13)
        v1 ^= v0
        v0 = _rotl64(v0, 32)
        v2 += v3
        v3 = _rotl64(v3, 16)
        v3 ^= v2
        v0 += v3
        v3 = _rotl64(v3, 21)
        v3 ^= v0
        v2 += v1
        v1 = _rotl64(v1, 17)
        v1 ^= v2
        v2 = _rotl64(v2, 32)
        if r == 0:
            v0 ^= b
            v2 ^= _U64(0xFF)
    out = v0 ^ v1
    out ^= v2
    out ^= v3
    return out.astype(np.uint32)


def halfsiphash13_u32(values: npt.ArrayLike, key: tuple[int, int]) -> npt.NDArray[np.uint32]:
    """32-bit kernels' ``hsiphash_1u32(v, key)`` (HalfSipHash-1-3) for every ``v`` in ``values``."""
    out: npt.NDArray[np.uint32] = halfsiphash13_u32_multi(np.asarray(values)[np.newaxis], [key])[0]
    return out


def halfsiphash13_u32_multi(values: npt.ArrayLike, keys: Sequence[tuple[int, int]]) -> npt.NDArray[np.uint32]:
    """:func:`halfsiphash13_u32` of ``values[i]`` under ``keys[i]``, for all i in one pass."""
    m = (np.asarray(values).astype(np.uint64) & _U64(_M32)).astype(np.uint32)
    if m.ndim == 0 or m.shape[0] != len(keys):
        raise ValueError("values needs one leading row per key")
    k0, k1 = _key_arrays(keys, m.shape, _M32, np.uint32)
    v0 = np.broadcast_to(k0, m.shape).copy()
    v1 = np.broadcast_to(k1, m.shape).copy()
    v2 = np.broadcast_to(k0 ^ _U32(_H2), m.shape).copy()
    v3 = m ^ (k1 ^ _U32(_H3))
    b = _U32(4 << 24)
    for r in range(5):
        v0 += v1
        v1 = _rotl32(v1, 5)
        v1 ^= v0
        v0 = _rotl32(v0, 16)
        v2 += v3
        v3 = _rotl32(v3, 8)
        v3 ^= v2
        v0 += v3
        v3 = _rotl32(v3, 7)
        v3 ^= v0
        v2 += v1
        v1 = _rotl32(v1, 13)
        v1 ^= v2
        v2 = _rotl32(v2, 16)
        if r == 0:
            # End of the one message block, start of the final (length-only) block.
            v0 ^= m
            v3 ^= b
        elif r == 1:
            v0 ^= b
            v2 ^= _U32(0xFF)
    out: npt.NDArray[np.uint32] = np.bitwise_xor(v1, v3, dtype=np.uint32)
    return out


def hsiphash_u32(
    values: npt.ArrayLike, key: tuple[int, int], *, bits: Literal[64, 32] = 64
) -> npt.NDArray[np.uint32]:
    """Vectorised ``hsiphash(&v, 4, key)`` for a ``BITS_PER_LONG == bits`` kernel."""
    if bits == 64:
        return siphash13_u32(values, key)
    if bits == 32:
        return halfsiphash13_u32(values, key)
    raise ValueError(f"bits must be 64 or 32, not {bits!r}")


def hsiphash_u32_multi(
    values: npt.ArrayLike, keys: Sequence[tuple[int, int]], *, bits: Literal[64, 32] = 64
) -> npt.NDArray[np.uint32]:
    """Vectorised ``hsiphash(&values[i][...], 4, keys[i])``: one row of results per key."""
    if bits == 64:
        return siphash13_u32_multi(values, keys)
    if bits == 32:
        return halfsiphash13_u32_multi(values, keys)
    raise ValueError(f"bits must be 64 or 32, not {bits!r}")
