"""A bounded, validating safetensors reader that memory-maps and yields one tensor at a time.

Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
data. Every claim in the header is checked against the file before any tensor is read: header size,
dtypes, shape * dtype size == byte range, ranges inside the file and not overlapping. A bad file is
SourceInvalid naming the file and tensor, never quoting bytes of the file beyond what it claims to be
(names are cut short). The file is opened through ``client_files`` (inside its folder, a regular file),
and every later read checks that it is still the same file.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pathlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantledger.client_files import folder_file, same_file
from quantledger.errors import SourceInvalid, quote_client
from registry_client.bounded_json import JsonRefused, parse_bounded_json

MAX_HEADER_BYTES = 100 << 20
# BF16 has no numpy dtype: it is read as uint16 bits (gguf/bf16.py widens them).
DTYPES: dict[str, tuple[str, int]] = {
    "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("<i1", 1), "U8": ("<u1", 1), "BOOL": ("<u1", 1),
}  # fmt: skip


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class SafetensorsFile:
    """One .safetensors file: its validated header and lazy tensor access."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        with self.open() as handle:
            self._identity = os.fstat(handle.fileno())
            size = self._identity.st_size
            raw = handle.read(8)
            if len(raw) < 8:
                raise SourceInvalid(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length <= 1 or length > min(MAX_HEADER_BYTES, size - 8):
                raise SourceInvalid(
                    f"{path.name}: its header length field does not fit its {size} bytes "
                    "(not a safetensors file, or truncated)"
                )
            try:
                header = parse_bounded_json(handle.read(length), max_bytes=MAX_HEADER_BYTES)
            except JsonRefused as exc:
                raise SourceInvalid(f"{path.name}: header {exc}") from exc
        if not isinstance(header, dict):
            raise SourceInvalid(f"{path.name}: header is not a JSON object")
        base = 8 + length
        self.metadata = header.pop("__metadata__", {}) or {}
        entries = []
        for name, info in header.items():
            entries.append(self._entry(name, info, base, size))
        entries.sort(key=lambda e: e.start)
        for before, after in itertools.pairwise(entries):
            if after.start < before.end:
                raise SourceInvalid(
                    f"{path.name}: tensors {quote_client(before.name, 100)} and {quote_client(after.name, 100)} overlap"
                )
        self.tensors = {e.name: e for e in entries}

    def open(self) -> io.BufferedReader:
        """The file, opened through client_files; SourceInvalid when it changed since the header was read."""
        handle = folder_file(self.path.parent, self.path.name)
        identity = getattr(self, "_identity", None)
        unchanged = identity is None or (
            same_file(handle, identity) and os.fstat(handle.fileno()).st_size == identity.st_size
        )
        if not unchanged:
            handle.close()
            raise SourceInvalid(f"{self.path.name} changed while it was being read")
        return handle

    def _entry(self, name: str, info: object, base: int, size: int) -> TensorEntry:
        where = f"{self.path.name}: tensor {quote_client(name, 100)}"
        if not isinstance(info, dict):
            raise SourceInvalid(f"{where}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise SourceInvalid(f"{where}: dtype {quote_client(dtype, 40)} is not supported")
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape)):
            raise SourceInvalid(f"{where}: bad shape {quote_client(shape, 100, quoted=False)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise SourceInvalid(f"{where}: bad data_offsets {quote_client(offsets, 100, quoted=False)}")
        start, end = base + offsets[0], base + offsets[1]
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][1] if shape else DTYPES[dtype][1]
        if offsets[0] < 0 or end - start != expected:
            raise SourceInvalid(f"{where}: data_offsets {offsets} do not hold {shape} {dtype} ({expected} bytes)")
        if end > size:
            raise SourceInvalid(f"{where}: data ends at byte {end} but the file has {size} (truncated?)")
        return TensorEntry(name, str(dtype), tuple(shape), start, end)

    def read(self, name: str) -> npt.NDArray[np.generic]:
        """The tensor ``name`` as a numpy array (a copy: the file is unmapped afterwards)."""
        entry = self.tensors[name]
        with self.open() as handle:
            if entry.end == entry.start:
                return np.zeros(entry.shape, dtype=DTYPES[entry.dtype][0])
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = np.frombuffer(mapped, dtype=DTYPES[entry.dtype][0], count=entry.n_elements, offset=entry.start)
                result = view.reshape(entry.shape).copy()
                del view  # the map can only close once no array points into it
                return result

    def entries(self) -> Iterator[TensorEntry]:
        return iter(self.tensors.values())
