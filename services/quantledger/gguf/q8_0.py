"""Q8_0 encoding, bit for bit as ggml's reference ``quantize_row_q8_0_ref`` (ggml-quants.c).

A block holds 32 values: an F16 scale ``d = max|x| / 127`` and 32 int8 ``round(x / d)`` (half away
from zero; 0 when the block is all zeros), 34 bytes in all. The arithmetic is float32, like ggml's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLOCK = 32
BLOCK_BYTES = 2 + BLOCK


def quantize_q8_0(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """``values`` (any shape whose last dimension is a multiple of 32, as float32) as Q8_0 blocks,
    flattened to bytes in row order. ValueError when rows do not split into blocks."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 0 or array.shape[-1] % BLOCK:
        raise ValueError(f"Q8_0 needs rows of a multiple of {BLOCK} values, not shape {array.shape}")
    blocks = array.reshape(-1, BLOCK)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(scale == 0, np.float32(0), np.float32(1) / scale).astype(np.float32)
    scaled = blocks * inverse
    magnitude = np.abs(scaled)
    floored = np.floor(magnitude)
    rounded = np.sign(scaled) * (floored + np.floor(2 * (magnitude - floored)))  # C roundf
    out = np.empty((blocks.shape[0], BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = scale.astype("<f2").view(np.uint8)
    out[:, 2:] = rounded.astype(np.int8).view(np.uint8)
    return out.reshape(-1)
