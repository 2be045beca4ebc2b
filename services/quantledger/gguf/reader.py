"""A safe, bounded reader for GGUF headers.

The reader parses the header (key/value metadata and tensor infos, layout in
:mod:`quantledger.gguf.format`) with ordinary buffered reads; it never memory-maps the file and never
trusts a count before checking it against the bytes the file still holds, so a hostile header costs at
most a few chunk-sized reads. Every malformed input raises :class:`~quantledger.errors.SourceInvalid`
naming the file and what is wrong with it. Tensor types and sizes come from the installed libggml
(:mod:`quantledger.gguf.types`).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from quantledger.errors import SourceInvalid, SourceNotFound
from quantledger.gguf.format import (
    ARRAY,
    BOOL,
    DEFAULT_ALIGNMENT,
    DTYPES,
    GGUF_MAGIC,
    HEADER_BYTES,
    SCALARS,
    STRING,
    SUPPORTED_VERSIONS,
    UINT32,
    cut_at_nul,
    pad,
)
from quantledger.gguf.types import ggml_types

__all__ = [
    "DEFAULT_ALIGNMENT",
    "GGUF_MAGIC",
    "SUPPORTED_VERSIONS",
    "GgufHeader",
    "TensorInfo",
    "is_gguf_file",
    "read_gguf_header",
    "read_gguf_header_from",
]
# Bounds on what a header may hold (docs/SECURITY.md, "Bounds on model files"): each is far above what
# real models use, and far below what would let one file hold a job slot for minutes. Real models carry
# 20-60 keys; Llama 3's 128k-token and Gemma 3's 262k-token vocabularies (plus ~280k merges) are the
# largest arrays; DeepSeek-V3 (61 layers, 256 experts merged per layer) has about 1,100 tensors.
MAX_KV_COUNT = 4_096  # key/value pairs
MAX_TENSOR_COUNT = 65_536  # tensor infos
MAX_COUNT = MAX_TENSOR_COUNT  # the larger of the two counts (kept for callers of the old name)
MAX_DIMS = 4
MAX_ELEMENTS = 2**50  # per tensor
MAX_TENSOR_NAME_BYTES = 63  # llama.cpp's GGML_MAX_NAME (64) minus the terminating NUL
MAX_KEY_BYTES = 1_024  # one key; real keys are under 64 bytes
MAX_STRING_BYTES = 16 << 20  # one metadata string; chat templates are tens of KiB
MAX_ARRAY_ELEMENTS = 1_048_576  # one metadata array: a vocabulary (or merge list) of 1M entries at most
MAX_TOTAL_ELEMENTS = 8 * MAX_ARRAY_ELEMENTS  # all metadata array elements of one header together
MAX_METADATA_BYTES = 128 << 20  # the key/value section; a 262k-token vocabulary takes about 20 MiB
MAX_ARRAY_DEPTH = 4
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # non-empty key, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # non-empty name, n_dims, one dimension, type, offset
_CHUNK = 1 << 20
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it."""

    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    ggml_type: int
    type_name: str  # e.g. "F16", "Q4_K"
    offset: int  # absolute file offset of the data
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    """Everything in a GGUF file before its tensor data."""

    path: str
    version: int
    alignment: int
    file_size: int
    metadata: dict[str, object]  # str -> int/float/bool/str/list (arrays as python lists)
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # start of the tensor data section
    # Per key, in file order: the key's bytes as llama.cpp copies them (cut at a NUL) and the bytes its
    # value takes when llama.cpp writes it (type tags included). Filled by read_gguf_header.
    kv_layout: tuple[tuple[bytes, int], ...] = field(default=(), repr=False, compare=False)
    # Per key: its GGUF value type and, for an array, the element type (quantledger.gguf.format).
    value_types: Mapping[str, tuple[int, int | None]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def is_quantized(self) -> bool:
        """True when a tensor of two or more dimensions is stored in a type other than F32/F16/BF16."""
        return any(len(t.shape) >= 2 and t.type_name not in _FLOAT_TYPES for t in self.tensors)


class _Cursor:
    """Forward-only buffered reads that never go past the file size measured at open."""

    def __init__(self, stream: BinaryIO, file_size: int, fail: Callable[[str], SourceInvalid]) -> None:
        self._stream = stream
        self._size = file_size
        self._fail = fail
        self._buf = b""
        self._pos = 0  # position in _buf
        self._base = 0  # file offset of _buf[0]
        self.limit = file_size  # reads beyond this offset fail with ``limit_message``
        self.limit_message = ""

    @property
    def offset(self) -> int:
        return self._base + self._pos

    @property
    def remaining(self) -> int:
        return self._size - self.offset

    def ensure(self, n: int, what: str) -> None:
        """Make ``n`` bytes from the current position available in the buffer."""
        if self._pos + n <= len(self._buf):
            return
        if n > self.remaining:
            raise self._fail(f"truncated: {what} at byte {self.offset} needs {n} bytes, only {self.remaining} remain")
        if self.offset + n > self.limit:
            raise self._fail(f"{what} at byte {self.offset}: {self.limit_message}")
        rest = self._buf[self._pos :]
        want = min(max(n - len(rest), _CHUNK), self._size - self._base - len(self._buf))
        try:
            more = self._stream.read(want)
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from exc
        self._base += self._pos
        self._buf = rest + more
        self._pos = 0
        if len(self._buf) < n:
            raise self._fail(f"truncated: {what} at byte {self.offset}: the file shrank while being read")

    def take(self, n: int, what: str) -> bytes:
        self.ensure(n, what)
        start = self._pos
        self._pos += n
        return self._buf[start : self._pos]

    def unpack(self, fmt: struct.Struct, what: str) -> int | float:
        self.ensure(fmt.size, what)
        (value,) = fmt.unpack_from(self._buf, self._pos)
        self._pos += fmt.size
        return value  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def i32(self, what: str) -> int:
        return int(self.unpack(_I32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def i64(self, what: str) -> int:
        return int(self.unpack(_I64, what))

    def raw_string(self, what: str, limit: int) -> bytes:
        length = self.u64(f"length of {what}")
        if length > self.remaining:
            raise self._fail(f"{what}: string length {length} exceeds the {self.remaining} bytes left")
        if length > limit:
            raise self._fail(f"{what}: string length {length} exceeds the limit of {limit} bytes")
        return self.take(length, what)

    def string_array(self, count: int, what: str) -> tuple[list[str], int]:
        """``count`` strings and the bytes llama.cpp writes for them (lengths included, NULs cut)."""
        values: list[str] = []
        append = values.append
        written = 0
        unpack_len = _U64.unpack_from
        for index in range(count):
            if self._pos + 8 > len(self._buf):
                self.ensure(8, f"{what}[{index}]")
            (length,) = unpack_len(self._buf, self._pos)
            end = self._pos + 8 + length
            if end > len(self._buf):
                if length > self.remaining - 8:
                    raise self._fail(
                        f"{what}[{index}]: string length {length} exceeds the {max(0, self.remaining - 8)} "
                        "bytes left in the file"
                    )
                if length > MAX_STRING_BYTES:
                    raise self._fail(
                        f"{what}[{index}]: string length {length} exceeds the limit of {MAX_STRING_BYTES} bytes"
                    )
                self.ensure(8 + length, f"{what}[{index}]")
                end = self._pos + 8 + length
            raw = self._buf[self._pos + 8 : end]
            self._pos = end
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                append(raw.decode("utf-8", "replace"))
            written += 8 + cut_at_nul(raw)
        return values, written


class _Parser:
    def __init__(self, cursor: _Cursor, fail: Callable[[str], SourceInvalid]) -> None:
        self.cur = cursor
        self.fail = fail
        self.elements_left = MAX_TOTAL_ELEMENTS
        self.element_type: int | None = None  # element type of the last outermost array read

    def value(self, vtype: int, key: str, depth: int) -> tuple[object, int]:
        """One value of type ``vtype`` and the bytes it takes when written (without its own type tag)."""
        scalar = SCALARS.get(vtype)
        if scalar is not None:
            raw = self.cur.unpack(scalar, f"value of {key!r}")
            return (bool(raw) if vtype == BOOL else raw), scalar.size
        if vtype == STRING:
            data = self.cur.raw_string(f"value of {key!r}", MAX_STRING_BYTES)
            return _decode_lenient(data), 8 + cut_at_nul(data)
        if vtype == ARRAY:
            return self.array(key, depth + 1)
        raise self.fail(f"key {key!r} has unknown value type {vtype}")

    def array(self, key: str, depth: int) -> tuple[list[object], int]:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"key {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
        etype = self.cur.i32(f"element type of {key!r}")
        if depth == 1:
            self.element_type = etype
        count = self.cur.u64(f"element count of {key!r}")
        scalar = SCALARS.get(etype)
        if scalar is not None:
            min_size = scalar.size
        elif etype == STRING:
            min_size = 8
        elif etype == ARRAY:
            min_size = 12
        else:
            raise self.fail(f"key {key!r} is an array of unknown value type {etype}")
        if count * min_size > self.cur.remaining:
            raise self.fail(f"key {key!r}: array of {count} elements cannot fit in the {self.cur.remaining} bytes left")
        if count > MAX_ARRAY_ELEMENTS:
            raise self.fail(
                f"key {key!r}: array of {count} elements is over the limit of {MAX_ARRAY_ELEMENTS} (MAX_ARRAY_ELEMENTS)"
            )
        if count > self.elements_left:
            raise self.fail(
                f"key {key!r}: the metadata arrays hold more than {MAX_TOTAL_ELEMENTS} elements together "
                "(MAX_TOTAL_ELEMENTS)"
            )
        self.elements_left -= count
        written = 4 + 8
        if scalar is not None:
            data = np.frombuffer(self.cur.take(count * scalar.size, f"array {key!r}"), dtype=DTYPES[etype])
            values: list[object] = (data != 0).tolist() if etype == BOOL else data.tolist()
            return values, written + count * scalar.size
        if etype == STRING:
            strings, size = self.cur.string_array(count, f"array {key!r}")
            return list(strings), written + size
        nested: list[object] = []
        for _ in range(count):
            item, size = self.array(key, depth + 1)
            nested.append(item)
            written += size  # element type, count and elements of the inner array
        return nested, written


def _decode_lenient(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the GGUF magic; False (never an exception) when it cannot be read."""
    try:
        with open(path, "rb") as stream:
            return stream.read(4) == GGUF_MAGIC
    except (OSError, ValueError):
        return False


def read_gguf_header(path: str | os.PathLike[str]) -> GgufHeader:
    """Parse and validate the header of the GGUF file at ``path``.

    Raises SourceNotFound when the file does not exist and SourceInvalid for anything malformed.
    """
    text_path = os.fspath(path)
    try:
        stream = open(text_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        display = os.path.basename(text_path) or text_path
        raise SourceNotFound(f"{display} does not exist", path=text_path) from exc
    except (OSError, ValueError) as exc:
        raise _failure(text_path)(f"cannot open: {getattr(exc, 'strerror', None) or exc}") from exc
    with stream:
        return read_gguf_header_from(stream, text_path)


def read_gguf_header_from(stream: BinaryIO, path: str) -> GgufHeader:
    """Parse and validate the header of the GGUF file open as ``stream`` (read from its start).

    ``path`` names the file in the header and in error messages. Raises SourceInvalid for anything
    malformed; the stream is left open.
    """
    fail = _failure(path)
    try:
        stream.seek(0)
        file_size = os.fstat(stream.fileno()).st_size
        return _parse(stream, path, file_size, fail)
    except SourceInvalid:
        raise
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from exc
    except (struct.error, ValueError, OverflowError, MemoryError, IndexError, TypeError) as exc:
        raise fail(f"malformed header ({type(exc).__name__}: {exc})") from exc


def _failure(path: str) -> Callable[[str], SourceInvalid]:
    display = os.path.basename(path) or path

    def fail(message: str) -> SourceInvalid:
        return SourceInvalid(f"{display}: {message}", path=path)

    return fail


def _parse(stream: BinaryIO, path: str, file_size: int, fail: Callable[[str], SourceInvalid]) -> GgufHeader:
    cur = _Cursor(stream, file_size, fail)
    if file_size < 4 or cur.take(4, "magic") != GGUF_MAGIC:
        raise fail("not a GGUF file (wrong magic)")
    if file_size < HEADER_BYTES:
        raise fail(f"truncated: {file_size} bytes, shorter than the {HEADER_BYTES}-byte GGUF header")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        hint = " (byte-swapped: a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise fail(f"unsupported GGUF version {version}{hint}; versions 2 and 3 are supported")
    n_tensors = cur.i64("tensor count")  # signed, as llama.cpp reads them
    n_kv = cur.i64("key/value count")
    if n_tensors < 0 or n_kv < 0:
        raise fail(f"tensor count {n_tensors} or key/value count {n_kv} is negative")
    needed = n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES
    if needed > cur.remaining:
        raise fail(f"tensor count {n_tensors} and key/value count {n_kv} cannot fit in the {cur.remaining} bytes left")
    if n_tensors > MAX_TENSOR_COUNT:
        raise fail(f"tensor count {n_tensors} exceeds the limit of {MAX_TENSOR_COUNT} (MAX_TENSOR_COUNT)")
    if n_kv > MAX_KV_COUNT:
        raise fail(f"key/value count {n_kv} exceeds the limit of {MAX_KV_COUNT} (MAX_KV_COUNT)")

    parser = _Parser(cur, fail)
    cur.limit = MAX_METADATA_BYTES
    cur.limit_message = f"the metadata takes more than {MAX_METADATA_BYTES} bytes (MAX_METADATA_BYTES)"
    metadata: dict[str, object] = {}
    layout: list[tuple[bytes, int]] = []
    value_types: dict[str, tuple[int, int | None]] = {}
    for index in range(n_kv):
        raw_key = cur.raw_string(f"key {index}", MAX_KEY_BYTES)
        if not raw_key:
            raise fail(f"key {index} is empty")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"key {index} is not valid UTF-8") from None
        if key in metadata:
            raise fail(f"duplicate key {key!r}")
        vtype = cur.i32(f"value type of {key!r}")
        if key == "general.alignment" and vtype != UINT32:
            raise fail("general.alignment must be a u32")
        parser.element_type = None
        value, size = parser.value(vtype, key, 0)
        metadata[key] = value
        value_types[key] = (vtype, parser.element_type)
        layout.append((raw_key[: cut_at_nul(raw_key)], 4 + size))
        if cur.offset > MAX_METADATA_BYTES:
            raise fail(f"key {key!r}: {cur.limit_message}")
    cur.limit = file_size

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        declared = metadata["general.alignment"]
        assert isinstance(declared, int)
        if declared <= 0 or declared & (declared - 1):
            raise fail(f"general.alignment {declared} is not a power of two")
        alignment = declared

    table = ggml_types()
    names: set[str] = set()
    pending: list[tuple[str, tuple[int, ...], int, str, int, int, int]] = []
    for index in range(n_tensors):
        raw_name = cur.raw_string(f"name of tensor {index}", MAX_TENSOR_NAME_BYTES)
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"name of tensor {index} is not valid UTF-8") from None
        if not name:
            raise fail(f"tensor {index} has an empty name")
        if not name.isprintable():
            raise fail(f"name of tensor {index} ({name!r}) holds a control character")
        if name in names:
            raise fail(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise fail(f"tensor {name!r} has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed")
        shape = tuple(cur.i64(f"shape of tensor {name!r}") for _ in range(n_dims))
        if any(dim <= 0 for dim in shape):
            raise fail(f"tensor {name!r} has a dimension <= 0: {list(shape)}")
        n_elements = 1
        for dim in shape:
            n_elements *= dim
            if n_elements > MAX_ELEMENTS:
                raise fail(f"tensor {name!r} has more than 2**50 elements: {list(shape)}")
        type_id = cur.i32(f"type of tensor {name!r}")
        kind = table.get(type_id)
        if kind is None:
            raise fail(f"tensor {name!r} has unknown ggml type {type_id}")
        type_name, block, block_bytes = kind.name, kind.block_size, kind.block_bytes
        if shape[0] % block:
            raise fail(
                f"tensor {name!r}: row length {shape[0]} is not a multiple of the {type_name} block size {block}"
            )
        relative = cur.u64(f"data offset of tensor {name!r}")
        n_bytes = n_elements // block * block_bytes
        pending.append((name, shape, type_id, type_name, relative, n_elements, n_bytes))

    data_offset = pad(cur.offset, alignment) if pending else cur.offset
    if pending and data_offset > file_size:
        raise fail(f"truncated: the data section starts at byte {data_offset}, file has {file_size}")
    tensors: list[TensorInfo] = []
    for name, shape, type_id, type_name, relative, n_elements, n_bytes in pending:
        if relative % alignment:
            raise fail(f"tensor {name!r}: data offset {relative} is not aligned to {alignment} bytes")
        start = data_offset + relative
        if start + n_bytes > file_size:
            raise fail(f"truncated: tensor {name} needs {start + n_bytes} bytes, file has {file_size}")
        tensors.append(TensorInfo(name, shape, type_id, type_name, start, n_elements, n_bytes))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in itertools.pairwise(ordered):
        if after.offset < before.offset + before.n_bytes:
            raise fail(f"tensor data of {before.name!r} and {after.name!r} overlap")

    return GgufHeader(
        path=path,
        version=version,
        alignment=alignment,
        file_size=file_size,
        metadata=metadata,
        tensors=tuple(tensors),
        data_offset=data_offset,
        kv_layout=tuple(layout),
        value_types=value_types,
    )
