"""mhd.maglev.siphash against the Linux kernel's own self-test vectors.

The vectors are copied from lib/siphash_kunit.c (formerly lib/test_siphash.c): message i is the
bytes 0, 1, ..., i-1. The 64-bit ``hsiphash`` table is what a 64-bit kernel computes
(SipHash-1-3 truncated to 32 bits), the 32-bit one what a 32-bit kernel computes
(HalfSipHash-1-3). If these pass, the hash ip_vs_mh uses is the kernel's, bit for bit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhd.maglev.siphash import (
    halfsiphash,
    hsiphash,
    hsiphash_u32,
    hsiphash_u32_multi,
    siphash,
)

KEY_SIPHASH = (0x0706050403020100, 0x0F0E0D0C0B0A0908)

SIPHASH_2_4 = [
    0x726FDB47DD0E0E31, 0x74F839C593DC67FD, 0x0D6C8009D9A94F5A, 0x85676696D7FB7E2D,
    0xCF2794E0277187B7, 0x18765564CD99A68D, 0xCBC9466E58FEE3CE, 0xAB0200F58B01D137,
    0x93F5F5799A932462, 0x9E0082DF0BA9E4B0, 0x7A5DBBC594DDB9F3, 0xF4B32F46226BADA7,
    0x751E8FBC860EE5FB, 0x14EA5627C0843D90, 0xF723CA908E7AF2EE, 0xA129CA6149BE45E5,
    0x3F2ACC7F57C29BDB, 0x699AE9F52CBE4794, 0x4BC1B3F0968DD39C, 0xBB6DC91DA77961BD,
    0xBED65CF21AA2EE98, 0xD0F2CBB02E3B67C7, 0x93536795E3A33E88, 0xA80C038CCD5CCEC8,
    0xB8AD50C6F649AF94, 0xBCE192DE8A85B8EA, 0x17D835B85BBB15F3, 0x2F2E6163076BCFAD,
    0xDE4DAAACA71DC9A5, 0xA6A2506687956571, 0xAD87A3535C49EF28, 0x32D892FAD841C342,
    0x7127512F72F27CCE, 0xA7F32346F95978E3, 0x12E0B01ABB051238, 0x15E034D40FA197AE,
    0x314DFFBE0815A3B4, 0x027990F029623981, 0xCADCD4E59EF40C4D, 0x9ABFD8766A33735C,
    0x0E3EA96B5304A7D0, 0xAD0C42D6FC585992, 0x187306C89BC215A9, 0xD4A60ABCF3792B95,
    0xF935451DE4F21DF2, 0xA9538F0419755787, 0xDB9ACDDFF56CA510, 0xD06C98CD5C0975EB,
    0xE612A3CB9ECBA951, 0xC766E62CFCADAF96, 0xEE64435A9752FE72, 0xA192D576B245165A,
    0x0A8787BF8ECB74B2, 0x81B3E73D20B49B6F, 0x7FA8220BA3B2ECEA, 0x245731C13CA42499,
    0xB78DBFAF3A8D83BD, 0xEA1AD565322A1A0B, 0x60E61C23A3795013, 0x6606D7E446282B93,
    0x6CA4ECB15C5F91E1, 0x9F626DA15C9625F3, 0xE51B38608EF25F57, 0x958A324CEB064572,
]  # fmt: skip

KEY_HSIPHASH_64 = (0x0706050403020100, 0x0F0E0D0C0B0A0908)

HSIPHASH_64 = [
    0x050FC4DC, 0x7D57CA93, 0x4DC7D44D, 0xE7DDF7FB, 0x88D38328, 0x49533B67, 0xC59F22A7,
    0x9BB11140, 0x8D299A8E, 0x6C063DE4, 0x92FF097F, 0xF94DC352, 0x57B4D9A2, 0x1229FFA7,
    0xC0F95D34, 0x2A519956, 0x7D908B66, 0x63DBD80C, 0xB473E63E, 0x8D297D1C, 0xA6CCE040,
    0x2B45F844, 0xA320872E, 0xDAE6C123, 0x67349C8C, 0x705B0979, 0xCA9913A5, 0x4ADE3B35,
    0xEF6CD00D, 0x4AB1E1F4, 0x43C5E663, 0x8C21D1BC, 0x16A7B60D, 0x7A8FF9BF, 0x1F2A753E,
    0xBF186B91, 0xADA26206, 0xA3C33057, 0xAE3A36A1, 0x7B108392, 0x99E41531, 0x3F1AD944,
    0xC8138825, 0xC28949A6, 0xFAF8876B, 0x9F042196, 0x68B1D623, 0x8B5114FD, 0xDF074C46,
    0x12CC86B3, 0x0A52098F, 0x9D292F9A, 0xA2F41F12, 0x43A71ED0, 0x73F0BCE6, 0x70A7E980,
    0x243C6D75, 0xFDB71513, 0xA67D8A08, 0xB7E8F148, 0xF7A644EE, 0x0F1837F2, 0x4B6694E0,
    0xB7BBB3A8,
]  # fmt: skip

KEY_HSIPHASH_32 = (0x03020100, 0x07060504)

HSIPHASH_32 = [
    0x5814C896, 0xE7E864CA, 0xBC4B0E30, 0x01539939, 0x7E059EA6, 0x88E3D89B, 0xA0080B65,
    0x9D38D9D6, 0x577999B1, 0xC839CAED, 0xE4FA32CF, 0x959246EE, 0x6B28096C, 0x66DD9CD6,
    0x16658A7C, 0xD0257B04, 0x8B31D501, 0x2B1CD04B, 0x06712339, 0x522ACA67, 0x911BB605,
    0x90A65F0E, 0xF826EF7B, 0x62512DEB, 0x57150AD7, 0x5D473507, 0x1EC47442, 0xAB64AFD3,
    0x0A4100D0, 0x6D2CE652, 0x2331B6A3, 0x08D8791A, 0xBC6DDA8D, 0xE0F6C934, 0xB0652033,
    0x9B9851CC, 0x7C46FB7F, 0x732BA8CB, 0xF142997A, 0xFCC9AA1B, 0x05327EB2, 0xE110131C,
    0xF9E5E7C0, 0xA7D708A6, 0x11795AB1, 0x65671619, 0x9F5FFF91, 0xD89C5267, 0x007783EB,
    0x95766243, 0xAB639262, 0x9C7E1390, 0xC368DDA6, 0x38DDC455, 0xFA13D379, 0x979EA4E8,
    0x53ECD77E, 0x2EE80657, 0x33DBB66A, 0xAE3F0577, 0x88B4C4CC, 0x3E7F480B, 0x74C1EBF8,
    0x87178304,
]  # fmt: skip


def _message(length: int) -> bytes:
    return bytes(range(length))


@pytest.mark.parametrize("length", range(64))
def test_siphash_2_4_kernel_vectors(length: int) -> None:
    assert siphash(_message(length), KEY_SIPHASH) == SIPHASH_2_4[length]


@pytest.mark.parametrize("length", range(64))
def test_hsiphash_64bit_kernel_vectors(length: int) -> None:
    assert hsiphash(_message(length), KEY_HSIPHASH_64, bits=64) == HSIPHASH_64[length]


@pytest.mark.parametrize("length", range(64))
def test_hsiphash_32bit_kernel_vectors(length: int) -> None:
    assert hsiphash(_message(length), KEY_HSIPHASH_32, bits=32) == HSIPHASH_32[length]
    assert halfsiphash(_message(length), KEY_HSIPHASH_32) == HSIPHASH_32[length]


def test_word_helpers_match_kernel_self_test() -> None:
    """The kunit test also checks hsiphash_1u32(0x03020100) against vector 4."""
    assert int(hsiphash_u32([0x03020100], KEY_HSIPHASH_64, bits=64)[0]) == HSIPHASH_64[4]
    assert int(hsiphash_u32([0x03020100], KEY_HSIPHASH_32, bits=32)[0]) == HSIPHASH_32[4]


@pytest.mark.parametrize("bits", [64, 32])
@given(values=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_vectorised_equals_scalar(bits: Literal[64, 32], values: list[int]) -> None:
    """The numpy hot path is the scalar reference, for the 4-byte messages ip_vs_mh hashes."""
    keys = [(2654435761, 2654435761), (2654446892, 2654446892)]
    got = hsiphash_u32_multi(np.array([values, values]), keys, bits=bits)
    for row, key in enumerate(keys):
        single = hsiphash_u32(values, key, bits=bits)
        want = [hsiphash(v.to_bytes(4, "little"), key, bits=bits) for v in values]
        assert got[row].tolist() == want
        assert single.tolist() == want
        assert got.dtype == np.uint32


def test_bad_bits_rejected() -> None:
    with pytest.raises(ValueError):
        hsiphash(b"", (0, 0), bits=16)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hsiphash_u32([1], (0, 0), bits=16)  # type: ignore[arg-type]
