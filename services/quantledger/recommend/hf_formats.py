"""The Hugging Face formats under transformers: what each takes in memory and whether it fits the machine.

transformers does not offload layer by layer as llama.cpp does: a model runs on one device (a GPU, else
the CPU; bitsandbytes is fast only on a GPU). So each format is rated on the largest GPU, else in RAM:

- weights: the block matrices (the linear layers bitsandbytes replaces) at the format's bytes per weight,
  everything else (embeddings, output layer, norms, biases) in 16 bits, as transformers keeps them;
  LLM.int8() stores int8 plus one float32 scale per output row; NF4 stores 4 bits plus one 8-bit absmax per
  block of 64 and, quantized twice, one float32 per 256 blocks;
- KV cache: transformers' DynamicCache in float16, all layers, the whole context;
- activations: one 512-token prefill step's hidden states, feed-forward and logits in float32;
- runtime: about 400 MiB for torch and transformers in RAM, 500 MiB for a CUDA context on a GPU.

Quality is predicted as the GGUF type of the same bits (recommend/quality.py): LLM.int8() as Q8_0, NF4
as Q4_0 (measured here: NF4 0.030 and Q4_0 0.033 mean KL on the same model, docs/HF_EXPORT.md), so the
figures are estimates, labelled so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quantledger.hf_export.formats import FORMATS
from quantledger.recommend import quality
from quantledger.recommend.hardware import GIB, RAM_RESERVE, Machine
from quantledger.recommend.shape import ModelShape

MIB = 1 << 20
TORCH_RUNTIME = 400 * MIB
CUDA_CONTEXT = 500 * MIB
PREFILL_TOKENS = 512
# the GGUF type whose quality each format is predicted by (the same bits per weight)
_LIKE = {"HF_F16": "F16", "HF_BF16": "BF16", "HF_BNB_INT8": "Q8_0", "HF_BNB_NF4": "Q4_0"}


@dataclass(frozen=True)
class HfFormatFit:
    """One Hugging Face format rated for the machine."""

    format: str
    weight_bytes: int
    kv_cache_bytes: int
    memory_bytes: int  # weights + KV cache + activations + runtime
    device: str  # "cuda:0" (the largest GPU) or "cpu"
    bytes_available: int
    fits: bool
    quality: quality.QualityPrediction
    note: str


def _is_linear(name: str, dims: int) -> bool:
    """A block's weight matrix (what bitsandbytes replaces): not embeddings, the output layer or norms."""
    return dims == 2 and name.startswith("blk.") and name.endswith(".weight") and "norm" not in name


def weight_bytes(shape: ModelShape, fmt: str) -> int:
    total = 0.0
    for tensor in shape.tensors:
        elements = tensor.n_elements
        if fmt == "HF_BNB_INT8" and _is_linear(tensor.name, len(tensor.shape)):
            total += elements + 4 * tensor.shape[1]  # int8, one float32 scale per output row
        elif fmt == "HF_BNB_NF4" and _is_linear(tensor.name, len(tensor.shape)):
            total += elements / 2 + elements / 64 + 4 * elements / (64 * 256)
        else:
            total += 2 * elements
    return int(total)


def kv_cache_bytes(shape: ModelShape, n_ctx: int) -> int:
    if not shape.has_kv_cache:
        return 0
    per_token = sum(kv * (shape.key_length + shape.value_length) for kv in shape.n_head_kv) * 2
    return per_token * n_ctx


def activation_bytes(shape: ModelShape) -> int:
    widest = max(shape.n_ff, default=0)
    return 4 * PREFILL_TOKENS * (2 * shape.n_embd + widest + shape.n_vocab)


def rate(shape: ModelShape, machine: Machine, n_ctx: int, has_imatrix: bool = False) -> list[HfFormatFit]:
    """Every Hugging Face format of ``shape`` at ``n_ctx`` tokens on ``machine``, smallest first."""
    gpu = max(machine.gpus, key=lambda d: d.memory_bytes, default=None)
    ram = max(0, machine.ram_bytes - RAM_RESERVE)
    fits = []
    for fmt in FORMATS:
        weights = weight_bytes(shape, fmt.name)
        kv = kv_cache_bytes(shape, n_ctx)
        working = weights + kv + activation_bytes(shape)
        like = _LIKE[fmt.name]
        bits = 16.0 if like in ("F16", "BF16") else fmt.typical_bits_per_weight
        predicted = quality.predict(like, bits, shape.n_parameters, has_imatrix)
        predicted = dataclasses.replace(predicted, source=quality.ESTIMATED)
        if gpu is not None and working + CUDA_CONTEXT <= gpu.memory_bytes:
            device, available, used = f"{gpu.kind}:0", gpu.memory_bytes, working + CUDA_CONTEXT
            note = f"on {device} with transformers ({fmt.torch_dtype} compute)"
        else:
            device, available, used = "cpu", ram, working + TORCH_RUNTIME
            note = "on the CPU with transformers: runs, but bitsandbytes and float16 are slow there" + (
                f" (needs {used / GIB:.1f} GiB; the largest GPU has {gpu.memory_bytes / GIB:.1f})" if gpu else ""
            )
        if not fmt.available:
            note += f"; not installed here: {fmt.requires}"
        fits.append(HfFormatFit(fmt.name, weights, kv, used, device, available, used <= available, predicted, note))
    return sorted(fits, key=lambda f: f.weight_bytes)
