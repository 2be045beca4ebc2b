"""Predicted memory against what llama.cpp allocates when llama-cpp-python loads the test models.

Each case loads a model in a subprocess (tests/llama_alloc.py) at one context size, ubatch, flash
attention setting and KV type, reads llama.cpp's own figures (model buffer, KV cache, compute buffer)
and requires the recommender's prediction of each to be within 10 %.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import gguf
import pytest
from test_recommend_sizes import llama_cpp_runs

from quantledger.gguf.reader import read_gguf_header
from quantledger.quantize.catalogue import catalogue
from quantledger.recommend.hardware import GIB, MIB, Machine
from quantledger.recommend.memory import ContextSettings, compute_buffer_bytes, kv_bytes_per_layer, weight_layout
from quantledger.recommend.mixes import plan_types, weight_bytes
from quantledger.recommend.profile import build_profile
from quantledger.recommend.search import Request, search
from quantledger.recommend.shape import from_gguf
from quantledger.testing.synthetic_model import write_llama_gguf

HERE = pathlib.Path(__file__).resolve().parent
TOLERANCE = 0.10
MODELS = {
    "gqa2": dict(n_embd=512, n_ff=1536, n_layer=4, n_head=8, n_head_kv=4, n_vocab=512, context_length=16384),
    "gqa8": dict(n_embd=1024, n_ff=2816, n_layer=2, n_head=16, n_head_kv=2, n_vocab=4096, context_length=16384),
    "wide-vocab": dict(n_embd=256, n_ff=4096, n_layer=2, n_head=4, n_head_kv=4, n_vocab=32000, context_length=16384),
    "gemma2-swa": dict(
        n_embd=512,
        n_ff=1536,
        n_layer=4,
        n_head=8,
        n_head_kv=4,
        n_vocab=512,
        context_length=16384,
        architecture="gemma2",
        sliding_window=1024,
    ),
}


@dataclass(frozen=True)
class Case:
    model: str
    quant_type: str
    n_ctx: int
    n_ubatch: int = 512
    flash: bool = False
    kv: str = "f16"
    swa_full: bool = False


CASES = [
    Case("gqa2", "F16", 300),
    Case("gqa2", "F16", 1000),
    Case("gqa2", "F16", 4096),
    Case("gqa2", "F16", 4096, flash=True),
    Case("gqa2", "F16", 8192, n_ubatch=128),
    Case("gqa2", "F16", 8192, flash=True, kv="q8_0"),
    Case("gqa2", "F16", 2048, flash=True, kv="q4_0"),
    Case("gqa2", "Q4_K_M", 2048),
    Case("gqa8", "Q8_0", 700, flash=True),
    Case("gqa8", "Q4_K_M", 8192),
    Case("wide-vocab", "F16", 4096),
    Case("wide-vocab", "Q6_K", 8192, flash=True),
    Case("gemma2-swa", "F16", 8192),
    Case("gemma2-swa", "F16", 8192, flash=True),
    Case("gemma2-swa", "F16", 8192, swa_full=True),
    Case("gemma2-swa", "Q4_K_M", 4096, n_ubatch=128, flash=True, kv="q8_0"),
    Case("gemma2-swa", "F16", 700),
]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], pathlib.Path]:
    root = tmp_path_factory.mktemp("memory-models")
    files = {}
    ftypes = {t.name: t.file_type for t in catalogue()}
    for name, dims in MODELS.items():
        source = root / f"{name}.gguf"
        write_llama_gguf(source, **dims)
        files[name, "F16"] = source
        wanted = sorted({c.quant_type for c in CASES if c.model == name and c.quant_type != "F16"})
        out = root / name
        out.mkdir()
        llama_cpp_runs(source, out, [(t, ftypes[t]) for t in wanted], dry_run=False)
        files.update({(name, t): out / f"{t}.gguf" for t in wanted})
    return files


def allocated(path: pathlib.Path, case: Case) -> dict[str, float]:
    argv = [
        sys.executable,
        str(HERE / "llama_alloc.py"),
        str(path),
        str(case.n_ctx),
        str(case.n_ubatch),
        "1" if case.flash else "0",
        case.kv,
        "1" if case.swa_full else "0",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: (
        f"{c.model}-{c.quant_type}-{c.n_ctx}-ub{c.n_ubatch}-"
        f"{'fa' if c.flash else 'nofa'}-{c.kv}{'-swa-full' if c.swa_full else ''}"
    ),
)
def test_predicted_memory_is_what_llama_cpp_allocates(
    model_files: dict[tuple[str, str], pathlib.Path], case: Case
) -> None:
    shape = from_gguf(read_gguf_header(model_files[case.model, "F16"]))  # predicted from the source
    real = allocated(model_files[case.model, case.quant_type], case)
    ctx = ContextSettings(case.n_ctx, case.n_ubatch, case.kv, case.flash, case.swa_full)
    predicted = {
        "weights": weight_layout(shape, weight_bytes(shape, plan_types(shape, case.quant_type))).total,
        "kv": sum(kv_bytes_per_layer(shape, ctx)),
        "compute": compute_buffer_bytes(shape, ctx),
    }
    assert real["cells"] == ctx.cells
    for part, value in predicted.items():
        assert abs(value / real[part] - 1) <= TOLERANCE, f"{part}: predicted {value}, llama.cpp {real[part]:.0f}"


# docs/RECOMMEND.md, "Reserves": what an option adds on top of llama.cpp's buffers (published figures,
# written out here rather than imported from the recommender)
RAM_RUNTIME = 150 * MIB  # the runtime
GPU_CONTEXT, GPU_FITTER_MARGIN = 350 * MIB, 1 * GIB  # per GPU: context and workspaces; llama.cpp's fitter margin


def test_a_recommendation_adds_up_what_llama_cpp_allocates(model_files: dict[tuple[str, str], pathlib.Path]) -> None:
    """The RAM an option reports is llama.cpp's weights + KV + compute + output buffers (within 10 %) plus the
    published runtime reserve."""
    case = Case("gqa8", "Q4_K_M", 8192, flash=True)
    shape = from_gguf(read_gguf_header(model_files[case.model, "F16"]))
    profile = build_profile(shape, [("Q4_K_M", 15)], has_imatrix=False)
    request = Request(Machine(16 * GIB, 8), n_ctx=case.n_ctx, kv_types=("f16",), flash_attention=True)
    (option,) = search(profile, request).options()
    real = allocated(model_files[case.model, case.quant_type], case)
    assert real["output"] > 0  # llama.cpp's logits buffer was found in its log
    llama_total = real["weights"] + real["kv"] + real["compute"] + real["output"]
    assert option.devices[0].device == "cpu" and option.gpu_layers == 0
    ram = option.devices[0].bytes_used - RAM_RUNTIME
    assert abs(ram / llama_total - 1) <= TOLERANCE, (ram, llama_total)


def test_offloading_puts_the_output_layer_first_then_the_last_blocks(
    model_files: dict[tuple[str, str], pathlib.Path],
) -> None:
    """A GPU with room for the output layer and two blocks gets exactly those (llama.cpp's -ngl order).

    The room is sized from outside the recommender: the tensor bytes of the file llama.cpp wrote (read with
    gguf-py), llama.cpp's own KV cache and compute buffer figures, and the published GPU reserves.
    """
    from quantledger.recommend.hardware import Device

    case = Case("gqa2", "Q4_K_M", 4096, flash=True)
    path = model_files[case.model, case.quant_type]
    real = allocated(path, case)
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    n_layer = MODELS[case.model]["n_layer"]
    blocks = [sum(n for name, n in tensors.items() if name.startswith(f"blk.{i}.")) for i in range(n_layer)]
    output = tensors.get("output.weight", 0) + tensors["output_norm.weight"]
    kv_layer = real["kv"] / n_layer  # no sliding window here: every layer's cache is the same size
    two_blocks = output + sum(blocks[-2:]) + 2 * kv_layer + real["compute"]
    half_a_block_more = (blocks[-3] + kv_layer) / 2
    gpu = Device("cuda", int(two_blocks + half_a_block_more + GPU_CONTEXT + GPU_FITTER_MARGIN))
    shape = from_gguf(read_gguf_header(model_files[case.model, "F16"]))
    profile = build_profile(shape, [("Q4_K_M", 15)], has_imatrix=False)
    request = Request(Machine(16 * GIB, 8, (gpu,)), n_ctx=case.n_ctx, kv_types=("f16",), flash_attention=True)
    (option,) = search(profile, request).options()
    assert option.gpu_layers == 3 and option.total_layers == n_layer + 1
    cpu, cuda = option.devices
    assert cuda.layers == 2 and cpu.layers == n_layer - 2
    assert abs((cuda.bytes_used - GPU_CONTEXT) / two_blocks - 1) <= TOLERANCE, (cuda.bytes_used, two_blocks)
