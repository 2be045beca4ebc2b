"""The bounded GGUF header reader, synthetic llama models, and the predicted size of quantized files."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from quantledger.errors import SourceInvalid, SourceNotFound
from quantledger.gguf.layout import predict_quantized_file_size
from quantledger.gguf.reader import GgufHeader, is_gguf_file, read_gguf_header
from quantledger.testing.synthetic_model import llama_shape_for_bytes, write_llama_gguf

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
U32, I32, F32V, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
GGML_QNT_VERSION = 2


# --- a tiny hand-built GGUF file, to break one field at a time -------------------------------------


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<i", vtype) + payload


def kv_u32(key: str | bytes, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, STRING, gstr(value))


def kv_array(key: str, etype: int, count: int, payload: bytes) -> bytes:
    return kv(key, ARRAY, struct.pack("<iQ", etype, count) + payload)


def tinfo(name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(dims)}qiQ", len(dims), *dims, ggml_type, offset)


BASE_KVS = [kv_str("general.architecture", "llama"), kv_u32("general.file_type", 1)]
# "a": F32 32x2 = 256 bytes at 0, "b": F16 64 = 128 bytes at 256
BASE_TENSORS = [tinfo("a", [32, 2], F32, 0), tinfo("b", [64], F16, 256)]
BASE_DATA = 384


def build(
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    data_bytes: int = BASE_DATA,
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> bytes:
    kvs = BASE_KVS if kvs is None else kvs
    tensors = BASE_TENSORS if tensors is None else tensors
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    head += b"".join(kvs) + b"".join(tensors)
    head += bytes(-len(head) % alignment)
    return head + bytes(data_bytes)


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def invalid(path: Path) -> str:
    """The message of the SourceInvalid that reading ``path`` raises (any other exception fails)."""
    with pytest.raises(SourceInvalid) as caught:
        read_gguf_header(path)
    message = caught.value.message
    assert path.name in message
    return message


# --- generated models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-header")
    paths = {
        "f16": root / "tiny-f16.gguf",
        "f16_320": root / "tiny320-f16.gguf",
        "q8_0": root / "tiny-q8_0.gguf",
    }
    write_llama_gguf(paths["f16"], n_embd=256, n_ff=512, n_layer=2, seed=1)
    write_llama_gguf(paths["f16_320"], n_embd=320, n_ff=640, n_layer=2, n_head=4, n_head_kv=2, seed=2)
    write_llama_gguf(paths["q8_0"], n_embd=256, n_ff=512, n_layer=2, dtype="Q8_0", seed=4)
    return paths


def test_generated_model_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    written = write_llama_gguf(path, n_embd=256, n_ff=512, n_layer=3, n_head=4, n_head_kv=2, n_vocab=384)
    header = read_gguf_header(path)

    assert written == header.file_size == path.stat().st_size
    assert header.version == 3 and header.alignment == 32
    assert header.architecture == "llama"
    assert header.file_type == 1
    assert not header.is_quantized()
    assert header.metadata["llama.embedding_length"] == 256
    assert header.metadata["llama.block_count"] == 3
    assert header.metadata["llama.rope.dimension_count"] == 64
    tokens = header.metadata["tokenizer.ggml.tokens"]
    token_types = header.metadata["tokenizer.ggml.token_type"]
    scores = header.metadata["tokenizer.ggml.scores"]
    assert isinstance(tokens, list) and isinstance(token_types, list) and isinstance(scores, list)
    assert len(tokens) == len(token_types) == len(scores) == 384 == len(set(tokens))
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[258] == "<0xFF>"
    assert token_types[:4] == [2, 3, 3, 6] and set(token_types[3:259]) == {6}
    assert "\u2581the" in tokens
    assert header.metadata["tokenizer.ggml.add_bos_token"] is True

    by_name = {t.name: t for t in header.tensors}
    assert len(header.tensors) == 3 + 9 * 3
    assert by_name["token_embd.weight"].shape == (256, 384)
    assert by_name["output.weight"].shape == (256, 384)
    assert by_name["output_norm.weight"].shape == (256,)
    assert by_name["blk.2.attn_q.weight"].shape == (256, 256)
    assert by_name["blk.2.attn_k.weight"].shape == (256, 128)
    assert by_name["blk.2.attn_v.weight"].shape == (256, 128)
    assert by_name["blk.0.ffn_gate.weight"].shape == (256, 512)
    assert by_name["blk.0.ffn_down.weight"].shape == (512, 256)
    for tensor in header.tensors:
        expected = ("F32", 4) if len(tensor.shape) == 1 else ("F16", 2)
        assert (tensor.type_name, tensor.n_bytes // tensor.n_elements) == expected
        assert tensor.ggml_type == (F32 if len(tensor.shape) == 1 else F16)
        assert tensor.offset >= header.data_offset and tensor.offset % 32 == 0
        assert tensor.offset + tensor.n_bytes <= header.file_size
    assert header.n_parameters == sum(t.n_elements for t in header.tensors)
    assert header.tensor_bytes == sum(t.n_bytes for t in header.tensors)
    assert header.data_offset % 32 == 0


@pytest.mark.parametrize(
    ("dtype", "type_name", "file_type"), [("F32", "F32", 0), ("BF16", "BF16", 32), ("Q8_0", "Q8_0", 7)]
)
def test_generated_model_dtypes(tmp_path: Path, dtype: str, type_name: str, file_type: int) -> None:
    path = tmp_path / f"m-{dtype}.gguf"
    write_llama_gguf(path, n_embd=320, n_ff=640, dtype=dtype)
    header = read_gguf_header(path)
    assert header.file_type == file_type
    assert header.is_quantized() == (dtype == "Q8_0")
    weights = [t for t in header.tensors if len(t.shape) == 2]
    assert {t.type_name for t in weights} == {type_name}
    assert {t.type_name for t in header.tensors if len(t.shape) == 1} == {"F32"}
    if dtype == "Q8_0":
        assert all(t.n_bytes == t.n_elements // 32 * 34 for t in weights)


def test_generated_model_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    write_llama_gguf(a, seed=3)
    write_llama_gguf(b, seed=3)
    write_llama_gguf(c, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_shape_for_bytes() -> None:
    for target, dtype in [(1 << 30, "F16"), (1 << 30, "Q8_0"), (200 << 20, "F16"), (64 << 20, "F32")]:
        shape = llama_shape_for_bytes(target, dtype)
        n_embd, n_ff, n_vocab, n_layer = shape["n_embd"], shape["n_ff"], shape["n_vocab"], shape["n_layer"]
        assert n_embd % 256 == 0 and n_ff % 256 == 0 and n_ff > 2 * n_embd
        assert n_embd % shape["n_head"] == 0 and shape["n_head"] % shape["n_head_kv"] == 0
        kv = n_embd // shape["n_head"] * shape["n_head_kv"]
        elements = 2 * n_vocab * n_embd + n_layer * (2 * n_embd * n_embd + 2 * n_embd * kv + 3 * n_embd * n_ff)
        size = elements * {"F16": 2.0, "Q8_0": 34 / 32, "F32": 4.0}[dtype]
        assert 0.9 < size / target < 1.1, (target, dtype, shape)


def test_shape_for_bytes_writes_that_size(tmp_path: Path) -> None:
    target = 12 << 20
    path = tmp_path / "sized.gguf"
    shape: dict[str, Any] = dict(llama_shape_for_bytes(target))
    written = write_llama_gguf(path, **shape)
    assert 0.85 < written / target < 1.15
    assert read_gguf_header(path).file_size == written


def test_is_gguf_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    assert is_gguf_file(tiny_models["f16"])
    assert is_gguf_file(str(tiny_models["f16"]))
    assert not is_gguf_file(write(tmp_path, b"hello world", "text.txt"))
    assert not is_gguf_file(write(tmp_path, b"", "empty.gguf"))
    assert not is_gguf_file(write(tmp_path, b"GGU", "short.gguf"))
    assert not is_gguf_file(tmp_path / "missing.gguf")
    assert not is_gguf_file(tmp_path)


# --- malformed headers -------------------------------------------------------------------------


def test_small_valid_file_parses(tmp_path: Path) -> None:
    header = read_gguf_header(write(tmp_path, build()))
    assert [(t.name, t.shape, t.type_name, t.n_bytes) for t in header.tensors] == [
        ("a", (32, 2), "F32", 256),
        ("b", (64,), "F16", 128),
    ]
    assert header.tensors[1].offset == header.data_offset + 256
    assert header.metadata == {"general.architecture": "llama", "general.file_type": 1}


MALFORMED: dict[str, tuple[bytes, str]] = {
    "wrong magic": (b"GGUX" + build()[4:], "not a GGUF file"),
    "empty file": (b"", "not a GGUF file"),
    "shorter than the header": (build()[:12], "truncated"),
    "version 1": (build(version=1), "unsupported GGUF version 1"),
    "version 4": (build(version=4), "unsupported GGUF version 4"),
    "big-endian version": (build(version=3 << 24), "unsupported GGUF version"),
    "tensor count 2**40": (build(n_tensors=2**40), "tensor count"),
    "kv count 2**40": (build(n_kv=2**40), "key/value count"),
    "kv count 2**64-1": (build(n_kv=2**64 - 1), "key/value count"),
    "kv count beyond file": (build(n_kv=1000), "cannot fit"),
    "tensor count beyond file": (build(n_tensors=100_000), "cannot fit"),
    "key length 2**60": (build([struct.pack("<Q", 2**60) + b"general.x" + bytes(64)]), "string length"),
    "string value 2**60": (
        build([gstr("general.name") + struct.pack("<iQ", STRING, 2**60) + b"abc"]),
        "string length",
    ),
    "array length 2**60": (build([kv_array("tokenizer.ggml.scores", F32V, 2**60, b"\0" * 16)]), "array of"),
    "string array length 2**60": (build([kv_array("tokenizer.ggml.tokens", STRING, 2**60, gstr("a"))]), "array of"),
    "string in array too long": (
        build([kv_array("tokenizer.ggml.tokens", STRING, 2, gstr("a") + struct.pack("<Q", 2**60) + b"b")]),
        "string length",
    ),
    "unknown value type": (build([kv("general.x", 99, b"\0" * 8)]), "unknown value type 99"),
    "array of unknown type": (build([kv_array("general.x", 42, 1, b"\0" * 8)]), "unknown value type 42"),
    "arrays nested too deep": (
        build([kv("general.x", ARRAY, struct.pack("<iQ", ARRAY, 1) * 8 + struct.pack("<iQ", U32, 0))]),
        "nested",
    ),
    "empty key": (build([kv_u32("", 1)]), "empty"),
    "duplicate key": (build([kv_u32("general.x", 1), kv_u32("general.x", 2)]), "duplicate key"),
    "key not UTF-8": (build([kv_u32(b"general.\xff", 1)]), "UTF-8"),
    "alignment not a power of two": (
        build([kv_u32("general.alignment", 48)], tensors=[tinfo("a", [32], F32, 0)], data_bytes=128, alignment=48),
        "power of two",
    ),
    "alignment zero": (build([kv_u32("general.alignment", 0)]), "power of two"),
    "alignment not u32": (build([kv_str("general.alignment", "32")]), "u32"),
    "n_dims 0": (build(tensors=[tinfo("a", [], F32, 0)]), "0 dimensions"),
    "n_dims 5": (build(tensors=[tinfo("a", [2, 2, 2, 2, 2], F32, 0)]), "5 dimensions"),
    "n_dims 2**32-1": (build(tensors=[gstr("a") + struct.pack("<I", 2**32 - 1) + bytes(40)]), "dimensions"),
    "dimension 0": (build(tensors=[tinfo("a", [32, 0], F32, 0)]), "dimension <= 0"),
    "dimension negative": (build(tensors=[tinfo("a", [-32], F32, 0)]), "dimension <= 0"),
    "dimension 2**63-1": (build(tensors=[tinfo("a", [2**63 - 1], F32, 0)]), "2**50"),
    "element count over 2**50": (build(tensors=[tinfo("a", [2**26, 2**25], F32, 0)]), "2**50"),
    "unknown ggml type": (build(tensors=[tinfo("a", [32], 999, 0)]), "unknown ggml type 999"),
    "negative ggml type": (build(tensors=[tinfo("a", [32], -1, 0)]), "unknown ggml type -1"),
    "row not a block multiple": (build(tensors=[tinfo("a", [33, 2], Q4_0, 0)]), "block size 32"),
    "misaligned offset": (build(tensors=[tinfo("a", [32, 2], F32, 0), tinfo("b", [64], F16, 260)]), "not aligned"),
    "overlapping tensors": (build(tensors=[tinfo("a", [32, 2], F32, 0), tinfo("b", [64], F16, 128)]), "overlap"),
    "data beyond end of file": (build(data_bytes=300), "truncated: tensor b needs"),
    "offset 2**64-32": (build(tensors=[tinfo("a", [32], F32, 2**64 - 32)]), "truncated: tensor a needs"),
    "empty tensor name": (build(tensors=[tinfo("", [32], F32, 0)]), "empty name"),
    "tensor name too long": (build(tensors=[tinfo("t" * 64, [32], F32, 0)]), "string length 64"),
    "duplicate tensor name": (build(tensors=[tinfo("a", [32], F32, 0), tinfo("a", [32], F32, 128)]), "duplicate"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_raises_source_invalid(tmp_path: Path, case: str) -> None:
    data, expected = MALFORMED[case]
    message = invalid(write(tmp_path, data))
    assert expected in message, message


def test_truncated_data_message_names_sizes(tmp_path: Path) -> None:
    data = build()
    path = write(tmp_path, data[:-100])
    header_size = len(data) - BASE_DATA
    message = invalid(path)
    assert message == (
        f"model.gguf: truncated: tensor b needs {header_size + BASE_DATA} bytes, file has {len(data) - 100}"
    )


def test_truncated_generated_model(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    data = tiny_models["f16"].read_bytes()
    header = read_gguf_header(tiny_models["f16"])
    for size in [4, 23, 24, 100, 5000, header.data_offset - 1, header.data_offset + 10, len(data) - 1]:
        message = invalid(write(tmp_path, data[:size], f"cut-{size}.gguf"))
        assert "truncated" in message or "cannot fit" in message or "exceeds" in message, message


def test_every_prefix_of_a_header_is_rejected(tmp_path: Path) -> None:
    data = build()
    for size in range(len(data)):
        path = write(tmp_path, data[:size], f"prefix-{size}.gguf")  # a new file: truncating one is slow
        with pytest.raises(SourceInvalid):
            read_gguf_header(path)


def test_random_corruption_raises_only_source_invalid(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    rng = random.Random(1234)
    original = tiny_models["f16"].read_bytes()
    header_end = read_gguf_header(tiny_models["f16"]).data_offset
    small = build([*BASE_KVS, kv_array("tokenizer.ggml.tokens", STRING, 2, gstr("x") + gstr("yz"))])
    for round_ in range(400):
        data = bytearray(small if round_ % 2 else original[: header_end + 4096])
        limit = len(data) if round_ % 2 else header_end
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(limit)
            if rng.random() < 0.5:
                data[position] = rng.randrange(256)
            else:
                value = rng.choice([0, 1, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1])
                data[position : position + 8] = value.to_bytes(8, "little")
        with contextlib.suppress(SourceInvalid):
            read_gguf_header(write(tmp_path, bytes(data), f"fuzz-{round_}.gguf"))


def test_hostile_counts_do_not_allocate(tmp_path: Path) -> None:
    hostile = [
        build(n_kv=999_999),
        build(n_tensors=999_999),
        build([kv_array("tokenizer.ggml.scores", F32V, 2**40, b"\0" * 64)]),
        build([kv_array("tokenizer.ggml.tokens", STRING, 10**6, gstr("a") * 4)]),
        build([gstr("general.name") + struct.pack("<iQ", STRING, 2**40)]),
    ]
    for index, data in enumerate(hostile):
        path = write(tmp_path, data, f"hostile-{index}.gguf")
        tracemalloc.start()
        try:
            with pytest.raises(SourceInvalid):
                read_gguf_header(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, (index, peak)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        read_gguf_header(tmp_path / "missing.gguf")
    with pytest.raises(SourceInvalid):
        read_gguf_header(tmp_path)


def test_metadata_value_types(tmp_path: Path) -> None:
    kvs = [
        kv_str("general.architecture", "llama"),
        kv("a.f32", F32V, struct.pack("<f", 0.5)),
        kv("a.bool", BOOL, b"\x01"),
        kv("a.i32", I32, struct.pack("<i", -7)),
        kv("a.u64", U64, struct.pack("<Q", 2**40)),
        kv_array("a.bools", BOOL, 3, b"\x00\x01\x02"),
        kv_array("a.u32s", U32, 2, struct.pack("<2I", 1, 2)),
        kv_array("a.empty", STRING, 0, b""),
        kv_array("a.nested", ARRAY, 2, struct.pack("<iQ2I", U32, 2, 1, 2) + struct.pack("<iQI", U32, 1, 3)),
        kv_str("a.latin1", b"caf\xe9"),
    ]
    metadata = read_gguf_header(write(tmp_path, build(kvs))).metadata
    assert metadata["a.f32"] == 0.5 and metadata["a.bool"] is True and metadata["a.i32"] == -7
    assert metadata["a.u64"] == 2**40
    assert metadata["a.bools"] == [False, True, True]
    assert metadata["a.u32s"] == [1, 2]
    assert metadata["a.empty"] == []
    assert metadata["a.nested"] == [[1, 2], [3]]
    assert metadata["a.latin1"] == "caf\ufffd"


# --- predicted size of quantized files -----------------------------------------------------------


def test_predict_without_changes_is_the_source_layout(tiny_models: dict[str, Path]) -> None:
    for path in tiny_models.values():
        header = read_gguf_header(path)
        assert predict_quantized_file_size(header, {}, {}) == header.file_size
        assert predict_quantized_file_size(header, {}, {"general.file_type": 1}) == header.file_size


def test_predict_layout_rules(tmp_path: Path) -> None:
    """llama.cpp drops split keys, cuts strings at a NUL and writes no trailing unit dimensions."""
    kvs = [*BASE_KVS, kv("split.count", 2, struct.pack("<H", 1)), kv_str("general.note", b"ab\0cdef")]
    tensors = [tinfo("a", [32, 2, 1, 1], F32, 0), tinfo("b", [64], F16, 256)]
    header = read_gguf_header(write(tmp_path, build(kvs, tensors)))

    def padded_meta(kv_bytes: bytes) -> int:
        meta = 24 + len(kv_bytes) + len(b"".join(BASE_TENSORS))
        return meta + -meta % 32

    kept = b"".join(BASE_KVS) + kv_str("general.note", "ab")
    assert predict_quantized_file_size(header, {}, {}) == padded_meta(kept) + 256 + 128
    added = kv_u32("general.quantization_version", 2)
    predicted = predict_quantized_file_size(
        header, {"a": Q8_0}, {"general.quantization_version": 2, "general.file_type": 7}
    )
    assert predicted == padded_meta(kept + added) + 96 + 128  # 64 Q8_0 values: 2 blocks of 34 bytes, padded


def test_predict_rejects_impossible_types(tiny_models: dict[str, Path]) -> None:
    from quantledger.errors import InvalidArgument

    header = read_gguf_header(tiny_models["f16_320"])
    with pytest.raises(InvalidArgument):
        predict_quantized_file_size(header, {"token_embd.weight": 12}, {})  # Q4_K needs rows of 256
    with pytest.raises(InvalidArgument):
        predict_quantized_file_size(header, {"token_embd.weight": 12345}, {})


# --- against llama.cpp ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def quantize(llama_cpp: Any, source: Path, output: Path, ftype: str) -> int:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    result = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params))
    assert result == 0, f"llama_model_quantize returned {result}"
    return int(params.ftype)


@pytest.mark.parametrize(
    ("source", "ftype"),
    [
        (source, ftype)
        for source in ("f16", "f16_320", "q8_0")
        for ftype in ("Q4_K_M", "Q8_0", "Q4_0")
        if (source, ftype) != ("q8_0", "Q8_0")  # same type: nothing to requantize
    ],
)
def test_predicted_size_matches_llama_cpp(
    llama_cpp: Any, tiny_models: dict[str, Path], tmp_path: Path, source: str, ftype: str
) -> None:
    source_header = read_gguf_header(tiny_models[source])
    output = tmp_path / f"{source}-{ftype}.gguf"
    file_type = quantize(llama_cpp, tiny_models[source], output, ftype)

    out = read_gguf_header(output)
    new_types = {t.name: t.ggml_type for t in out.tensors}
    predicted = predict_quantized_file_size(
        source_header, new_types, {"general.quantization_version": GGML_QNT_VERSION, "general.file_type": file_type}
    )
    assert predicted == os.path.getsize(output) == out.file_size
    assert out.file_type == file_type
    assert out.metadata["general.quantization_version"] == GGML_QNT_VERSION
    assert out.is_quantized()
    assert {t.name for t in out.tensors} == {t.name for t in source_header.tensors}
    rewritten = ("general.file_type", "general.quantization_version")
    copied = {k: v for k, v in out.metadata.items() if k not in rewritten}
    assert copied == {k: v for k, v in source_header.metadata.items() if k not in rewritten}
    if source == "f16_320" and ftype == "Q4_K_M":  # rows of 320 cannot hold 256-element K-quant blocks
        assert not {t.type_name for t in out.tensors} & {"Q4_K", "Q6_K"}


@pytest.mark.parametrize("dtype", ["F16", "F32", "BF16"])
def test_generated_model_evaluates_in_llama_cpp(llama_cpp: Any, tmp_path: Path, dtype: str) -> None:
    import numpy as np

    path = tmp_path / f"eval-{dtype}.gguf"
    write_llama_gguf(path, n_embd=320, n_ff=640, dtype=dtype, seed=5)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, logits_all=True)
    try:
        tokens = llm.tokenize(b"Hello the world, this is a test!")
        assert tokens[0] == 1 and len(tokens) > 5
        assert llm.detokenize(tokens[1:]).lstrip() == b"Hello the world, this is a test!"
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: llm.n_tokens])
        assert logits.shape == (len(tokens), 384)
        assert np.isfinite(logits).all()
        assert float(np.abs(logits).max()) > 0
    finally:
        llm.close()


def test_header_kv_layout_is_carried(tiny_models: dict[str, Path]) -> None:
    header = read_gguf_header(tiny_models["f16"])
    assert isinstance(header, GgufHeader)
    assert [key.decode() for key, _ in header.kv_layout] == list(header.metadata)
