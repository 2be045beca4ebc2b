"""bfloat16 narrowing: the one encoder (gguf/bf16.py) that the converter and the LoRA merge share.

Expectations are written down as bit patterns, or computed by comparing a value with its two bfloat16
neighbours in float64 (exact for float32 inputs), never with the encoder's own bit trick.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import gguf
import numpy as np
import numpy.typing as npt
import pytest

from quantledger.convert import converter
from quantledger.gguf.bf16 import bf16_bits_to_float32, float32_to_bf16_bits

Encoder = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.uint16]]
ENCODERS: dict[str, Encoder] = {
    "bf16-module": float32_to_bf16_bits,
    "converter": lambda values: np.asarray(converter._encode(values, gguf.GGMLQuantizationType.BF16)),
}

# float32 bits -> bfloat16 bits, worked out by hand
FINITE_AND_INF = {
    0x3F800000: 0x3F80,  # 1.0
    0x3F808000: 0x3F80,  # 1 + 2^-8: a tie, the even neighbour (0x3F80) wins
    0x3F818000: 0x3F82,  # 1 + 3·2^-8: a tie, the even neighbour is the upper one
    0xBF808000: 0xBF80,  # -(1 + 2^-8)
    0x3F808001: 0x3F81,  # just above the tie: rounds up
    0x00000000: 0x0000,  # +0
    0x80000000: 0x8000,  # -0
    0x00000001: 0x0000,  # the smallest subnormal rounds to +0
    0x7F7F7FFF: 0x7F7F,  # just below half-way to the overflow point stays finite
    0x7F7FFFFF: 0x7F80,  # the largest float32 overflows to +Inf
    0xFF7FFFFF: 0xFF80,  # and its negative to -Inf
    0x7F800000: 0x7F80,  # +Inf
    0xFF800000: 0xFF80,  # -Inf
}
# NaN inputs, as the bare rounding carry mangled them: to ±Inf or ±0
NANS = (
    0x7FC00000,  # the default quiet NaN
    0xFFC00000,  # negative quiet NaN
    0x7F800001,  # signalling NaN whose payload lies in the dropped half: the carry made +Inf
    0xFF800001,  # the same, negative: -Inf
    0x7FFFFFFF,  # all payload bits: the carry made -0
    0xFFFFFFFF,  # negative, all payload bits: the carry wrapped to +0
)


def _float32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def _nearest_even(value: float) -> int:
    """bfloat16 bits of a finite float32 ``value``: the nearer of its two neighbours, ties to the even one."""
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    low = bits >> 16
    below = _float32(low << 16)
    magnitude = abs(_float32(((low + 1) & 0x7FFF) << 16)) if (low + 1) & 0x7FFF != 0x7F80 else 2.0**128
    above = -magnitude if low & 0x8000 else magnitude
    if abs(value - below) != abs(above - value):
        choice = low if abs(value - below) < abs(above - value) else low + 1
    else:
        choice = low if low % 2 == 0 else low + 1
    return choice  # low + 1 == 0x7F80 / 0xFF80 is ±Inf: the overflow of round-to-nearest


def _from_bits(bits: list[int]) -> npt.NDArray[np.float32]:
    return np.array(bits, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("encoder", ENCODERS.values(), ids=ENCODERS.keys())
def test_bf16_encoders_keep_nan_inf_and_round_to_nearest_even(encoder: Encoder) -> None:
    """NaN stays a quiet NaN with its sign, Inf stays Inf, finite values round to nearest, ties to even."""
    assert encoder(_from_bits(list(FINITE_AND_INF))).tolist() == list(FINITE_AND_INF.values())

    encoded = encoder(_from_bits(list(NANS))).tolist()
    for source, bits in zip(NANS, encoded, strict=True):
        assert bits & 0x7F80 == 0x7F80 and bits & 0x007F, f"{source:#010x} -> {bits:#06x} is not a NaN"
        assert bits & 0x0040, f"{source:#010x} -> {bits:#06x} is not a quiet NaN"
        assert bits >> 15 == source >> 31, f"{source:#010x} -> {bits:#06x} lost its sign"

    rng = np.random.default_rng(5)
    patterns = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)
    finite = patterns[(patterns & 0x7F800000) != 0x7F800000]
    values = finite.view(np.float32)
    assert encoder(values).tolist() == [_nearest_even(float(v)) for v in values]


def test_bf16_widening_is_exact_and_round_trips() -> None:
    bits = np.arange(0, 2**16, dtype=np.uint32).astype(np.uint16)
    widened = bf16_bits_to_float32(bits)
    assert widened.view(np.uint32).tolist() == [int(b) << 16 for b in bits.tolist()]
    finite = bits[(bits & 0x7F80) != 0x7F80]
    assert float32_to_bf16_bits(bf16_bits_to_float32(finite)).tolist() == finite.tolist()
