"""The recommender's sizes against llama.cpp itself.

Per-tensor types of every mix are compared tensor by tensor with llama.cpp's dry run (what
EstimateQuantizeJob runs) on model shapes that exercise the rules: the layer-position bumps over 32
and 80 layers (llama.cpp's 70B rule), grouped-query attention (n_gqa 4 and 8), rows that are not a
multiple of 256 (fallbacks), a tied output layer (Gemma 2) and an importance matrix. File sizes are compared with real files.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from quantledger.gguf.reader import read_gguf_header
from quantledger.gguf.types import ggml_types_by_name
from quantledger.quantize.catalogue import catalogue
from quantledger.quantize.imatrix import write_imatrix_dat
from quantledger.recommend.mixes import allows_quantization, is_known_mix, plan_types
from quantledger.recommend.models import from_hf_folder
from quantledger.recommend.profile import build_profile
from quantledger.recommend.shape import from_gguf
from quantledger.testing.synthetic_model import write_llama_gguf

SHAPES = {
    "gqa4-32-layers": dict(n_embd=256, n_ff=512, n_layer=32, n_head=4, n_head_kv=1, n_vocab=300),
    "llama70b-rule-80-layers": dict(n_embd=128, n_ff=256, n_layer=80, n_head=4, n_head_kv=2, n_vocab=300),
    "rows-of-384-fall-back": dict(n_embd=384, n_ff=1152, n_layer=6, n_head=6, n_head_kv=6, n_vocab=300),
    "gqa8-wide-vocab": dict(n_embd=1024, n_ff=2816, n_layer=2, n_head=16, n_head_kv=2, n_vocab=4096),
    "gemma2-tied-output": dict(
        n_embd=256, n_ff=768, n_layer=8, n_head=4, n_head_kv=2, n_vocab=300, architecture="gemma2", sliding_window=512
    ),
}


def mix_types() -> list[tuple[str, int]]:
    return [(t.name, t.file_type) for t in catalogue() if is_known_mix(t.name)]


def llama_cpp_runs(
    source: pathlib.Path,
    out_dir: pathlib.Path,
    types: list[tuple[str, int]],
    *,
    dry_run: bool,
    imatrix: pathlib.Path | None = None,
) -> list[dict[str, str]]:
    """Run llama.cpp (the service's quantize worker) once per type; the tensor -> type each run chose."""
    read_fd, write_fd = os.pipe()
    runs = [
        {
            "source": str(source),
            "output": str(out_dir / f"{name}.gguf"),
            "ftype": ftype,
            "dry_run": dry_run,
            "threads": 2,
            "imatrix": str(imatrix) if imatrix else None,
        }
        for name, ftype in types
    ]
    worker = subprocess.Popen(
        [sys.executable, "-m", "quantledger.quantize.worker", "--events-fd", str(write_fd)],
        stdin=subprocess.PIPE,
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    os.close(write_fd)
    assert worker.stdin is not None
    worker.stdin.write(json.dumps({"runs": runs}))
    worker.stdin.close()
    with os.fdopen(read_fd) as events:
        lines = [json.loads(line) for line in events]
    assert worker.wait(timeout=600) == 0
    chosen: list[dict[str, str]] = []
    for event in lines:
        if event.get("event") == "run":
            chosen.append({})
        elif event.get("event") == "tensor_done":
            chosen[-1][event["name"]] = event["target_type"].upper()
    assert len(chosen) == len(types)
    return chosen


def _assert_same_types(
    path: pathlib.Path, chosen_by_llama: list[dict[str, str]], types: list[tuple[str, int]], *, imatrix: bool = False
) -> None:
    shape = from_gguf(read_gguf_header(path))
    names = {t.id: t.name for t in ggml_types_by_name().values()}
    for (name, _), llama in zip(types, chosen_by_llama, strict=True):
        plan = plan_types(shape, name, has_imatrix=imatrix)
        ours = {t.name: names[plan.types[t.name]] for t in shape.tensors}
        differences = {t: (llama[t], ours[t]) for t in llama if llama[t] != ours[t]}
        assert not differences, f"{name}: tensor -> (llama.cpp, ours): {differences}"
        assert set(llama) == set(ours)  # llama.cpp reports every tensor, quantized or copied


@pytest.mark.parametrize("label", sorted(SHAPES))
def test_every_mix_gives_every_tensor_the_type_llama_cpp_gives(tmp_path: pathlib.Path, label: str) -> None:
    path = tmp_path / f"{label}.gguf"
    write_llama_gguf(path, **SHAPES[label])
    types = mix_types()
    assert len(types) >= 30
    _assert_same_types(path, llama_cpp_runs(path, tmp_path, types, dry_run=True), types)


def test_an_importance_matrix_changes_the_mix_as_in_llama_cpp(tmp_path: pathlib.Path) -> None:
    """With an imatrix llama.cpp keeps IQ3_XXS on attn_v, drops IQ4's ffn_down bump and bumps Q4_0 to Q4_1."""
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, n_embd=256, n_ff=512, n_layer=16, n_head=4, n_head_kv=4, n_vocab=300)
    header = read_gguf_header(path)
    rng = np.random.default_rng(3)
    entries = {
        t.name: rng.uniform(0.1, 2.0, t.shape[0]).astype(np.float32) for t in header.tensors if len(t.shape) == 2
    }
    imatrix = tmp_path / "imatrix.dat"
    write_imatrix_dat(imatrix, entries)
    types = mix_types()
    chosen = llama_cpp_runs(path, tmp_path, types, dry_run=True, imatrix=imatrix)
    _assert_same_types(path, chosen, types, imatrix=True)
    shape = from_gguf(header)
    q4_0 = ggml_types_by_name()
    assert plan_types(shape, "Q4_0", has_imatrix=True).types["blk.0.ffn_down.weight"] == q4_0["Q4_1"].id
    assert plan_types(shape, "Q4_0").types["blk.0.ffn_down.weight"] == q4_0["Q4_0"].id


@pytest.mark.slow
def test_predicted_sizes_are_the_sizes_of_the_real_files(tmp_path: pathlib.Path) -> None:
    """Every type that needs no importance matrix, quantized for real: the predicted size is the file's size."""
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, n_embd=512, n_ff=1536, n_layer=8, n_head=8, n_head_kv=4, n_vocab=1000)
    shape = from_gguf(read_gguf_header(path))
    wanted = [t for t in catalogue() if is_known_mix(t.name) and not t.requires_imatrix and t.name != "F32"]
    types = [(t.name, t.file_type) for t in wanted]
    profile = build_profile(shape, types, has_imatrix=False)
    llama_cpp_runs(path, tmp_path, types, dry_run=False)
    for predicted in profile.types:
        real = (tmp_path / f"{predicted.quant_type}.gguf").stat().st_size
        assert predicted.size_bytes == real, f"{predicted.quant_type}: predicted {predicted.size_bytes}, real {real}"
        header = read_gguf_header(tmp_path / f"{predicted.quant_type}.gguf")
        assert abs(predicted.bits_per_weight - 8 * header.tensor_bytes / header.n_parameters) < 0.01


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_hf_folder_sizes_match_its_converted_gguf(tmp_path: pathlib.Path, architecture: str) -> None:
    """From safetensors headers alone, weights are exact and the file size within 1 % of the converted file's."""
    from hf_models import write_causal_folder

    from quantledger.convert.converter import convert_hf_to_gguf

    folder = tmp_path / "hf"
    write_causal_folder(folder, architecture, hidden=512, ffn=1536, layers=4, heads=8, kv_heads=4)
    gguf_path = tmp_path / "converted.gguf"
    convert_hf_to_gguf(folder, gguf_path)
    from_folder = from_hf_folder(folder)
    from_file = from_gguf(read_gguf_header(gguf_path))
    assert from_folder.origin == "hf-folder" and from_folder.exact
    assert sorted((t.name, t.shape) for t in from_folder.tensors) == sorted(
        (t.name, t.shape) for t in from_file.tensors
    )
    assert [t.name for t in from_folder.tensors if allows_quantization(t)]
    types = [t for t in mix_types() if t[0] in ("Q4_K_M", "Q8_0", "IQ4_XS", "Q6_K")]
    folder_profile = build_profile(from_folder, types, has_imatrix=False)
    file_profile = build_profile(from_file, types, has_imatrix=False)
    for ours, exact in zip(folder_profile.types, file_profile.types, strict=True):
        assert ours.layout == exact.layout  # weight bytes, block by block
        assert abs(ours.size_bytes / exact.size_bytes - 1) < 0.01, ours.quant_type
