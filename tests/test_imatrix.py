"""Tests for quantledger.quantize.imatrix: both llama.cpp imatrix formats, hostile files, and real quantization."""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import llama_cpp
import llama_cpp._logger
import numpy as np
import pytest

from quantledger.errors import ImatrixInvalid
from quantledger.quantize.imatrix import (
    Imatrix,
    ImatrixCArray,
    check_covers,
    load_imatrix,
    write_imatrix_dat,
    write_imatrix_gguf,
)
from quantledger.testing.synthetic_model import write_llama_gguf

RNG_SEED = 1234


def _entries(rows: dict[str, int], seed: int = RNG_SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(0.01, 3.0, n).astype(np.float32) for name, n in rows.items()}


SMALL_ROWS = {"blk.0.attn_q.weight": 256, "blk.0.ffn_down.weight": 512, "output.weight": 256}


def _assert_bitwise(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.astype(np.float32).tobytes()


# ------------------------------------------------------------------------------------------------
# round trips: values equal what llama-quantize's load_imatrix computes
# ------------------------------------------------------------------------------------------------


def test_gguf_round_trip_counts_one_is_identity(tmp_path: Path) -> None:
    entries = _entries(SMALL_ROWS)
    path = tmp_path / "im.gguf"
    write_imatrix_gguf(path, entries, dataset="wiki.train.raw", chunk_size=512)
    im = load_imatrix(path)
    assert im.format == "gguf"
    assert im.datasets == ("wiki.train.raw",)
    assert im.chunk_size == 512
    assert im.chunk_count == 1
    assert im.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(im.entries) == sorted(entries)
    for name, values in entries.items():
        _assert_bitwise(im.entries[name], values)
        assert not im.entries[name].flags.writeable


def test_gguf_values_are_sums_divided_by_counts(tmp_path: Path) -> None:
    sums = _entries(SMALL_ROWS)
    path = tmp_path / "im.gguf"
    write_imatrix_gguf(path, sums, counts=1536, chunk_size=512)
    im = load_imatrix(path)
    assert im.chunk_count == 3
    for name, values in sums.items():
        # llama.cpp: e[i] = sums[i] / (float) lround(count), in float32
        _assert_bitwise(im.entries[name], values / np.float32(1536))


def test_gguf_zero_count_gives_ones(tmp_path: Path) -> None:
    path = tmp_path / "im.gguf"
    write_imatrix_gguf(path, _entries(SMALL_ROWS), counts=0)
    im = load_imatrix(path)
    for name, n in SMALL_ROWS.items():
        _assert_bitwise(im.entries[name], np.ones(n, np.float32))


def test_gguf_file_layout_matches_llama_imatrix(tmp_path: Path) -> None:
    """What gguf-py sees in our file is what llama-imatrix writes: F32 [ne0, n_mat] / [1, n_mat]."""
    path = tmp_path / "im.gguf"
    experts = np.arange(4 * 256, dtype=np.float32).reshape(4, 256) + 1
    write_imatrix_gguf(path, {"blk.0.ffn_up_exps.weight": experts, "output.weight": np.ones(256)}, counts=9)
    reader = gguf.GGUFReader(path)
    fields = {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert list(fields) == ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"]
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.datasets"].contents() == ["synthetic"]
    assert fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    assert fields["imatrix.chunk_size"].types == [gguf.GGUFValueType.UINT32]
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors["blk.0.ffn_up_exps.weight.in_sum2"].shape) == [256, 4]
    assert list(tensors["blk.0.ffn_up_exps.weight.counts"].shape) == [1, 4]
    assert list(tensors["output.weight.in_sum2"].shape) == [256]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ffn_up_exps.weight.counts"].data).ravel(), [9] * 4)

    im = load_imatrix(path)
    _assert_bitwise(im.entries["blk.0.ffn_up_exps.weight"], (experts / np.float32(9)).ravel())


def test_gguf_per_expert_counts_written_by_gguf_py(tmp_path: Path) -> None:
    """A file from another writer (gguf-py); per-expert counts are rounded half away from zero."""
    path = tmp_path / "moe.gguf"
    sums = np.random.default_rng(5).uniform(0, 10, (4, 256)).astype(np.float32)
    counts = np.array([[3.0], [0.0], [2.5], [-4.0]], dtype=np.float32)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["a.txt", "b.txt"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 256)
    writer.add_tensor("blk.3.ffn_down_exps.weight.in_sum2", sums)
    writer.add_tensor("blk.3.ffn_down_exps.weight.counts", counts)
    writer.add_tensor("unrelated.weight", np.zeros(32, np.float16))  # ignored, like llama.cpp does
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    im = load_imatrix(path)
    assert im.datasets == ("a.txt", "b.txt")
    assert (im.chunk_count, im.chunk_size) == (10, 256)
    assert list(im.entries) == ["blk.3.ffn_down_exps.weight"]
    expected = np.concatenate(
        [sums[0] / np.float32(3), np.ones(256, np.float32), sums[2] / np.float32(3), np.ones(256, np.float32)]
    )
    _assert_bitwise(im.entries["blk.3.ffn_down_exps.weight"], expected)


@pytest.mark.parametrize("ncall", [1, 4, 7])
def test_dat_values_are_divided_by_ncall(tmp_path: Path, ncall: int) -> None:
    stored = _entries(SMALL_ROWS)
    path = tmp_path / "im.dat"
    write_imatrix_dat(path, stored, ncall=ncall, dataset="calib.txt")
    im = load_imatrix(path)
    assert im.format == "dat"
    assert im.datasets == ("calib.txt",)
    assert im.chunk_count == ncall
    assert im.chunk_size is None
    assert im.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for name, values in stored.items():
        _assert_bitwise(im.entries[name], values / np.float32(ncall))


@pytest.mark.parametrize("ncall", [0, -3])
def test_dat_non_positive_ncall_keeps_values(tmp_path: Path, ncall: int) -> None:
    stored = _entries(SMALL_ROWS)
    path = tmp_path / "im.dat"
    write_imatrix_dat(path, stored, ncall=ncall)
    im = load_imatrix(path)
    for name, values in stored.items():
        _assert_bitwise(im.entries[name], values)


def test_dat_layout_and_optional_trailer(tmp_path: Path) -> None:
    values = np.linspace(1, 2, 256, dtype=np.float32)
    path = tmp_path / "im.dat"
    write_imatrix_dat(path, {"a.weight": values}, ncall=2, dataset="ds", chunk_count=5)
    raw = path.read_bytes()
    body = struct.pack("<ii", 1, 8) + b"a.weight" + struct.pack("<ii", 2, 256) + values.tobytes()
    assert raw == body + struct.pack("<ii", 5, 2) + b"ds"

    # files without the trailer, or with only the chunk count, are valid too (older llama-imatrix)
    for variant, chunks in (
        (body, 0),
        (body + struct.pack("<i", 11), 11),
        (body + struct.pack("<ii", 3, 0), 3),
    ):
        path.write_bytes(variant)
        im = load_imatrix(path)
        assert (im.chunk_count, im.datasets) == (chunks, ())
        _assert_bitwise(im.entries["a.weight"], values / np.float32(2))


def test_same_values_from_both_formats(tmp_path: Path) -> None:
    means = _entries(SMALL_ROWS)
    write_imatrix_gguf(tmp_path / "a.gguf", means)
    write_imatrix_dat(tmp_path / "a.dat", means)
    a, b = load_imatrix(tmp_path / "a.gguf"), load_imatrix(tmp_path / "a.dat")
    for name in means:
        _assert_bitwise(a.entries[name], b.entries[name])


def test_writers_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_imatrix_gguf(tmp_path / "x.gguf", {})
    with pytest.raises(ValueError):
        write_imatrix_gguf(tmp_path / "x.gguf", {"a": np.array([1.0, np.nan])})
    with pytest.raises(ValueError):
        write_imatrix_gguf(tmp_path / "x.gguf", {"x" * 60: np.ones(4)})  # name.in_sum2 > 63 bytes
    with pytest.raises(ValueError):
        write_imatrix_dat(tmp_path / "x.dat", {"a": np.ones((2, 2, 2))})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# check_covers
# ------------------------------------------------------------------------------------------------


def test_check_covers(tmp_path: Path) -> None:
    write_imatrix_gguf(tmp_path / "im.gguf", _entries(SMALL_ROWS))
    im = load_imatrix(tmp_path / "im.gguf")
    check_covers(im, dict(SMALL_ROWS))
    check_covers(im, {"blk.0.attn_q.weight": 256, "blk.7.attn_k.weight": 128})  # missing entries are fine
    with pytest.raises(ImatrixInvalid, match=r"blk\.0\.ffn_down\.weight.*512.*256") as info:
        check_covers(im, {"blk.0.attn_q.weight": 256, "blk.0.ffn_down.weight": 256})
    assert info.value.metadata == {"tensor": "blk.0.ffn_down.weight"}
    assert info.value.reason == "IMATRIX_INVALID"


# ------------------------------------------------------------------------------------------------
# malformed and hostile files
# ------------------------------------------------------------------------------------------------


def _gguf_string(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _gguf_file(
    kv: list[tuple[str, int, bytes]] | None = None,
    tensors: list[tuple[str | bytes, list[int], int, bytes]] | None = None,
    *,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    version: int = 3,
    offsets: list[int] | None = None,
) -> bytes:
    """Hand-made GGUF: kv = (key, gguf type, encoded value); tensors = (name, ne, ggml type, data)."""
    if kv is None:
        kv = [
            ("general.type", 8, _gguf_string(b"imatrix")),
            ("imatrix.datasets", 9, struct.pack("<iQ", 8, 1) + _gguf_string(b"d")),
            ("imatrix.chunk_count", 4, struct.pack("<I", 1)),
            ("imatrix.chunk_size", 4, struct.pack("<I", 512)),
        ]
    if tensors is None:
        tensors = [
            ("t.weight.in_sum2", [8], 0, np.full(8, 2.0, np.float32).tobytes()),
            ("t.weight.counts", [1], 0, np.float32(2.0).tobytes()),
        ]
    out = b"GGUF" + struct.pack(
        "<Iqq", version, len(tensors) if n_tensors is None else n_tensors, len(kv) if n_kv is None else n_kv
    )
    for key, vtype, value in kv:
        out += _gguf_string(key.encode()) + struct.pack("<i", vtype) + value
    data = b""
    for index, (name, ne, ttype, blob) in enumerate(tensors):
        offset = len(data) if offsets is None else offsets[index]
        raw_name = name.encode() if isinstance(name, str) else name
        out += _gguf_string(raw_name) + struct.pack(f"<I{len(ne)}qiQ", len(ne), *ne, ttype, offset)
        data += blob + b"\0" * (-len(blob) % 32)
    out += b"\0" * (-len(out) % 32)
    return out + data


def _dat_file(
    entries: list[tuple[bytes, int, int, bytes]], n_entries: int | None = None, trailer: bytes = b""
) -> bytes:
    out = struct.pack("<i", len(entries) if n_entries is None else n_entries)
    for name, ncall, nval, blob in entries:
        out += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, nval) + blob
    return out + trailer


def _load_bytes(tmp_path: Path, data: bytes, name: str = "im.bin") -> Imatrix:
    path = tmp_path / name
    path.write_bytes(data)
    return load_imatrix(path)


def test_hand_made_gguf_is_valid(tmp_path: Path) -> None:
    im = _load_bytes(tmp_path, _gguf_file())
    _assert_bitwise(im.entries["t.weight"], np.ones(8, np.float32))


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImatrixInvalid, match="does not exist"):
        load_imatrix(tmp_path / "nope.dat")
    with pytest.raises(ImatrixInvalid, match="not a regular file"):
        load_imatrix(tmp_path)  # a directory
    with pytest.raises(ImatrixInvalid, match="empty"):
        _load_bytes(tmp_path, b"")
    os.mkfifo(tmp_path / "fifo")  # must not block waiting for a writer
    with pytest.raises(ImatrixInvalid, match="not a regular file"):
        load_imatrix(tmp_path / "fifo")


