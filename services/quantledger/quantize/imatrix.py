"""Importance matrices (imatrix) for llama.cpp quantization.

llama.cpp's ``llama-quantize --imatrix FILE`` reads one of two file formats and hands the library
(``llama_model_quantize_params.imatrix``) one float vector per tensor name. This module reads both
formats the way the tool does and produces exactly those vectors, so a quantization run through
llama-cpp-python gets the same importance weights as the command line tool would use.

GGUF format (written by current ``llama-imatrix``; ``general.type = "imatrix"``)
    Per weight tensor ``W`` two F32 tensors: ``W.in_sum2`` with ggml shape ``[ne0, n_mat]`` (sums of
    squared activations, one row per expert; ``n_mat == 1`` for dense tensors) and ``W.counts`` with
    shape ``[1, n_mat]`` (number of activations summed per expert, stored as float). The metadata keys
    ``imatrix.datasets`` (array of strings), ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (both
    UINT32) must all be present, otherwise the tool refuses the file. The value passed for ``W`` is
    ``in_sum2[j, i] / float32(lround(counts[j]))`` for each expert ``j`` whose rounded count is positive,
    and ``1.0`` for every value of an expert whose count is zero or negative.

Legacy ``.dat`` format (``llama-imatrix --output-format dat``), all little-endian
    ``int32 n_entries``; per entry ``int32 name_len, name, int32 ncall, int32 nval, float32[nval]``;
    then optionally ``int32 last_chunk`` and ``int32 dataset_len, dataset``. The stored values are
    ``mean(x^2) * ncall``; the value passed is ``value / float32(ncall)`` when ``ncall > 0`` and the
    stored value unchanged otherwise.

The tool passes every entry of the file (unless ``--include-weights``/``--exclude-weights`` filter
them). Inside ``llama_model_quantize`` an entry is used for the tensor of the same name when its length
is ``ne0 * ne2`` of that tensor (``ne0`` for ordinary 2-D weights); a length mismatch aborts the
quantization (``token_embd.weight`` is only logged), a missing entry is logged and the tensor is
quantized without importance data, unless its target type requires it (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS,
IQ2_S, IQ3_XXS, and Q2_K inside a Q2_K_S file), which aborts. Non-finite values abort as well, so the
loader rejects them up front.

Files are parsed with bounded reads only: every count and length read from a file is checked
against the bytes actually left before anything is allocated or looped over. A GGUF imatrix's header
is read by the service's one GGUF reader (:mod:`quantledger.gguf.reader`), whose errors come back as
ImatrixInvalid; the checks here are the imatrix's own (its metadata keys and their types, F32
sums/counts pairs whose data lies back to back, as ``llama-imatrix`` writes it).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import pathlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO, cast

import numpy as np
import numpy.typing as npt

from quantledger.errors import ImatrixInvalid, SourceInvalid, quote_client
from quantledger.gguf.format import ARRAY, GGUF_MAGIC, STRING, UINT32, pad
from quantledger.gguf.layout import n_dims_written
from quantledger.gguf.reader import TensorInfo, read_gguf_header_from
from quantledger.gguf.writer import GgufMetadata, encode_gguf

__all__ = [
    "Imatrix",
    "ImatrixCArray",
    "check_covers",
    "load_imatrix",
    "write_imatrix_dat",
    "write_imatrix_gguf",
]

FloatArray = npt.NDArray[np.float32]

GGML_MAX_NAME = 64  # tensor names in GGUF are at most 63 bytes
INT32_MAX = 2**31 - 1

KEY_GENERAL_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"

GGML_TYPE_F32 = 0


@dataclass(frozen=True, eq=False)
class Imatrix:
    """An importance matrix as llama.cpp's quantize tool would hand it to the library.

    ``entries`` maps tensor names to read-only float32 vectors (length ``ne0``, or ``ne0 * n_expert``
    for stacked expert tensors), already normalized exactly as the tool normalizes them.
    ``chunk_size`` is ``None`` for the legacy format, which does not record it.
    """

    entries: Mapping[str, FloatArray]
    format: str  # "gguf" | "dat"
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int | None
    sha256: str


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


class _Cursor:
    """Bounded little-endian reader over a legacy .dat buffer; every read checks the bytes left first."""

    def __init__(self, buf: mmap.mmap | bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.what = what

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, item: str) -> None:
        if n < 0 or n > self.remaining:
            raise ImatrixInvalid(
                f"{self.what} is truncated: {item} needs {n} bytes at offset {self.pos}, only {self.remaining} left"
            )

    def unpack(self, fmt: str, item: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, item)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def i32(self, item: str) -> int:
        return int(self.unpack("<i", item))

    def raw(self, n: int, item: str) -> bytes:
        self.need(n, item)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def floats(self, offset: int, count: int) -> FloatArray:
        """Copy ``count`` little-endian float32 values starting at absolute ``offset``."""
        if offset < 0 or count < 0 or offset + 4 * count > self.end:
            raise ImatrixInvalid(f"{self.what} is truncated: {count} floats at offset {offset}")
        return _copy_floats(self.buf, offset, count)


def _copy_floats(buf: mmap.mmap | bytes, offset: int, count: int) -> FloatArray:
    view = np.frombuffer(buf, dtype="<f4", count=count, offset=offset)
    out = view.astype(np.float32, copy=True)
    del view  # release the buffer export so the mapping can be closed
    return out


def _decode_name(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise ImatrixInvalid(f"{what} contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImatrixInvalid(f"{what} is not valid UTF-8") from exc


def _c_string(raw: bytes) -> str:
    """Decode a string the way llama.cpp uses it (up to the first NUL), never failing."""
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _finite_or_raise(values: FloatArray, name: str) -> None:
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ImatrixInvalid(
            f"imatrix entry {name!r} contains {bad} non-finite value(s); llama.cpp refuses such data",
            tensor=name,
        )


def load_imatrix(path: str | os.PathLike[str], roots: Sequence[pathlib.Path] | None = None) -> Imatrix:
    """Read an imatrix file in GGUF or legacy ``.dat`` format.

    With ``roots``, ``path`` is a client's and must lie under them; without, it is a path the service
    resolved and checked before (client_files.open_resolved).

    The format is chosen by the ``GGUF`` magic. Raises :class:`ImatrixInvalid` for unreadable, empty,
    truncated, malformed or hostile files, for GGUF files that are not importance matrices (missing
    ``imatrix.*`` metadata or another ``general.type``), and for non-finite values.
    """
    from quantledger.client_files import open_client_file, open_resolved

    shown = quote_client(os.fspath(path))
    try:
        # client_files: inside the roots, a regular file (a FIFO or device is refused before any open)
        if roots is None:
            fh = open_resolved(path, what="imatrix", error=ImatrixInvalid, missing=ImatrixInvalid)
        else:
            fh = open_client_file(path, roots, what="imatrix", error=ImatrixInvalid, missing=ImatrixInvalid)
        with fh:
            info = os.fstat(fh.fileno())
            if info.st_size == 0:
                raise ImatrixInvalid(f"imatrix file {shown} is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                digest = hashlib.sha256(mm).hexdigest()
                if mm[:4] == GGUF_MAGIC:
                    return _load_gguf(fh, mm, digest)
                return _load_dat(mm, digest)
    except OSError as exc:
        raise ImatrixInvalid(f"cannot read imatrix file {shown}: {exc.strerror or 'read error'}") from exc
    except (ValueError, OverflowError, MemoryError, struct.error) as exc:  # defensive: no raw parser errors
        raise ImatrixInvalid(f"imatrix file {shown} is malformed: {quote_client(exc)}") from exc


# ---- legacy .dat -----------------------------------------------------------------------------------

_DAT_MIN_ENTRY = 4 + 4 + 4 + 4  # name_len, ncall, nval, at least one float


def _load_dat(buf: mmap.mmap | bytes, digest: str) -> Imatrix:
    cur = _Cursor(buf, "legacy imatrix file")
    if cur.remaining < 4:
        raise ImatrixInvalid("not an imatrix file: too short for a legacy entry count and no GGUF magic")
    n_entries = cur.i32("entry count")
    if n_entries < 1:
        raise ImatrixInvalid(f"legacy imatrix file has entry count {n_entries}; at least 1 is required")
    if n_entries > cur.remaining // _DAT_MIN_ENTRY:
        raise ImatrixInvalid(
            f"legacy imatrix file claims {n_entries} entries but only {cur.remaining} bytes follow "
            "(not an imatrix file, or truncated)"
        )
    entries: dict[str, FloatArray] = {}
    for index in range(n_entries):
        item = f"entry {index + 1}/{n_entries}"
        name_len = cur.i32(f"{item} name length")
        if name_len < 1:
            raise ImatrixInvalid(f"legacy imatrix {item} has invalid name length {name_len}")
        name = _decode_name(cur.raw(name_len, f"{item} name"), f"legacy imatrix {item} name")
        if name in entries:
            raise ImatrixInvalid(f"legacy imatrix has a duplicate entry {name!r}", tensor=name)
        ncall = cur.i32(f"{item} ({name}) ncall")
        nval = cur.i32(f"{item} ({name}) value count")
        if nval < 1:
            raise ImatrixInvalid(f"legacy imatrix entry {name!r} has invalid value count {nval}", tensor=name)
        cur.need(4 * nval, f"{nval} values of entry {name!r}")
        stored = cur.floats(cur.pos, nval)
        cur.pos += 4 * nval
        _finite_or_raise(stored, name)
        # llama-quantize: sums hold mean(x^2) * ncall, so divide by ncall when it is positive.
        values = stored / np.float32(ncall) if ncall > 0 else stored
        _finite_or_raise(values, name)
        entries[name] = values

    chunk_count = 0
    datasets: list[str] = []
    if cur.remaining:
        chunk_count = cur.i32("trailing chunk count")
        if chunk_count < 0:
            raise ImatrixInvalid(f"legacy imatrix has a negative chunk count {chunk_count}")
        if cur.remaining:
            ds_len = cur.i32("dataset name length")
            if ds_len < 0:
                raise ImatrixInvalid(f"legacy imatrix has a negative dataset name length {ds_len}")
            raw = cur.raw(ds_len, "dataset name")
            if raw:
                datasets.append(_c_string(raw))
        if cur.remaining:
            raise ImatrixInvalid(f"legacy imatrix has {cur.remaining} unexpected trailing bytes")
    return _freeze(entries, "dat", datasets, chunk_count, None, digest)


# ---- GGUF --------------------------------------------------------------------------------------------


def _load_gguf(stream: BinaryIO, buf: mmap.mmap, digest: str) -> Imatrix:
    """The header comes from the one GGUF reader (bounded, hostile-safe); the checks here are the
    imatrix's own: its metadata keys and their types, contiguous F32 sums/counts pairs."""
    try:
        header = read_gguf_header_from(stream, "GGUF imatrix file")
    except SourceInvalid as exc:
        raise ImatrixInvalid(exc.message) from exc
    kv, types = header.metadata, header.value_types

    if KEY_GENERAL_TYPE in kv:
        if types[KEY_GENERAL_TYPE][0] != STRING:
            raise ImatrixInvalid("GGUF general.type is not a string")
        gtype = str(kv[KEY_GENERAL_TYPE]).split("\0", 1)[0]  # as llama.cpp reads it, up to a NUL
        if gtype != "imatrix":
            raise ImatrixInvalid(f"GGUF file is not an importance matrix: general.type is {gtype!r}")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in kv]
    if missing:
        raise ImatrixInvalid(f"GGUF file is not an importance matrix: missing metadata {', '.join(missing)}")
    u32_meta: dict[str, int] = {}
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        value = kv[key]
        if types[key][0] != UINT32 or not isinstance(value, int):
            raise ImatrixInvalid(f"GGUF imatrix metadata {key} must be UINT32")
        u32_meta[key] = value
    datasets: list[str] = []
    if types[KEY_DATASETS] == (ARRAY, STRING):  # llama.cpp ignores a key of another type
        datasets = [str(s).split("\0", 1)[0] for s in cast(list[object], kv[KEY_DATASETS])]

    if not header.tensors:
        raise ImatrixInvalid("GGUF imatrix file holds no tensors")
    expected = 0
    for info in header.tensors:  # llama-imatrix writes the tensors' data back to back, in order
        relative = info.offset - header.data_offset
        if relative != expected:
            raise ImatrixInvalid(f"GGUF tensor {info.name!r} has data offset {relative}, expected {expected}")
        expected += pad(info.n_bytes, header.alignment)
    if header.data_offset + expected > header.file_size:  # llama.cpp reads the last tensor's padding too
        raise ImatrixInvalid(
            f"GGUF imatrix file is truncated: tensor data needs {header.data_offset + expected} bytes, "
            f"the file has {header.file_size}"
        )

    pairs: dict[str, list[TensorInfo | None]] = {}
    for info in header.tensors:
        if info.name.endswith(SUFFIX_SUMS):
            pairs.setdefault(info.name[: -len(SUFFIX_SUMS)], [None, None])[0] = info
        elif info.name.endswith(SUFFIX_COUNTS):
            pairs.setdefault(info.name[: -len(SUFFIX_COUNTS)], [None, None])[1] = info
    entries: dict[str, FloatArray] = {}
    for name in sorted(pairs):
        sums_info, counts_info = pairs[name]
        if not name:
            raise ImatrixInvalid("GGUF imatrix has a tensor named only by its suffix (empty tensor name)")
        if sums_info is None or counts_info is None:
            raise ImatrixInvalid(f"GGUF imatrix has mismatched sums and counts for {name!r}", tensor=name)
        if sums_info.ggml_type != GGML_TYPE_F32 or counts_info.ggml_type != GGML_TYPE_F32:
            raise ImatrixInvalid(f"GGUF imatrix sums and counts for {name!r} must be F32", tensor=name)
        nval, ncounts = sums_info.n_elements, counts_info.n_elements
        if nval % ncounts:
            raise ImatrixInvalid(
                f"GGUF imatrix entry {name!r} has {nval} values for {ncounts} counts (need a positive multiple)",
                tensor=name,
            )
        sums = _copy_floats(buf, sums_info.offset, nval)  # the reader checked both lie inside the file
        counts = _copy_floats(buf, counts_info.offset, ncounts)
        _finite_or_raise(sums, name)
        if not np.isfinite(counts).all() or (np.abs(counts) >= 2.0**62).any():
            raise ImatrixInvalid(f"GGUF imatrix counts for {name!r} are not finite integers", tensor=name)
        entries[name] = _normalize_gguf(sums, counts, name)
    if not entries:
        raise ImatrixInvalid("GGUF file holds no imatrix entries (no <tensor>.in_sum2 / <tensor>.counts pairs)")
    return _freeze(entries, "gguf", datasets, u32_meta[KEY_CHUNK_COUNT], u32_meta[KEY_CHUNK_SIZE], digest)


