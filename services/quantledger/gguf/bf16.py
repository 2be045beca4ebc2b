"""bfloat16 as the converter and the LoRA merge store it: uint16 bit patterns (numpy has no bfloat16).

A bfloat16 is the upper half of a float32: sign, the same 8-bit exponent, 7 mantissa bits. Widening is
exact; narrowing rounds to nearest with ties to even, overflows to ±Inf, keeps ±Inf, and keeps NaN a
NaN: a quiet NaN with the input's sign (a bare rounding carry would turn a NaN into ±Inf or ±0).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_SIGN_CLEAR = np.uint32(0x7FFF_FFFF)
_INF_BITS = np.uint32(0x7F80_0000)
_QUIET = np.uint16(0x0040)  # the top mantissa bit of a bfloat16


def bf16_bits_to_float32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 values stored as their uint16 bit patterns, widened exactly to float32."""
    widened: npt.NDArray[np.float32] = (bits.astype(np.uint32) << 16).view(np.float32)
    return widened


def float32_to_bf16_bits(values: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """``values`` (as float32) to bfloat16 bit patterns, rounding to nearest with ties to even.

    ±Inf stays ±Inf, a finite value beyond the bfloat16 range becomes ±Inf, NaN becomes a quiet NaN
    with its sign and the top of its payload.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (bits & _SIGN_CLEAR) > _INF_BITS
    # the carry of the rounding bias wraps only for NaN bit patterns, which are replaced below
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    result = rounded.astype(np.uint16)
    if nan.any():
        result[nan] = (bits[nan] >> np.uint32(16)).astype(np.uint16) | _QUIET
    return result