def _case_id(value: object) -> str | None:
    return "file" if isinstance(value, bytes) else None


ONE_ENTRY = (b"t.weight", 1, 4, np.ones(4, np.float32).tobytes())


@pytest.mark.parametrize(
    ("data", "match"),
    ids=_case_id,
    argvalues=[
        (b"\x01\x00", "too short"),
        (b"hello, I am a text file, not an importance matrix\n", "claims .* entries"),
        (b"\x7fELF" + bytes(60), "claims .* entries"),
        (_dat_file([ONE_ENTRY], n_entries=0), "entry count 0"),
        (_dat_file([ONE_ENTRY], n_entries=-1), "entry count -1"),
        (_dat_file([ONE_ENTRY], n_entries=2**31 - 1), "claims 2147483647 entries"),
        (_dat_file([ONE_ENTRY], n_entries=2), "truncated"),
        (_dat_file([(b"t.weight", 1, -4, b"")]), "invalid value count -4"),
        (_dat_file([(b"t.weight", 1, 0, b"")]), "invalid value count 0"),
        (_dat_file([(b"t.weight", 1, 2**31 - 1, bytes(16))]), "truncated"),
        (struct.pack("<ii", 1, -8) + bytes(16), "invalid name length -8"),
        (struct.pack("<ii", 1, 2**31 - 1) + bytes(16), "truncated"),
        (struct.pack("<ii", 1, 0) + bytes(16), "invalid name length 0"),
        (_dat_file([(b"t\0x", 1, 4, bytes(16))]), "NUL"),
        (_dat_file([(b"t\xff", 1, 4, bytes(16))]), "UTF-8"),
        (_dat_file([ONE_ENTRY, ONE_ENTRY]), "duplicate entry 't.weight'"),
        (_dat_file([(b"t.weight", 1, 4, np.array([1, np.nan, 1, 1], np.float32).tobytes())]), "non-finite"),
        (_dat_file([(b"t.weight", 1, 4, np.array([1, np.inf, 1, 1], np.float32).tobytes())]), "non-finite"),
        (_dat_file([ONE_ENTRY], trailer=b"\x01\x00"), "truncated"),
        (_dat_file([ONE_ENTRY], trailer=struct.pack("<i", -1)), "negative chunk count"),
        (_dat_file([ONE_ENTRY], trailer=struct.pack("<ii", 1, -5)), "negative dataset name length"),
        (_dat_file([ONE_ENTRY], trailer=struct.pack("<ii", 1, 2**31 - 1) + b"abc"), "truncated"),
        (_dat_file([ONE_ENTRY], trailer=struct.pack("<ii", 1, 1) + b"dX"), "trailing bytes"),
    ],
)
def test_malformed_dat(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(ImatrixInvalid, match=match):
        _load_bytes(tmp_path, data)


_KV_OK = [
    ("general.type", 8, _gguf_string(b"imatrix")),
    ("imatrix.datasets", 9, struct.pack("<iQ", 8, 1) + _gguf_string(b"d")),
    ("imatrix.chunk_count", 4, struct.pack("<I", 1)),
    ("imatrix.chunk_size", 4, struct.pack("<I", 512)),
]
_SUMS = ("t.weight.in_sum2", [8], 0, np.ones(8, np.float32).tobytes())
_COUNTS = ("t.weight.counts", [1], 0, np.float32(1).tobytes())


@pytest.mark.parametrize(
    ("data", "match"),
    ids=_case_id,
    argvalues=[
        (b"GGUF", "truncated"),
        (_gguf_file(version=1), "unsupported GGUF version 1"),
        (_gguf_file(version=4), "unsupported GGUF version 4"),
        (_gguf_file(version=3 << 24), "byte-swapped"),
        (_gguf_file(n_tensors=2**62), "tensor count"),
        (_gguf_file(n_tensors=-1), "tensor count -1"),
        (_gguf_file(n_kv=2**40), "key/value count 1099511627776 cannot fit"),
        (_gguf_file(n_tensors=5), "truncated|offset|unknown ggml type|empty name"),
        (
            _gguf_file(kv=[*_KV_OK, ("huge.string", 8, struct.pack("<Q", 2**60))]),
            "string length 1152921504606846976 exceeds",
        ),
        (
            _gguf_file(kv=[*_KV_OK, ("huge.string", 8, struct.pack("<Q", 2**20))]),
            "string length 1048576 exceeds the .* bytes left",
        ),
        (
            _gguf_file(kv=[*_KV_OK, ("huge.array", 9, struct.pack("<iQ", 8, 2**29))]),
            "array of 536870912 elements cannot fit",
        ),
        (_gguf_file(kv=[*_KV_OK, ("huge.array", 9, struct.pack("<iQ", 10, 2**29))]), "cannot fit"),
        (_gguf_file(kv=[*_KV_OK, ("huge.array", 9, struct.pack("<iQ", 4, 2**62))]), "cannot fit"),
        (_gguf_file(kv=[*_KV_OK, ("nested", 9, struct.pack("<iQ", 9, 1))]), "array of unknown value type"),
        (_gguf_file(kv=[*_KV_OK, ("bad.type", 99, b"")]), "unknown value type 99"),
        (_gguf_file(kv=[*_KV_OK, ("", 4, struct.pack("<I", 1))]), "empty"),
        (_gguf_file(kv=[*_KV_OK, ("imatrix.chunk_size", 4, struct.pack("<I", 1))]), "duplicate key"),
        (
            _gguf_file(kv=[_KV_OK[0], ("general.alignment", 4, struct.pack("<I", 3)), *_KV_OK[1:]]),
            "not a power of two",
        ),
        (_gguf_file(kv=_KV_OK[:3]), "missing metadata imatrix.chunk_size"),
        (_gguf_file(kv=[("general.type", 8, _gguf_string(b"model"))]), "general.type is 'model'"),
        (_gguf_file(kv=[*_KV_OK[:2], ("imatrix.chunk_count", 5, struct.pack("<i", 1)), _KV_OK[3]]), "UINT32"),
        (_gguf_file(tensors=[]), "no tensors"),
        (_gguf_file(tensors=[("other.weight", [8], 0, bytes(32))]), "no imatrix entries"),
        (
            _gguf_file(tensors=[(".in_sum2", [8], 0, bytes(32)), (".counts", [1], 0, bytes(4))]),
            "empty tensor name",
        ),
        (_gguf_file(tensors=[_SUMS]), "mismatched sums and counts"),
        (_gguf_file(tensors=[_COUNTS]), "mismatched sums and counts"),
        (_gguf_file(tensors=[_SUMS, _SUMS, _COUNTS]), "duplicate tensor"),
        (_gguf_file(tensors=[("t.weight.in_sum2", [8], 1, bytes(16)), _COUNTS]), "must be F32"),
        (_gguf_file(tensors=[_SUMS, ("t.weight.counts", [3], 0, bytes(12))]), "8 values for 3 counts"),
        (_gguf_file(tensors=[_SUMS, ("t.weight.counts", [0], 0, b"")]), "dimension <= 0"),
        (
            _gguf_file(tensors=[("t.weight.in_sum2", [8, 2**61], 0, b""), _COUNTS]),
            "more than 2\\*\\*50 elements",
        ),
        (_gguf_file(tensors=[("t.weight.in_sum2", [-8], 0, b""), _COUNTS]), "dimension <= 0"),
        (_gguf_file(tensors=[("t.weight.in_sum2", [8, 1, 1, 1, 1], 0, b""), _COUNTS]), "5 dimensions"),
        (_gguf_file(tensors=[("t.weight.in_sum2", [8], 77, b""), _COUNTS]), "unknown ggml type 77"),
        (
            _gguf_file(tensors=[("t.weight.in_sum2", [8], 2, bytes(18)), _COUNTS]),
            "not a multiple of the Q4_0 block size 32",
        ),
        (_gguf_file(tensors=[("x" * 64, [8], 0, bytes(32))]), "string length 64 exceeds the limit of 63 bytes"),
        (_gguf_file(tensors=[(b"t\xff.weight.in_sum2", [8], 0, bytes(32)), _COUNTS]), "not valid UTF-8"),
        (_gguf_file(tensors=[(b"t\0.weight.in_sum2", [8], 0, bytes(32)), _COUNTS]), "control character"),
        (_gguf_file(offsets=[32, 0]), "offset 32, expected 0"),
        (_gguf_file(offsets=[2**63, 0]), "truncated"),
        (_gguf_file()[:-1], "truncated"),
        (
            _gguf_file(tensors=[("t.weight.in_sum2", [2], 0, np.array([1, np.nan], np.float32).tobytes()), _COUNTS]),
            "non-finite",
        ),
        (
            _gguf_file(tensors=[_SUMS, ("t.weight.counts", [1], 0, np.float32(np.inf).tobytes())]),
            "counts .* are not finite",
        ),
    ],
)
def test_malformed_gguf(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(ImatrixInvalid, match=match):
        _load_bytes(tmp_path, data)


def test_gguf_model_file_is_not_an_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 32), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ImatrixInvalid, match="not an importance matrix"):
        load_imatrix(path)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_every_truncation_is_rejected(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"im.{fmt}"
    entries = {"a.weight": np.ones(32, np.float32), "b.weight": np.full(64, 2.0, np.float32)}
    if fmt == "gguf":
        write_imatrix_gguf(path, entries, dataset="data")
    else:
        write_imatrix_dat(path, entries, dataset="data")
    full = path.read_bytes()
    # a .dat file may legitimately end after the entries or after the chunk count
    body_end = len(full) - len(struct.pack("<ii", 1, 4) + b"data")
    valid_prefixes = {body_end, body_end + 4} if fmt == "dat" else set()
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        if cut in valid_prefixes:
            assert sorted(load_imatrix(path).entries) == ["a.weight", "b.weight"]
            continue
        with pytest.raises(ImatrixInvalid):
            load_imatrix(path)


@pytest.mark.parametrize(
    "data",
    [
        _dat_file([ONE_ENTRY], n_entries=2**31 - 1),
        _dat_file([(b"t.weight", 1, 2**31 - 1, bytes(16))]),
        struct.pack("<ii", 1, 2**31 - 1) + bytes(16),
        _gguf_file(n_tensors=2**62),
        _gguf_file(kv=[*_KV_OK, ("huge.array", 9, struct.pack("<iQ", 8, 2**29))]),
        _gguf_file(kv=[*_KV_OK, ("huge.string", 8, struct.pack("<Q", 2**29))]),
        _gguf_file(tensors=[("t.weight.in_sum2", [2**20, 2**20], 0, b""), _COUNTS]),
    ],
)
def test_lying_counts_allocate_nothing(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ImatrixInvalid):
            load_imatrix(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ------------------------------------------------------------------------------------------------
# ctypes view for llama_model_quantize_params.imatrix
# ------------------------------------------------------------------------------------------------


def test_imatrix_c_array_layout(tmp_path: Path) -> None:
    write_imatrix_dat(tmp_path / "im.dat", _entries(SMALL_ROWS), ncall=3)
    im = load_imatrix(tmp_path / "im.dat")
    carr = ImatrixCArray(im)
    assert len(carr) == len(SMALL_ROWS)

    params = llama_cpp.llama_model_quantize_default_params()
    params.imatrix = carr.pointer
    seen: dict[str, np.ndarray] = {}
    index = 0
    while params.imatrix[index].name is not None:
        item = params.imatrix[index]
        seen[item.name.decode()] = np.ctypeslib.as_array(item.data, shape=(item.size,)).copy()
        index += 1
    assert index == len(SMALL_ROWS)
    assert not params.imatrix[index].data  # terminator: NULL name, NULL data, size 0
    assert params.imatrix[index].size == 0
    assert sorted(seen) == sorted(im.entries)
    for name, values in seen.items():
        _assert_bitwise(values, im.entries[name])


# ------------------------------------------------------------------------------------------------
# real quantization through llama-cpp-python
# ------------------------------------------------------------------------------------------------

N_EMBD, N_FF, N_LAYER = 256, 512, 2

# measured on the tiny llama model with llama-cpp-python 0.3.36 (no imatrix given)
FTYPES_REQUIRING_IMATRIX = {
    "LLAMA_FTYPE_MOSTLY_IQ2_XXS",
    "LLAMA_FTYPE_MOSTLY_IQ2_XS",
    "LLAMA_FTYPE_MOSTLY_Q2_K_S",
    "LLAMA_FTYPE_MOSTLY_IQ3_XS",
    "LLAMA_FTYPE_MOSTLY_IQ3_XXS",
    "LLAMA_FTYPE_MOSTLY_IQ1_S",
    "LLAMA_FTYPE_MOSTLY_IQ2_S",
    "LLAMA_FTYPE_MOSTLY_IQ2_M",
    "LLAMA_FTYPE_MOSTLY_IQ1_M",
}
FTYPES_INVALID = {"LLAMA_FTYPE_MOSTLY_NVFP4", "LLAMA_FTYPE_GUESSED"}  # "invalid output file type N"


class LlamaLog:
    """Collects llama.cpp log output through llama_log_set (the callback stays referenced here)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

        def _collect(level: int, text: bytes | None, _user: ctypes.c_void_p) -> None:
            self.records.append((level, (text or b"").decode("utf-8", "replace")))

        self._callback = llama_cpp.llama_log_callback(_collect)

    def install(self) -> None:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def restore(self) -> None:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.records)


def _row_lengths(path: Path) -> dict[str, int]:
    """ne0 of every 2-D tensor of a GGUF model: the imatrix length llama.cpp expects."""
    reader = gguf.GGUFReader(path)
    return {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) == 2}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("model") / "tiny-f16.gguf"
    write_llama_gguf(path, n_embd=N_EMBD, n_ff=N_FF, n_layer=N_LAYER, seed=1)
    rows = _row_lengths(path)
    assert rows["blk.0.ffn_down.weight"] == N_FF
    assert rows["blk.1.attn_q.weight"] == N_EMBD
    return path, rows


@pytest.fixture
def llama_log() -> Iterator[LlamaLog]:
    log = LlamaLog()
    log.install()
    yield log
    log.restore()


QuantizeFn = Callable[..., int]


@pytest.fixture
def quantize(tiny_model: tuple[Path, dict[str, int]], tmp_path: Path) -> QuantizeFn:
    def run(ftype: int, imatrix: Imatrix | None = None, out: str = "out.gguf") -> int:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 2
        holder = ImatrixCArray(imatrix) if imatrix is not None else None
        if holder is not None:
            params.imatrix = holder.pointer
        rc = llama_cpp.llama_model_quantize(
            str(tiny_model[0]).encode(), str(tmp_path / out).encode(), ctypes.byref(params)
        )
        del holder  # kept alive until the call returned
        return int(rc)

    return run


def _model_imatrix(rows: dict[str, int]) -> dict[str, np.ndarray]:
    return _entries({name: n for name, n in rows.items() if name != "token_embd.weight"}, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("ftype_name", ["LLAMA_FTYPE_MOSTLY_IQ2_XXS", "LLAMA_FTYPE_MOSTLY_IQ1_S"])
def test_low_bit_quantization_needs_imatrix(
    tiny_model: tuple[Path, dict[str, int]],
    quantize: QuantizeFn,
    llama_log: LlamaLog,
    tmp_path: Path,
    ftype_name: str,
) -> None:
    ftype = getattr(llama_cpp, ftype_name)
    _, rows = tiny_model
    means = _model_imatrix(rows)
    write_imatrix_gguf(tmp_path / "im.gguf", means, counts=512)
    write_imatrix_dat(tmp_path / "im.dat", means, ncall=2)

    assert quantize(ftype) != 0
    assert "this quantization requires an importance matrix!" in llama_log.text
    assert "failed to quantize: this quantization requires an imatrix!" in llama_log.text

    for fmt in ("gguf", "dat"):
        imatrix = load_imatrix(tmp_path / f"im.{fmt}")
        check_covers(imatrix, rows)
        llama_log.records.clear()
        assert quantize(ftype, imatrix, out=f"out-{fmt}.gguf") == 0, llama_log.text
        assert f"have importance matrix data with {len(means)} entries" in llama_log.text
        assert "did not find weights for token_embd.weight" in llama_log.text
        target = ftype_name.removeprefix("LLAMA_FTYPE_MOSTLY_").lower()
        assert f"converting to {target}" in llama_log.text
        reader = gguf.GGUFReader(tmp_path / f"out-{fmt}.gguf")
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == target.upper()


@pytest.mark.slow
def test_imatrix_missing_required_tensor_or_wrong_size_fails(
    tiny_model: tuple[Path, dict[str, int]],
    quantize: QuantizeFn,
    llama_log: LlamaLog,
    tmp_path: Path,
) -> None:
    _, rows = tiny_model
    means = _model_imatrix(rows)
    del means["blk.1.ffn_up.weight"]
    write_imatrix_gguf(tmp_path / "partial.gguf", means)
    assert quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_IQ2_XXS, load_imatrix(tmp_path / "partial.gguf")) != 0
    assert "Missing importance matrix for tensor blk.1.ffn_up.weight" in llama_log.text

    means = _model_imatrix(rows)
    means["blk.0.ffn_down.weight"] = means["blk.0.ffn_down.weight"][:256]
    write_imatrix_dat(tmp_path / "wrong.dat", means)
    wrong = load_imatrix(tmp_path / "wrong.dat")
    with pytest.raises(ImatrixInvalid, match=r"blk\.0\.ffn_down\.weight"):
        check_covers(wrong, rows)
    llama_log.records.clear()
    assert quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, wrong) != 0
    assert "imatrix size 256 is different from tensor size 512 for blk.0.ffn_down.weight" in llama_log.text


@pytest.mark.slow
def test_which_ftypes_require_an_imatrix(quantize: QuantizeFn, llama_log: LlamaLog) -> None:
    ftypes = {name: value for name, value in vars(llama_cpp).items() if name.startswith("LLAMA_FTYPE_")}
    requires: set[str] = set()
    invalid: set[str] = set()
    for name, value in sorted(ftypes.items(), key=lambda item: item[1]):
        llama_log.records.clear()
        if quantize(value, out=f"{name}.gguf") == 0:
            continue
        errors = [text for level, text in llama_log.records if "failed to quantize" in text]
        assert errors, llama_log.text
        if "requires an imatrix" in errors[0]:
            requires.add(name)
        else:
            assert "invalid output file type" in errors[0], errors[0]
            invalid.add(name)
    assert requires == FTYPES_REQUIRING_IMATRIX
    assert invalid == FTYPES_INVALID
