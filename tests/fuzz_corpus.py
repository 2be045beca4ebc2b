"""The seed corpus of the fuzz tests (tests/corpus/): valid minimal files and the hostile ones.

``python tests/fuzz_corpus.py`` (re)writes the generated seeds; regression seeds the fuzzer found
(``*-regression-*``) are kept as found and never rewritten. Every seed is a few KB at most. Folders:

- ``gguf/``: GGUF headers (gguf/reader.py): a valid minimal model and the hostile headers of
  test_hostile_models.py / test_gguf_header.py (counts past the file, bad magic and version, deep arrays,
  unknown types, misaligned and overlapping data, a non-power-of-two alignment);
- ``imatrix/``: GGUF and legacy .dat importance matrices (quantize/imatrix.py), valid and hostile;
- ``safetensors/``: safetensors headers (convert/safetensors_reader.py and the LoRA loader);
- ``config/``, ``tokenizer/``, ``tokenizer_config/``, ``adapter_config/``: the JSON files of a Hugging
  Face folder and of a PEFT adapter.
"""

from __future__ import annotations

import json
import pathlib
import struct
import tempfile

import numpy as np

from quantledger.gguf.format import ARRAY, FLOAT32, GGUF_MAGIC, INT32, STRING, UINT8, UINT32
from quantledger.gguf.writer import GgufMetadata, encode_gguf

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
F32, F16 = 0, 1


