"""A safe, bounded reader for GGUF headers, and the exact size of the file llama.cpp quantizes to.

The reader parses the header (key/value metadata and tensor infos) with ordinary buffered reads; it
never memory-maps the file and never trusts a count before checking it against the bytes the file
still holds, so a hostile header costs at most a few chunk-sized reads. Every malformed input raises
:class:`~quantledger.errors.SourceInvalid` naming the file and what is wrong with it.

Layout (all little endian)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv      x  (string key, i32 value type, value)
    n_tensors x  (string name, u32 n_dims, n_dims x i64 ne, i32 ggml type, u64 offset)
    zero padding to ``general.alignment`` (default 32), then the tensor data section

A string is a u64 byte length followed by UTF-8 bytes; an array value is an i32 element type, a u64
count and the elements. Tensor offsets are relative to the start of the data section.

:func:`predict_quantized_file_size` reproduces the layout ``llama_model_quantize`` writes (llama.cpp
``src/llama-quant.cpp`` with ``ggml/src/gguf.cpp``): every source key copied, the given u32 keys
(re)set, the split keys removed, one tensor info per tensor with trailing unit dimensions dropped,
the metadata padded to 32 bytes and every tensor's data padded to 32 bytes. llama.cpp always pads to
the default alignment of 32 there, whatever ``general.alignment`` the source declares.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from quantledger.errors import InvalidArgument, SourceInvalid, SourceNotFound

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
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
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

_HEADER_BYTES = 24  # magic, version, tensor count, kv count
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # non-empty key, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # non-empty name, n_dims, one dimension, type, offset
_CHUNK = 1 << 20
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})

# GGUF value types (gguf.GGUFValueType): struct format of the scalar ones, numpy dtype for arrays.
_STRING = 8
_ARRAY = 9
_BOOL = 7
_SCALAR_FORMATS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_SCALARS = {vtype: struct.Struct(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
_DTYPES = {
    vtype: np.dtype(name)
    for vtype, name in {
        0: "<u1",
        1: "<i1",
        2: "<u2",
        3: "<i2",
        4: "<u4",
        5: "<i4",
        6: "<f4",
        7: "<u1",
        10: "<u8",
        11: "<i8",
        12: "<f8",
    }.items()
}
_UINT32 = 4
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


@functools.cache
def _type_table() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, block elements, block bytes).

    gguf-py's table, overridden and extended by the installed libggml's when llama.cpp loads: gguf-py
    lags behind llama.cpp (it lacks newer types and has another Q8_1 block size).
    """
    import gguf

    table: dict[int, tuple[str, int, int]] = {}
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        table[int(qtype)] = (qtype.name, int(block), int(size))
    try:
        from quantledger.ggml_types import ggml_types

        live = ggml_types()
    except (ImportError, OSError, AttributeError):
        return table
    for type_id, kind in live.items():
        table[type_id] = (kind.name, kind.block_size, kind.block_bytes)
    return table


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _cut_at_nul(raw: bytes) -> int:
    """Length llama.cpp keeps of a string it copies through a C string."""
    nul = raw.find(b"\0")
    return len(raw) if nul < 0 else nul


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
            written += 8 + _cut_at_nul(raw)
        return values, written


