"""Hostile and broken models are refused before any work, with SOURCE_INVALID naming the problem.

GGUF headers with absurd metadata (bounds of gguf/reader.py), GGUF models missing a tensor or with a
wrong shape (convert/model_checks.py), Hugging Face folders with missing, 3-D or integer tensors, absurd or
wrong-typed hyper-parameters, a tokenizer with wrong-typed fields; and option values out of range.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import struct
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from conftest import Models, job_error_reason, wait_for_job
from hf_models import save_file, write_causal_folder
from hostile import health_probe
from test_bad_input import create, refused

from quantledger.gguf.format import ARRAY, FLOAT32, INT32, UINT8
from quantledger.gguf.layout import tensor_nbytes
from quantledger.gguf.reader import MAX_ARRAY_ELEMENTS, MAX_KV_COUNT
from quantledger.gguf.writer import GgufMetadata, encode_gguf
from quantledger.testing.synthetic_model import _tensor_shapes
from quantledger.v1 import quantize_service_pb2 as pb

F16, F32 = 1, 0
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ExtraKv = Callable[[GgufMetadata], None]


def llama_gguf(
    *,
    n_embd: int = 256,
    n_ff: int = 512,
    n_layer: int = 1,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 300,
    drop: tuple[str, ...] = (),
    reshape: dict[str, tuple[int, ...]] | None = None,
    extra_kv: ExtraKv | None = None,
) -> bytes:
    """A small llama GGUF (zero weights) whose tensors follow its metadata, less ``drop``, with ``reshape``;
    ``extra_kv`` adds keys after the model's."""
    meta = GgufMetadata()
    meta.text("general.architecture", "llama")
    meta.u32("general.file_type", 1)
    meta.u32("llama.block_count", n_layer)
    meta.u32("llama.embedding_length", n_embd)
    meta.u32("llama.feed_forward_length", n_ff)
    meta.u32("llama.attention.head_count", n_head)
    meta.u32("llama.attention.head_count_kv", n_head_kv)
    meta.u32("llama.context_length", 256)
    meta.u32("llama.rope.dimension_count", n_embd // n_head)
    meta.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    meta.text("tokenizer.ggml.model", "llama")
    meta.strings("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(n_vocab)])
    meta.numbers("tokenizer.ggml.scores", FLOAT32, np.zeros(n_vocab))
    meta.numbers("tokenizer.ggml.token_type", INT32, np.ones(n_vocab))
    if extra_kv is not None:
        extra_kv(meta)
    tensors = []
    for name, shape in _tensor_shapes(n_embd, n_ff, n_layer, n_head, n_head_kv, n_vocab):
        if name in drop:
            continue
        shape = (reshape or {}).get(name, shape)
        ggml_type = F32 if len(shape) == 1 else F16
        tensors.append((name, shape, ggml_type, bytes(tensor_nbytes(shape, ggml_type))))
    return encode_gguf(meta, tensors)


def _many_keys(meta: GgufMetadata) -> None:
    for i in range(MAX_KV_COUNT):
        meta.u32(f"x.k{i}", i)


def _huge_array(meta: GgufMetadata) -> None:
    count = MAX_ARRAY_ELEMENTS + 1
    meta.add("x.big", ARRAY, struct.pack("<iQ", UINT8, count) + bytes(count))


@pytest.fixture(scope="module")
def ggufs(models: Models) -> pathlib.Path:
    root = models.root / "hostile-gguf"
    root.mkdir(exist_ok=True)
    return root


def _write(root: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    path = root / name
    path.write_bytes(data)
    return path


def test_valid_checked_gguf_is_accepted(stub, ggufs: pathlib.Path) -> None:
    """The checks know what a real llama needs: a complete small one passes (guards against over-refusal)."""
    path = _write(ggufs, "complete.gguf", llama_gguf())
    estimate = stub.EstimateQuantizeJob(
        pb.EstimateQuantizeJobRequest(job=pb.QuantizeJob(source=str(path), quant_types=["Q8_0"]))
    )
    assert estimate.outputs[0].size_bytes > 0


@pytest.mark.parametrize(
    ("case", "data", "named"),
    [
        ("missing-ffn-down", lambda: llama_gguf(drop=("blk.0.ffn_down.weight",)), "blk.0.ffn_down.weight"),
        ("missing-output-norm", lambda: llama_gguf(drop=("output_norm.weight",)), "output_norm.weight"),
        ("wrong-k-shape", lambda: llama_gguf(reshape={"blk.0.attn_k.weight": (256, 256)}), "blk.0.attn_k.weight"),
        ("wrong-embd-rows", lambda: llama_gguf(reshape={"token_embd.weight": (256, 512)}), "token_embd.weight"),
        ("heads-not-multiple", lambda: llama_gguf(n_head=4, n_head_kv=3), "head_count_kv"),
        ("too-many-keys", lambda: llama_gguf(extra_kv=_many_keys), "MAX_KV_COUNT"),
        ("huge-array", lambda: llama_gguf(extra_kv=_huge_array), "MAX_ARRAY_ELEMENTS"),
    ],
)
def test_broken_gguf_is_source_invalid_naming_the_problem(stub, server, ggufs, case, data, named) -> None:
    path = _write(ggufs, f"{case}.gguf", data())
    with health_probe(server.address) as probe:
        code, reason, message = refused(create, stub, path, ["Q8_0"])
    probe.assert_answered()
    assert (code, reason) == (INVALID, "SOURCE_INVALID"), message
    assert named in message and path.name in message, message


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


@pytest.fixture(scope="module")
def hf_base(models: Models) -> dict[str, pathlib.Path]:
    root = models.root / "hostile-hf"
    return {
        "llama": write_causal_folder(root / "base-llama", "LlamaForCausalLM", layers=1, hidden=128, ffn=256),
        "qwen2": write_causal_folder(root / "base-qwen2", "Qwen2ForCausalLM", layers=1, hidden=128, ffn=256),
    }


def _variant(hf_base: dict[str, pathlib.Path], kind: str, name: str) -> pathlib.Path:
    folder = hf_base[kind].parent / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(hf_base[kind], folder)
    return folder


def _edit_tensors(folder: pathlib.Path, edit) -> None:
    tensors = _load(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def _edit_config(folder: pathlib.Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


MLP = "model.layers.0.mlp.down_proj.weight"
HF_CASES = {
    "missing-mlp": (lambda f: _edit_tensors(f, lambda t: t.pop(MLP)), MLP),
    "3d-tensor": (
        lambda f: _edit_tensors(f, lambda t: t.update({MLP: t[MLP].reshape(2, 64, 256)})),
        MLP,
    ),
    "integer-tensor": (lambda f: _edit_tensors(f, lambda t: t.update({MLP: t[MLP].astype(np.int32)})), "I32"),
    "extra-layer": (
        lambda f: _edit_tensors(f, lambda t: t.update({"model.layers.7.mlp.down_proj.weight": t[MLP]})),
        "layer 7",
    ),
    "huge-vocab": (lambda f: _edit_config(f, vocab_size=5_000_000), "vocab_size"),
    "hidden-string": (lambda f: _edit_config(f, hidden_size="256"), "hidden_size"),
    "hidden-negative": (lambda f: _edit_config(f, hidden_size=-128), "hidden_size"),
    "heads-not-multiple": (lambda f: _edit_config(f, num_key_value_heads=3), "num_key_value_heads"),
    "heads-not-dividing": (
        lambda f: _edit_config(f, num_attention_heads=3, num_key_value_heads=1, head_dim=None),
        "num_attention_heads",
    ),
    "eps-nan": (
        lambda f: (f / "config.json").write_text(
            (f / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN')
        ),
        "rms_norm_eps",
    ),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_broken_hf_folder_is_refused_at_create(stub, server, hf_base, case) -> None:
    folder = _variant(hf_base, "llama", case)
    make, named = HF_CASES[case]
    make(folder)
    with health_probe(server.address) as probe:
        code, reason, message = refused(create, stub, folder, ["Q8_0"])
    probe.assert_answered()
    assert (code, reason) == (INVALID, "SOURCE_INVALID"), message
    assert named in message, message


def test_wrong_typed_tokenizer_field_fails_as_source_invalid(stub, hf_base, models: Models) -> None:
    """tokenizer.json is read by the converter (in its worker): a wrong-typed field is SOURCE_INVALID, not
    WORKER_CRASHED."""
    folder = _variant(hf_base, "qwen2", "tokenizer-vocab-list")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"] = list(data["model"]["vocab"])
    (folder / "tokenizer.json").write_text(json.dumps(data))
    job = create(stub, folder, ["Q8_0"], output_dir=str(models.root / "tokenizer-vocab-list-out"), skip_quality=True)
    final = wait_for_job(stub, job.name)
    assert final.state == pb.QuantizeJob.STATE_FAILED
    assert job_error_reason(final) == "SOURCE_INVALID", final.error.message
    assert "tokenizer.json model.vocab" in final.error.message


# ---------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_kl_divergence": math.nan}, "max_kl_divergence"),
        ({"max_kl_divergence": math.inf}, "max_kl_divergence"),
        ({"max_kl_divergence": -0.5}, "max_kl_divergence"),
        ({"threads": 2**31 - 1}, "threads"),
        ({"threads": -1}, "threads"),
    ],
)
def test_option_values_out_of_range_are_invalid_argument(stub, models: Models, options, named) -> None:
    code, reason, message = refused(create, stub, models.f16, ["Q8_0"], **options)
    assert (code, reason) == (INVALID, "INVALID_ARGUMENT"), message
    assert named in message


def test_output_dir_with_missing_parent_says_it_does_not_exist(stub, models: Models) -> None:
    target = models.root / "no-such-parent" / "out"
    code, reason, message = refused(create, stub, models.f16, ["Q8_0"], output_dir=str(target))
    assert (code, reason) == (INVALID, "INVALID_ARGUMENT"), message
    assert "does not exist" in message and "not writable" not in message