def _gguf(extra=None, tensors=None) -> bytes:
    """A small GGUF of an architecture the model checks do not describe (the header is what is tested)."""
    meta = GgufMetadata()
    meta.text("general.architecture", "fuzz")
    meta.u32("general.file_type", 1)
    meta.u32("llama.block_count", 1)
    meta.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    meta.strings("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    meta.numbers("tokenizer.ggml.scores", FLOAT32, np.zeros(4))
    meta.numbers("tokenizer.ggml.token_type", INT32, np.ones(4))
    if extra is not None:
        extra(meta)
    if tensors is None:
        tensors = [
            ("output_norm.weight", (32,), F32, bytes(128)),
            ("token_embd.weight", (32, 4), F16, bytes(256)),
        ]
    return encode_gguf(meta, tensors)


def _llama_gguf(n_embd: int = 16, n_ff: int = 32, n_head: int = 2, n_head_kv: int = 1, n_vocab: int = 8) -> bytes:
    """A complete one-layer llama (zero weights) that passes the model checks: about 6 KB."""
    from quantledger.gguf.layout import tensor_nbytes
    from quantledger.testing.synthetic_model import _tensor_shapes

    meta = GgufMetadata()
    meta.text("general.architecture", "llama")
    meta.u32("general.file_type", 1)
    for key, value in (
        ("block_count", 1), ("embedding_length", n_embd), ("feed_forward_length", n_ff),
        ("attention.head_count", n_head), ("attention.head_count_kv", n_head_kv), ("context_length", 64),
        ("rope.dimension_count", n_embd // n_head),
    ):  # fmt: skip
        meta.u32(f"llama.{key}", value)
    meta.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    meta.text("tokenizer.ggml.model", "llama")
    meta.strings("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(n_vocab)])
    meta.numbers("tokenizer.ggml.scores", FLOAT32, np.zeros(n_vocab))
    meta.numbers("tokenizer.ggml.token_type", INT32, np.ones(n_vocab))
    tensors = []
    for name, shape in _tensor_shapes(n_embd, n_ff, 1, n_head, n_head_kv, n_vocab):
        kind = F32 if len(shape) == 1 else F16
        tensors.append((name, shape, kind, bytes(tensor_nbytes(shape, kind))))
    return encode_gguf(meta, tensors)


def _info(name: bytes, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (
        struct.pack("<Q", len(name)) + name + struct.pack(f"<I{len(shape)}qiQ", len(shape), *shape, ggml_type, offset)
    )


def _raw_gguf(infos: list[bytes], data_bytes: int) -> bytes:
    """A GGUF file whose tensor infos are written by hand (the writer refuses broken ones)."""
    meta = GgufMetadata()
    meta.text("general.architecture", "fuzz")
    head = GGUF_MAGIC + struct.pack("<IQQ", 3, len(infos), meta.count) + meta.encoded() + b"".join(infos)
    return head + bytes(-len(head) % 32) + bytes(data_bytes)


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def gguf_seeds() -> dict[str, bytes]:
    valid = _gguf()
    payload = struct.pack("<iQ", UINT32, 1) + struct.pack("<I", 7)
    for _ in range(6):  # deeper than MAX_ARRAY_DEPTH
        payload = struct.pack("<iQ", ARRAY, 1) + payload
    return {
        "valid-minimal.gguf": valid,
        "valid-no-tensors.gguf": _gguf(tensors=[]),
        "valid-llama.gguf": _llama_gguf(),
        "llama-heads-not-dividing.gguf": _llama_gguf(n_head=2, n_head_kv=3),
        "llama-truncated.gguf": _llama_gguf()[:-64],
        "bad-magic.gguf": b"GGUX" + valid[4:],
        "version-4.gguf": _patch(valid, 4, "<I", 4),
        "version-byteswapped.gguf": _patch(valid, 4, ">I", 3),
        "tensor-count-huge.gguf": _patch(valid, 8, "<q", 2**62),
        "tensor-count-negative.gguf": _patch(valid, 8, "<q", -1),
        "kv-count-huge.gguf": _patch(valid, 16, "<q", 2**40),
        "truncated-header.gguf": valid[:20],
        "truncated-data.gguf": valid[: len(valid) - 100],
        "string-length-huge.gguf": _gguf(lambda m: m.add("x.s", STRING, struct.pack("<Q", 2**63) + b"abc")),
        "array-count-huge.gguf": _gguf(lambda m: m.add("x.a", ARRAY, struct.pack("<iQ", UINT8, 2**40) + bytes(8))),
        "array-unknown-type.gguf": _gguf(lambda m: m.add("x.a", ARRAY, struct.pack("<iQ", 99, 1) + bytes(8))),
        "value-unknown-type.gguf": _gguf(lambda m: m.add("x.v", 77, bytes(8))),
        "arrays-too-deep.gguf": _gguf(lambda m: m.add("x.deep", ARRAY, payload)),
        "alignment-not-power-of-two.gguf": _gguf(lambda m: m.u32("general.alignment", 48)),
        "alignment-wrong-type.gguf": _gguf(lambda m: m.f32("general.alignment", 32.0)),
        "duplicate-key.gguf": _gguf(lambda m: m.u32("general.file_type", 2)),
        "empty-key.gguf": _gguf(lambda m: m.add("", UINT32, struct.pack("<I", 1))),
        "unknown-ggml-type.gguf": _raw_gguf([_info(b"t", (32,), 999, 0)], 128),
        "row-not-block-multiple.gguf": _raw_gguf([_info(b"t", (33, 2), 8, 0)], 128),
        "tensor-name-control.gguf": _raw_gguf([_info(b"t\x07", (32,), F32, 0)], 128),
        "tensor-name-long.gguf": _raw_gguf([_info(b"t" * 80, (32,), F32, 0)], 128),
        "tensor-name-not-utf8.gguf": _raw_gguf([_info(b"t\xff", (32,), F32, 0)], 128),
        "duplicate-tensor.gguf": _raw_gguf([_info(b"t", (32,), F32, 0), _info(b"t", (32,), F32, 128)], 256),
        "tensor-dims-5.gguf": _raw_gguf([_info(b"t", (2, 2, 2, 2, 2), F32, 0)], 128),
        "tensor-dim-zero.gguf": _raw_gguf([_info(b"t", (32, 0), F32, 0)], 128),
        "tensor-elements-huge.gguf": _raw_gguf([_info(b"t", (2**31, 2**31, 2**31), F32, 0)], 128),
    } | _gguf_layout_seeds(valid)


def _gguf_layout_seeds(valid: bytes) -> dict[str, bytes]:
    # the two tensor infos sit at the end of the header: name, n_dims, dims, type, offset (u64)
    second_offset_at = valid.index(b"token_embd.weight") + len("token_embd.weight") + 4 + 16 + 4
    return {
        "tensors-overlap.gguf": _patch(valid, second_offset_at, "<Q", 0),
        "tensor-misaligned.gguf": _patch(valid, second_offset_at, "<Q", 130),
        "tensor-offset-huge.gguf": _patch(valid, second_offset_at, "<Q", 2**63),
    }


def imatrix_seeds() -> dict[str, bytes]:
    from quantledger.quantize.imatrix import write_imatrix_dat, write_imatrix_gguf

    work = pathlib.Path(tempfile.mkdtemp(prefix="imatrix-seeds-"))
    entries = {"blk.0.attn_q.weight": np.arange(32, dtype=np.float32), "blk.0.ffn_down.weight": np.ones(64, np.float32)}
    experts = {"blk.0.ffn_up_exps.weight": np.ones((2, 32), np.float32)}
    write_imatrix_gguf(work / "a.gguf", entries, counts=4)
    write_imatrix_gguf(work / "b.gguf", experts, counts=0)
    write_imatrix_dat(work / "c.dat", entries, ncall=3)
    valid_gguf, experts_gguf, valid_dat = ((work / n).read_bytes() for n in ("a.gguf", "b.gguf", "c.dat"))
    for name in ("a.gguf", "b.gguf", "c.dat"):
        (work / name).unlink()
    work.rmdir()

    def dat(n_entries: int, name: bytes, ncall: int, nval: int, values: bytes, trailer: bytes = b"") -> bytes:
        return struct.pack("<ii", n_entries, len(name)) + name + struct.pack("<ii", ncall, nval) + values + trailer

    return {
        "valid.imatrix.gguf": valid_gguf,
        "valid-experts.imatrix.gguf": experts_gguf,
        "valid.imatrix.dat": valid_dat,
        "not-imatrix.gguf": _gguf(),
        "dat-count-huge.dat": dat(2**31 - 1, b"w", 1, 1, bytes(4)),
        "dat-count-negative.dat": dat(-5, b"w", 1, 1, bytes(4)),
        "dat-name-length-huge.dat": struct.pack("<ii", 1, 2**30) + b"w" * 16,
        "dat-nval-huge.dat": dat(1, b"w", 1, 2**30, bytes(16)),
        "dat-nval-negative.dat": dat(1, b"w", 1, -1, bytes(16)),
        "dat-nan.dat": dat(1, b"w", 1, 2, struct.pack("<ff", float("nan"), 1.0)),
        "dat-name-nul.dat": dat(1, b"w\0x", 1, 1, bytes(4)),
        "dat-trailing-bytes.dat": dat(1, b"w", 1, 1, bytes(4), struct.pack("<ii", 1, 1) + b"d" + b"junk"),
        "dat-dataset-length-negative.dat": dat(1, b"w", 1, 1, bytes(4), struct.pack("<ii", 1, -7)),
    }


def _safetensors(header: dict[str, object], data: bytes, *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def safetensors_seeds() -> dict[str, bytes]:
    a = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}
    b = {"dtype": "F16", "shape": [4, 2], "data_offsets": [32, 48]}
    lora = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {
            "dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": {
            "dtype": "F32", "shape": [8, 2], "data_offsets": [64, 128]},
    }  # fmt: skip
    return {
        "valid.safetensors": _safetensors({"__metadata__": {"format": "pt"}, "a": a, "b": b}, bytes(48)),
        "valid-lora.safetensors": _safetensors({"__metadata__": {"format": "pt"}, **lora}, bytes(128)),
        "valid-empty-tensor.safetensors": _safetensors(
            {"e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}, b""
        ),
        "header-length-huge.safetensors": _safetensors({"a": a}, bytes(32), length=2**63),
        "header-length-zero.safetensors": _safetensors({"a": a}, bytes(32), length=0),
        "header-not-object.safetensors": _safetensors([1, 2, 3], b""),  # type: ignore[arg-type]
        "header-deep.safetensors": struct.pack("<Q", 400) + b"[" * 200 + b"]" * 200,
        "bad-dtype.safetensors": _safetensors({"a": {**a, "dtype": "Q4"}}, bytes(32)),
        "shape-negative.safetensors": _safetensors({"a": {**a, "shape": [-2, -4]}}, bytes(32)),
        "shape-huge.safetensors": _safetensors({"a": {**a, "shape": [2**40, 2**40]}}, bytes(32)),
        "offsets-reversed.safetensors": _safetensors({"a": {**a, "data_offsets": [32, 0]}}, bytes(32)),
        "offsets-past-end.safetensors": _safetensors({"a": {**a, "data_offsets": [0, 2**62]}}, bytes(32)),
        "overlap.safetensors": _safetensors({"a": a, "b": {**b, "data_offsets": [16, 32]}}, bytes(48)),
        "truncated.safetensors": _safetensors({"a": a, "b": b}, bytes(20)),
    }


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 400,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": 32,
    "tie_word_embeddings": False, "torch_dtype": "float16",
}  # fmt: skip
BERT_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 100, "max_position_embeddings": 128,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12,
}  # fmt: skip
TOKENIZER = {
    "version": "1.0",
    "added_tokens": [{"id": 6, "content": "<|endoftext|>", "special": True}],
    "model": {
        "type": "BPE",
        "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
        "merges": ["a b", ["b", "c"], "ab c"],
    },
}
TOKENIZER_CONFIG = {
    "bos_token": "<|endoftext|>",
    "eos_token": {"content": "<|endoftext|>"},
    "add_bos_token": False,
    "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
}
ADAPTER_CONFIG = {
    "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "fan_in_fan_out": False,
    "base_model_name_or_path": "tiny", "use_rslora": False, "rank_pattern": {"q_proj": 2},
    "alpha_pattern": {"layers\\.0\\..*": 8}, "init_lora_weights": True,
}  # fmt: skip


def json_seeds() -> dict[str, dict[str, bytes]]:
    def dump(value: object) -> bytes:
        return json.dumps(value).encode()

    return {
        "config": {
            "valid-llama.json": dump(LLAMA_CONFIG),
            "valid-bert.json": dump(BERT_CONFIG),
            "huge-vocab.json": dump({**LLAMA_CONFIG, "vocab_size": 5_000_000}),
            "hidden-string.json": dump({**LLAMA_CONFIG, "hidden_size": "256"}),
            "hidden-negative.json": dump({**LLAMA_CONFIG, "hidden_size": -128}),
            "heads-not-multiple.json": dump({**LLAMA_CONFIG, "num_key_value_heads": 3}),
            "eps-nan.json": dump({**LLAMA_CONFIG, "rms_norm_eps": float("nan")}),
            "layers-huge.json": dump({**LLAMA_CONFIG, "num_hidden_layers": 10**12}),
            "architectures-object.json": dump({**LLAMA_CONFIG, "architectures": {"a": 1}}),
            "deep.json": b"[" * 100 + b"]" * 100,
            "not-object.json": b"[1, 2]",
        },
        "tokenizer": {
            "valid-bpe.json": dump(TOKENIZER),
            "vocab-list.json": dump({**TOKENIZER, "model": {**TOKENIZER["model"], "vocab": ["a", "b"]}}),  # type: ignore[dict-item]
            "token-id-huge.json": dump({**TOKENIZER, "model": {**TOKENIZER["model"], "vocab": {"a": 2**40}}}),  # type: ignore[dict-item]
            "token-id-negative.json": dump({**TOKENIZER, "added_tokens": [{"id": -1, "content": "x"}]}),
            "accepted-by-wordpiece-merge-triple.json": dump(
                {**TOKENIZER, "model": {**TOKENIZER["model"], "merges": [["a", "b", "c"]]}}
            ),  # type: ignore[dict-item]
            "accepted-by-wordpiece-model-wordpiece.json": dump(
                {**TOKENIZER, "model": {"type": "WordPiece", "vocab": {"[CLS]": 0}}}
            ),
        },
        "tokenizer_config": {
            "valid.json": dump(TOKENIZER_CONFIG),
            "accepted-special-objects.json": dump({**TOKENIZER_CONFIG, "bos_token": {"content": 5}, "eos_token": [1]}),
            "accepted-template-list.json": dump(
                {**TOKENIZER_CONFIG, "chat_template": [{"name": "default", "template": "x"}]}
            ),
        },
        "adapter_config": {
            "valid.json": dump(ADAPTER_CONFIG),
            "not-lora.json": dump({**ADAPTER_CONFIG, "peft_type": "IA3"}),
            "r-zero.json": dump({**ADAPTER_CONFIG, "r": 0}),
            "alpha-nan.json": dump({**ADAPTER_CONFIG, "lora_alpha": float("nan")}),
            "dora.json": dump({**ADAPTER_CONFIG, "use_dora": True}),
            "pattern-backreference.json": dump({**ADAPTER_CONFIG, "rank_pattern": {"(a)\\1": 4}}),
            "accepted-pattern-catastrophic.json": dump({**ADAPTER_CONFIG, "alpha_pattern": {"(a+)+$": 4}}),
            "patterns-list.json": dump({**ADAPTER_CONFIG, "rank_pattern": ["q_proj"]}),
            "target-modules-number.json": dump({**ADAPTER_CONFIG, "target_modules": 5}),
            "init-pissa.json": dump({**ADAPTER_CONFIG, "init_lora_weights": "pissa_niter_4"}),
        },
    }


def all_seeds() -> dict[str, dict[str, bytes]]:
    return {
        "gguf": gguf_seeds(),
        "imatrix": imatrix_seeds(),
        "safetensors": safetensors_seeds(),
        **json_seeds(),
    }


def main() -> None:
    generated = all_seeds()
    for folder, seeds in generated.items():
        target = CORPUS / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            assert len(data) <= 8192, f"{folder}/{name} is {len(data)} bytes; seeds stay small"
            (target / name).write_bytes(data)
    print(f"wrote {sum(len(s) for s in generated.values())} seeds under {CORPUS}")


if __name__ == "__main__":
    main()
