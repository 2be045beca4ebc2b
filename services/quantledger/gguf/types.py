"""ggml tensor types as the installed llama.cpp defines them.

The table comes from libggml itself (``ggml_type_name``, ``ggml_blck_size``, ``ggml_type_size``), so a
newer llama.cpp with new types needs no code change here. gguf-py's own table is not used: it lags
behind llama.cpp (it lacks Q2_0 and has another Q8_1 block size than this build).
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
from dataclasses import dataclass


@dataclass(frozen=True)
class GgmlType:
    """One ggml tensor type: ``block_bytes`` bytes hold ``block_size`` elements."""

    id: int
    name: str  # upper case, as users write it: "Q4_K", "F16", "BF16"
    block_size: int
    block_bytes: int

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of ``n_elements`` values (a multiple of the block size)."""
        return (n_elements // self.block_size) * self.block_bytes


def _libggml() -> ctypes.CDLL:
    import llama_cpp  # deferred: loading llama.cpp costs ~50 ms and is not needed for every import

    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    return lib


@functools.cache
def ggml_types() -> dict[int, GgmlType]:
    """Every live ggml type of the installed llama.cpp, by id (removed ids are absent)."""
    import llama_cpp

    lib = _libggml()
    table: dict[int, GgmlType] = {}
    for type_id in range(int(llama_cpp.GGML_TYPE_COUNT)):
        raw = lib.ggml_type_name(type_id)
        block = int(lib.ggml_blck_size(type_id))
        size = int(lib.ggml_type_size(type_id))
        if not raw or block <= 0 or size <= 0:
            continue
        name = raw.decode()
        if not name.replace("_", "").isalnum():
            continue
        table[type_id] = GgmlType(type_id, name.upper(), block, size)
    return table


@functools.cache
def ggml_types_by_name() -> dict[str, GgmlType]:
    """The same table keyed by upper-case name."""
    return {t.name: t for t in ggml_types().values()}