def _normalize_gguf(sums: FloatArray, counts: FloatArray, name: str) -> FloatArray:
    """Per expert j: ``sums[j] / float(lround(counts[j]))`` if that count is positive, else all 1.0."""
    ne0 = sums.size // counts.size
    # std::lround: round half away from zero; then int64 -> float (float32) for the division
    rounded = np.sign(counts.astype(np.float64)) * np.floor(np.abs(counts.astype(np.float64)) + 0.5)
    count_f = rounded.astype(np.int64).astype(np.float32)
    rows = sums.reshape(counts.size, ne0)
    out = np.ones_like(rows)
    positive = count_f > 0
    out[positive] = rows[positive] / count_f[positive, None]
    flat = out.reshape(-1)
    _finite_or_raise(flat, name)
    return flat


def _freeze(
    entries: dict[str, FloatArray],
    fmt: str,
    datasets: list[str],
    chunk_count: int,
    chunk_size: int | None,
    digest: str,
) -> Imatrix:
    for values in entries.values():
        values.setflags(write=False)
    return Imatrix(
        entries=MappingProxyType(entries),
        format=fmt,
        datasets=tuple(datasets),
        chunk_count=chunk_count,
        chunk_size=chunk_size,
        sha256=digest,
    )


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _prepare_entries(entries: Mapping[str, npt.ArrayLike]) -> list[tuple[str, bytes, FloatArray]]:
    """Validate names and values; returns (name, utf-8 name, 2-D float32 [n_mat, ne0]) sorted by name."""
    if not entries:
        raise ValueError("an imatrix needs at least one entry")
    out: list[tuple[str, bytes, FloatArray]] = []
    for name in sorted(entries):
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"invalid imatrix entry name {name!r}")
        arr = np.asarray(entries[name], dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"imatrix entry {name!r} must be a non-empty 1-D or (n_expert, ne0) array")
        if not np.isfinite(arr).all():
            raise ValueError(f"imatrix entry {name!r} contains non-finite values")
        out.append((name, name.encode("utf-8"), np.ascontiguousarray(arr, dtype="<f4")))
    return out