class _Parser:
    def __init__(self, cursor: _Cursor, fail: Callable[[str], SourceInvalid]) -> None:
        self.cur = cursor
        self.fail = fail
        self.elements_left = MAX_TOTAL_ELEMENTS

    def value(self, vtype: int, key: str, depth: int) -> tuple[object, int]:
        """One value of type ``vtype`` and the bytes it takes when written (without its own type tag)."""
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            raw = self.cur.unpack(scalar, f"value of {key!r}")
            return (bool(raw) if vtype == _BOOL else raw), scalar.size
        if vtype == _STRING:
            data = self.cur.raw_string(f"value of {key!r}", MAX_STRING_BYTES)
            return _decode_lenient(data), 8 + _cut_at_nul(data)
        if vtype == _ARRAY:
            return self.array(key, depth + 1)
        raise self.fail(f"key {key!r} has unknown value type {vtype}")

    def array(self, key: str, depth: int) -> tuple[list[object], int]:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"key {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
        etype = self.cur.i32(f"element type of {key!r}")
        count = self.cur.u64(f"element count of {key!r}")
        scalar = _SCALARS.get(etype)
        if scalar is not None:
            min_size = scalar.size
        elif etype == _STRING:
            min_size = 8
        elif etype == _ARRAY:
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
            data = np.frombuffer(self.cur.take(count * scalar.size, f"array {key!r}"), dtype=_DTYPES[etype])
            values: list[object] = (data != 0).tolist() if etype == _BOOL else data.tolist()
            return values, written + count * scalar.size
        if etype == _STRING:
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
    display = os.path.basename(text_path) or text_path

    def fail(message: str) -> SourceInvalid:
        return SourceInvalid(f"{display}: {message}", path=text_path)

    try:
        stream = open(text_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise SourceNotFound(f"{display} does not exist", path=text_path) from exc
    except (OSError, ValueError) as exc:
        raise fail(f"cannot open: {getattr(exc, 'strerror', None) or exc}") from exc
    with stream:
        try:
            file_size = os.fstat(stream.fileno()).st_size
            return _parse(stream, text_path, file_size, fail)
        except SourceInvalid:
            raise
        except OSError as exc:
            raise fail(f"cannot read: {exc.strerror or exc}") from exc
        except (struct.error, ValueError, OverflowError, MemoryError, IndexError, TypeError) as exc:
            raise fail(f"malformed header ({type(exc).__name__}: {exc})") from exc


def _parse(stream: BinaryIO, path: str, file_size: int, fail: Callable[[str], SourceInvalid]) -> GgufHeader:
    cur = _Cursor(stream, file_size, fail)
    if file_size < 4 or cur.take(4, "magic") != GGUF_MAGIC:
        raise fail("not a GGUF file (wrong magic)")
    if file_size < _HEADER_BYTES:
        raise fail(f"truncated: {file_size} bytes, shorter than the {_HEADER_BYTES}-byte GGUF header")
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        hint = " (big-endian file?)" if version & 0xFFFF == 0 else ""
        raise fail(f"unsupported GGUF version {version}{hint}; versions 2 and 3 are supported")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
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
        if key == "general.alignment" and vtype != _UINT32:
            raise fail("general.alignment must be a u32")
        value, size = parser.value(vtype, key, 0)
        metadata[key] = value
        layout.append((raw_key[: _cut_at_nul(raw_key)], 4 + size))
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

    table = _type_table()
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
        type_name, block, block_bytes = kind
        if shape[0] % block:
            raise fail(
                f"tensor {name!r}: row length {shape[0]} is not a multiple of the {type_name} block size {block}"
            )
        relative = cur.u64(f"data offset of tensor {name!r}")
        n_bytes = n_elements // block * block_bytes
        pending.append((name, shape, type_id, type_name, relative, n_elements, n_bytes))

    data_offset = _pad(cur.offset, alignment) if pending else cur.offset
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
    )


def _n_dims_written(shape: tuple[int, ...]) -> int:
    """Dimensions llama.cpp writes for a tensor: trailing dimensions of size 1 are dropped."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def predict_quantized_file_size(
    header: GgufHeader,
    new_types: Mapping[str, int],
    set_values: Mapping[str, int | str],
    extra_kv: Mapping[str, int] | None = None,
) -> int:
    """The exact size of the file ``llama_model_quantize`` writes for this source.

    ``new_types`` gives the ggml type of each tensor in the output (tensors not named keep their type);
    ``set_values`` the keys llama.cpp sets: ints are written as u32 (``general.quantization_version``,
    ``general.file_type``, integer kv_overrides), strings as strings (string kv_overrides).
    ``extra_kv`` adds keys set after the split keys are dropped, as key -> bytes of the typed value
    (type tag included): the split keys of a keep_split output shard.
    Raises InvalidArgument for an unknown type or one whose block size does not divide a row.
    """
    if header.metadata and not header.kv_layout:
        raise InvalidArgument("the header carries no key layout: read it with read_gguf_header")
    keys: dict[bytes, int] = {}
    for raw_key, value_bytes in header.kv_layout:
        keys.pop(raw_key, None)  # llama.cpp's gguf_set_* removes an existing key and appends
        keys[raw_key] = value_bytes
    for key, value in set_values.items():
        raw_key = key.encode("utf-8")
        raw_key = raw_key[: _cut_at_nul(raw_key)]
        keys.pop(raw_key, None)
        if isinstance(value, str):
            raw_value = value.encode("utf-8")
            keys[raw_key] = 4 + 8 + _cut_at_nul(raw_value)  # type tag, length, bytes up to a NUL
        else:
            keys[raw_key] = 4 + 4  # type tag, u32
    for key in SPLIT_KEYS:
        keys.pop(key.encode(), None)
    for key, value_bytes in (extra_kv or {}).items():
        keys.pop(key.encode(), None)
        keys[key.encode()] = value_bytes
    meta = _HEADER_BYTES + sum(8 + len(raw_key) + value_bytes for raw_key, value_bytes in keys.items())

    table = _type_table()
    data = 0
    for tensor in header.tensors:
        name_bytes = tensor.name.encode("utf-8")
        meta += 8 + _cut_at_nul(name_bytes) + 4 + 8 * _n_dims_written(tensor.shape) + 4 + 8
        type_id = new_types.get(tensor.name, tensor.ggml_type)
        kind = table.get(type_id)
        if kind is None:
            raise InvalidArgument(f"unknown ggml type {type_id} for tensor {tensor.name}")
        type_name, block, block_bytes = kind
        if tensor.shape[0] % block:
            raise InvalidArgument(
                f"tensor {tensor.name}: row length {tensor.shape[0]} is not a multiple of the "
                f"{type_name} block size {block}"
            )
        data += _pad(tensor.n_elements // block * block_bytes, DEFAULT_ALIGNMENT)
    return _pad(meta, DEFAULT_ALIGNMENT) + data
