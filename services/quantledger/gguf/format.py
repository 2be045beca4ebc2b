"""The GGUF file format's constants, shared by the reader, the layout computation and the writer.

Layout (all little endian)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv      x  (string key, i32 value type, value)
    n_tensors x  (string name, u32 n_dims, n_dims x i64 ne, i32 ggml type, u64 offset)
    zero padding to ``general.alignment`` (default 32), then the tensor data section

A string is a u64 byte length followed by UTF-8 bytes; an array value is an i32 element type, a u64
count and the elements. Tensor offsets are relative to the start of the data section.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # the version the writer writes
SUPPORTED_VERSIONS = (2, 3)  # the versions the reader reads
DEFAULT_ALIGNMENT = 32
HEADER_BYTES = 24  # magic, version, tensor count, kv count

# GGUF value types (gguf_type in ggml/src/gguf.cpp, gguf.GGUFValueType in gguf-py)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = range(8)
STRING, ARRAY, UINT64, INT64, FLOAT64 = range(8, 13)

#: struct format of each scalar value type
SCALAR_FORMATS: dict[int, str] = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<B",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}
SCALARS = {vtype: struct.Struct(fmt) for vtype, fmt in SCALAR_FORMATS.items()}
#: numpy dtype of each scalar value type, for arrays
DTYPES: dict[int, np.dtype[Any]] = {
    UINT8: np.dtype("<u1"),
    INT8: np.dtype("<i1"),
    UINT16: np.dtype("<u2"),
    INT16: np.dtype("<i2"),
    UINT32: np.dtype("<u4"),
    INT32: np.dtype("<i4"),
    FLOAT32: np.dtype("<f4"),
    BOOL: np.dtype("<u1"),
    UINT64: np.dtype("<u8"),
    INT64: np.dtype("<i8"),
    FLOAT64: np.dtype("<f8"),
}


def pad(n: int, alignment: int = DEFAULT_ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) // alignment * alignment


def cut_at_nul(raw: bytes) -> int:
    """Length llama.cpp keeps of a string it copies through a C string."""
    nul = raw.find(b"\0")
    return len(raw) if nul < 0 else nul