def _atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    from registry_client.atomic_files import write_atomic

    write_atomic(path, data)


def write_imatrix_gguf(
    path: str | os.PathLike[str],
    entries: Mapping[str, npt.ArrayLike],
    *,
    counts: int = 1,
    dataset: str = "synthetic",
    chunk_size: int = 512,
    chunk_count: int | None = None,
    entry_counts: Mapping[str, npt.ArrayLike] | None = None,
) -> None:
    """Write an imatrix in the GGUF format of ``llama-imatrix``.

    ``entries`` are the raw ``in_sum2`` sums: a 1-D vector per dense tensor or an ``(n_expert, ne0)``
    array for stacked experts. Every expert gets the activation count ``counts`` (or, with
    ``entry_counts``, its own: one count per matrix of each entry, as llama-imatrix records them), so
    :func:`load_imatrix` yields ``entries[name] / float32(counts)`` (or all ones when ``counts`` is 0).
    ``chunk_count`` defaults to ``ceil(counts / chunk_size)``.
    """
    if not 0 <= counts <= INT32_MAX or not 0 <= chunk_size <= 0xFFFFFFFF:
        raise ValueError("counts and chunk_size must be non-negative 32-bit values")
    if chunk_count is None:
        chunk_count = -(-counts // chunk_size) if chunk_size else 0
    if not 0 <= chunk_count <= 0xFFFFFFFF:
        raise ValueError("chunk_count must fit in a UINT32")
    prepared = _prepare_entries(entries)
    for _, raw_name, _ in prepared:
        if len(raw_name) + len(SUFFIX_SUMS) >= GGML_MAX_NAME:
            raise ValueError(f"tensor name {raw_name!r} is too long for a GGUF imatrix")

    meta = GgufMetadata()
    meta.text(KEY_GENERAL_TYPE, "imatrix")
    meta.strings(KEY_DATASETS, [dataset])
    meta.u32(KEY_CHUNK_COUNT, chunk_count)
    meta.u32(KEY_CHUNK_SIZE, chunk_size)
    tensors: list[tuple[str, tuple[int, ...], int, bytes]] = []
    for name, _, arr in prepared:
        n_mat, ne0 = arr.shape
        if entry_counts is not None:
            count_arr = np.asarray(entry_counts[name], dtype="<f4").reshape(n_mat, 1)
        else:
            count_arr = np.full((n_mat, 1), float(counts), dtype="<f4")
        for suffix, shape, blob in ((SUFFIX_SUMS, (ne0, n_mat), arr), (SUFFIX_COUNTS, (1, n_mat), count_arr)):
            dims = shape[: n_dims_written(shape)]  # ggml_n_dims: trailing 1s are not written
            tensors.append((name + suffix, dims, GGML_TYPE_F32, blob.tobytes()))
    _atomic_write(path, encode_gguf(meta, tensors))


def write_imatrix_dat(
    path: str | os.PathLike[str],
    entries: Mapping[str, npt.ArrayLike],
    *,
    ncall: int = 1,
    dataset: str = "synthetic",
    chunk_count: int | None = None,
    entry_ncall: Mapping[str, int] | None = None,
) -> None:
    """Write an imatrix in the legacy binary ``.dat`` format.

    ``entries`` are the stored values (``mean(x^2) * ncall`` in files from ``llama-imatrix``); 2-D
    expert arrays are flattened. :func:`load_imatrix` yields ``entries[name] / float32(ncall)`` when
    ``ncall > 0`` and the values unchanged otherwise. The trailer records ``chunk_count`` (default
    ``max(ncall, 0)``) and ``dataset``. ``entry_ncall`` gives entries their own ``ncall`` (llama-imatrix
    writes each entry's count of chunks).
    """
    if not -(2**31) <= ncall <= INT32_MAX:
        raise ValueError("ncall must fit in an int32")
    if chunk_count is None:
        chunk_count = max(ncall, 0)
    if not 0 <= chunk_count <= INT32_MAX:
        raise ValueError("chunk_count must be a non-negative int32")
    parts = [struct.pack("<i", len(entries))]
    for name, raw_name, arr in _prepare_entries(entries):
        calls = entry_ncall[name] if entry_ncall is not None else ncall
        parts.append(struct.pack("<i", len(raw_name)) + raw_name + struct.pack("<ii", calls, arr.size))
        parts.append(arr.tobytes())
    ds = dataset.encode("utf-8")
    parts.append(struct.pack("<ii", chunk_count, len(ds)) + ds)
    _atomic_write(path, b"".join(parts))


# --------------------------------------------------------------------------------------------------
# checks and the ctypes view
# --------------------------------------------------------------------------------------------------


def check_covers(imatrix: Imatrix, tensors: Mapping[str, int]) -> None:
    """Check that every imatrix entry for one of ``tensors`` has that tensor's length.

    ``tensors`` maps tensor names to the length llama.cpp compares against: the row length ``ne0``
    (``ne0 * n_expert`` for stacked 3-D expert tensors). A mismatch would abort
    ``llama_model_quantize``, so it raises :class:`ImatrixInvalid` naming the tensor. Tensors without
    an entry are fine (llama.cpp quantizes them without importance data), and so are entries for
    tensors not listed.
    """
    for name, expected in tensors.items():
        values = imatrix.entries.get(name)
        if values is not None and values.size != expected:
            raise ImatrixInvalid(
                f"imatrix entry for tensor {name!r} has {values.size} values, but the tensor's rows have "
                f"{expected} elements",
                tensor=name,
            )


class ImatrixCArray:
    """The ``llama_model_imatrix_data[]`` array (NULL-name terminated) for ``llama_model_quantize``.

    Owns the ctypes array, the name bytes and float buffers it points into: keep this object alive
    until ``llama_model_quantize`` returns (the library copies the data at the start of the call).
    """

    def __init__(self, imatrix: Imatrix) -> None:
        import llama_cpp  # deferred: loads the native library

        struct_type = getattr(llama_cpp, "llama_model_imatrix_data", None)
        fields = dict(getattr(llama_cpp.llama_model_quantize_params, "_fields_", []))
        if struct_type is None or fields.get("imatrix") is not ctypes.POINTER(struct_type):
            raise RuntimeError(
                "installed llama-cpp-python does not expose llama_model_quantize_params.imatrix as "
                "a pointer to llama_model_imatrix_data"
            )
        self._struct_type: Any = struct_type
        self._names: list[bytes] = []
        self._buffers: list[FloatArray] = []
        self._array: Any = (struct_type * (len(imatrix.entries) + 1))()  # zeroed: last one is the NULL end
        float_p = ctypes.POINTER(ctypes.c_float)
        for index, (name, values) in enumerate(imatrix.entries.items()):
            raw_name = name.encode("utf-8")
            buf = np.ascontiguousarray(values, dtype=np.float32).copy()
            self._names.append(raw_name)
            self._buffers.append(buf)
            item = self._array[index]
            item.name = raw_name
            item.data = buf.ctypes.data_as(float_p)
            item.size = buf.size
        self._pointer: Any = ctypes.cast(self._array, ctypes.POINTER(struct_type))

    def __len__(self) -> int:
        """Number of entries (without the terminator)."""
        return len(self._buffers)

    @property
    def pointer(self) -> Any:
        """``POINTER(llama_model_imatrix_data)`` to assign to ``llama_model_quantize_params.imatrix``."""
        return self._pointer
