"""The joint search: quantization type x KV cache type x context x GPU layers under RAM and VRAM.

Per model, ``ModelProfile`` holds what does not depend on the request: llama.cpp's per-tensor types
for every mix, the exact weight bytes per block and the file size. Per request, each type and KV type
gets the largest number of GPU layers its devices hold (a bisection over suffix sums: offloading goes
output layer first, then blocks from the last), and the configuration is checked against RAM. If
nothing fits at the context asked for, smaller contexts (halving down to 2,048) are tried too.

Decode speed is memory-bound: tokens/s ~ 1 / (t0 + Σ over devices of bytes read per token /
(η x bandwidth)), with the weights of each device and half the KV cache read per token.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from quantledger.errors import InvalidArgument
from quantledger.gguf_header import DEFAULT_ALIGNMENT, predict_quantized_file_size
from quantledger.recommend import quality
from quantledger.recommend.hardware import GIB, GPU_MARGIN, GPU_RESERVE, RAM_RESERVE, Machine
from quantledger.recommend.memory import (
    ContextSettings,
    WeightLayout,
    compute_buffer_bytes,
    kv_bytes_per_layer,
    weight_layout,
)
from quantledger.recommend.mixes import TensorPlan, plan_types, weight_bytes
from quantledger.recommend.shape import ModelShape, _tensor_info_bytes

GGML_QNT_VERSION = 2
# Below this predicted KL divergence an option counts as usable for SPEED and SIZE (Q3_K_M is 0.10 on 8B).
ACCEPTABLE_KLD = 0.12
MIN_CONTEXT = 2048
# KL divergence a quantized KV cache adds (q8_0 is near lossless, 4-bit caches are not)
_KV_QUALITY_COST = {"q8_0": 0.0005, "q5_0": 0.002, "q5_1": 0.002, "q4_0": 0.01, "q4_1": 0.01, "iq4_nl": 0.008}


class Preference(enum.StrEnum):
    QUALITY = "quality"
    BALANCED = "balanced"
    SPEED = "speed"
    SIZE = "size"


@dataclass(frozen=True)
class TypeProfile:
    quant_type: str
    file_type: int
    plan: TensorPlan
    size_bytes: int
    bits_per_weight: float
    layout: WeightLayout
    block_suffix: tuple[int, ...]  # block_suffix[k] = weight bytes of the last k blocks
    read_suffix: tuple[int, ...]  # the same for the bytes a token reads (active experts only)
    read_output: int


@dataclass(frozen=True)
class ModelProfile:
    shape: ModelShape
    types: tuple[TypeProfile, ...]


def _file_size(shape: ModelShape, plan: TensorPlan, file_type: int, tensor_bytes: dict[str, int]) -> int:
    if shape.header is not None:
        values = {"general.quantization_version": GGML_QNT_VERSION, "general.file_type": file_type}
        return predict_quantized_file_size(shape.header, plan.types, values)
    meta = 24 + shape.metadata_bytes + sum(_tensor_info_bytes(t.name, t.shape) for t in shape.tensors)
    padded = sum(-(-b // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT for b in tensor_bytes.values())
    return -(-meta // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT + padded


def _suffix_sums(values: Sequence[int]) -> tuple[int, ...]:
    return (0, *itertools.accumulate(reversed(values)))


@dataclass(frozen=True)
class CacheTable:
    """The KV cache and compute buffer of one context setting, shared by every type."""

    ctx: ContextSettings
    kv_suffix: tuple[int, ...]
    compute: int

    @property
    def kv_total(self) -> int:
        return self.kv_suffix[-1]


def cache_table(shape: ModelShape, ctx: ContextSettings) -> CacheTable:
    return CacheTable(ctx, _suffix_sums(kv_bytes_per_layer(shape, ctx)), compute_buffer_bytes(shape, ctx))


def build_profile(shape: ModelShape, quant_types: Sequence[tuple[str, int]], has_imatrix: bool) -> ModelProfile:
    """Profiles of every (name, llama_ftype) in ``quant_types`` for ``shape``."""
    active = shape.n_expert_used / shape.n_expert if shape.n_expert > 1 and shape.n_expert_used else 1.0
    profiles = []
    for name, file_type in quant_types:
        plan = plan_types(shape, name, has_imatrix=has_imatrix)
        sizes = weight_bytes(shape, plan)
        layout = weight_layout(shape, sizes)
        read = [0.0] * shape.n_layer
        for tensor in shape.tensors:
            if 0 <= tensor.layer < shape.n_layer:
                read[tensor.layer] += sizes[tensor.name] * (active if "_exps" in tensor.name else 1.0)
        elements = sum(t.n_elements for t in shape.tensors)
        profiles.append(
            TypeProfile(
                quant_type=name,
                file_type=file_type,
                plan=plan,
                size_bytes=_file_size(shape, plan, file_type, sizes),
                bits_per_weight=8 * sum(sizes.values()) / elements if elements else 0.0,
                layout=layout,
                block_suffix=_suffix_sums(layout.block_bytes),
                read_suffix=_suffix_sums([int(r) for r in read]),
                read_output=layout.output_layer_bytes,
            )
        )
    return ModelProfile(shape, tuple(profiles))


@dataclass(frozen=True)
class Request:
    machine: Machine
    n_ctx: int
    n_ubatch: int = 512
    kv_types: tuple[str, ...] = ("f16", "q8_0")
    flash_attention: bool = True
    swa_full: bool = False
    preference: Preference = Preference.BALANCED
    max_size_bytes: int = 0
    max_kl_divergence: float = 0.0
    has_imatrix: bool = False
    max_options: int = 5
    measured_kld: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceUse:
    device: str  # "cpu", "cuda:0", "metal:0"
    bytes_used: int
    bytes_available: int
    layers: int


@dataclass
class Option:
    quant_type: str
    size_bytes: int
    bits_per_weight: float
    n_ctx: int
    kv_type: str
    flash_attention: bool
    gpu_layers: int
    total_layers: int
    devices: list[DeviceUse]
    kv_bytes: int
    compute_bytes: int
    tokens_per_second: float
    quality: quality.QualityPrediction
    fits: bool
    needs_imatrix: bool
    problems: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    score: float = 0.0
    overshoot: float = 0.0  # how far over its limits a configuration that does not fit is


def _efficiency(quant_type: str) -> float:
    if quant_type.startswith(("IQ1", "IQ2", "Q2_K", "TQ", "Q1_0", "Q2_0")):
        return 0.55
    return 0.7


def _configure(profile: TypeProfile, shape: ModelShape, req: Request, cache: CacheTable) -> Option:
    machine, ctx, compute = req.machine, cache.ctx, cache.compute
    layout, n_layer, gpus = profile.layout, shape.n_layer, machine.gpus
    blocks, kvs = profile.block_suffix, cache.kv_suffix

    def gpu_need(g: int) -> int:  # bytes on the GPUs for g offloaded layers: the output layer, then blocks
        return layout.output_layer_bytes + blocks[g - 1] + kvs[g - 1] if g else 0

    gpu_capacity = sum(g.memory_bytes - GPU_RESERVE - GPU_MARGIN - compute for g in gpus)
    low, high = 0, n_layer + 1 if gpus and gpu_capacity > 0 else 0
    while low < high:  # the most layers whose bytes fit
        middle = (low + high + 1) // 2
        low, high = (middle, high) if gpu_need(middle) <= gpu_capacity else (low, middle - 1)
    gpu_layers = low
    on_gpu = max(0, gpu_layers - 1)  # blocks on the GPUs
    cpu_weights = layout.total - layout.output_bytes - blocks[on_gpu] if gpu_layers else layout.total
    cpu_kv = cache.kv_total - kvs[on_gpu]
    host_compute = compute // 8 if gpu_layers else compute
    cpu_bytes = cpu_weights + cpu_kv + host_compute + shape.n_vocab * 4 + RAM_RESERVE
    gpu_overhead = (compute + GPU_RESERVE) * len(gpus)
    gpu_bytes = gpu_need(gpu_layers) + gpu_overhead if gpu_layers else 0
    usable_ram = machine.usable_ram() + RAM_RESERVE
    problems = []
    overshoot = 0.0
    if machine.unified_memory and gpus:
        total = cpu_bytes + gpu_bytes
        if total > usable_ram:
            problems.append(f"needs {total / GIB:.1f} GiB of unified memory, {usable_ram / GIB:.1f} GiB usable")
            overshoot = total / usable_ram - 1
    elif cpu_bytes > usable_ram:
        where = "RAM" if not gpus else "RAM besides the GPU"
        problems.append(f"needs {cpu_bytes / GIB:.1f} GiB of {where}, {usable_ram / GIB:.1f} GiB usable")
        overshoot = cpu_bytes / usable_ram - 1
    devices = [DeviceUse("cpu", cpu_bytes, usable_ram, n_layer - on_gpu)]
    total_memory = sum(g.memory_bytes for g in gpus) or 1
    for index, gpu in enumerate(gpus):
        share = gpu.memory_bytes / total_memory
        used = int((gpu_bytes - gpu_overhead) * share) + compute + GPU_RESERVE if gpu_layers else 0
        devices.append(DeviceUse(f"{gpu.kind}:{index}", used, gpu.memory_bytes, round(on_gpu * share)))
    # decode speed: every weight a token uses and half the cache are read once per token
    reads = profile.read_suffix
    gpu_read = (profile.read_output + reads[on_gpu] + kvs[on_gpu] // 2) if gpu_layers else 0
    cpu_read = reads[-1] - reads[on_gpu] + cpu_kv // 2 + (0 if gpu_layers else profile.read_output)
    eta = _efficiency(profile.quant_type)
    seconds = 0.0005 + cpu_read / (eta * machine.effective_cpu_bandwidth())
    if gpu_layers:
        seconds += 0.00002 * n_layer + gpu_read / (eta * min(g.effective_bandwidth() for g in gpus))
    measured = req.measured_kld.get(profile.quant_type)
    predicted = (
        quality.measured(measured)
        if measured is not None
        else quality.predict(profile.quant_type, profile.bits_per_weight, shape.n_parameters, req.has_imatrix)
    )
    cache_cost = _KV_QUALITY_COST.get(ctx.kv_type, 0.0)
    if cache_cost:
        kld = predicted.mean_kl_divergence + cache_cost
        predicted = quality.QualityPrediction(kld, math.expm1(kld), predicted.source)
    if req.max_size_bytes and profile.size_bytes > req.max_size_bytes:
        problems.append(f"the file ({profile.size_bytes / GIB:.2f} GiB) is over the maximum size")
    if req.max_kl_divergence and predicted.mean_kl_divergence > req.max_kl_divergence:
        problems.append(f"KL divergence {predicted.mean_kl_divergence:.3g} is over the maximum")
    if profile.plan.needs_imatrix and not req.has_imatrix:
        problems.append("llama.cpp needs an importance matrix for this type (pass imatrix)")
    return Option(
        quant_type=profile.quant_type,
        size_bytes=profile.size_bytes,
        bits_per_weight=profile.bits_per_weight,
        n_ctx=ctx.n_ctx,
        kv_type=ctx.kv_type,
        flash_attention=ctx.flash_attention,
        gpu_layers=gpu_layers,
        total_layers=n_layer + 1,
        devices=devices,
        kv_bytes=cache.kv_total,
        compute_bytes=compute,
        tokens_per_second=1.0 / seconds,
        quality=predicted,
        fits=not problems,
        needs_imatrix=profile.plan.needs_imatrix,
        problems=problems,
        overshoot=overshoot,
    )


def _score(option: Option, preference: Preference, machine: Machine) -> float:
    """Higher is better; only compares options that fit."""
    kld = max(option.quality.mean_kl_divergence, 1e-6)
    speed = option.tokens_per_second
    if preference is Preference.QUALITY:
        return -kld + speed * 1e-9
    if preference is Preference.SPEED:
        return speed if kld <= ACCEPTABLE_KLD else speed * 1e-3
    if preference is Preference.SIZE:
        return -option.size_bytes if kld <= ACCEPTABLE_KLD else -option.size_bytes * 1e3
    # BALANCED: perplexity points against speed, speed counting less once it is interactive,
    # and a device filled past 85 % counting against (no room for the context to grow)
    fill = max(d.bytes_used / d.bytes_available for d in option.devices if d.bytes_available > 0)
    score = -100 * kld + 12 * math.log(min(speed, 30.0)) + 3 * math.log(max(speed, 30.0) / 30.0)
    return score - 40 * max(0.0, fill - 0.85)


def search(profile: ModelProfile, req: Request) -> list[Option]:
    """Every type's best configuration, ranked for the preference; those that fit come first."""
    shape = profile.shape
    if req.n_ctx <= 0:
        raise InvalidArgument(f"the context length must be positive, not {req.n_ctx}")
    contexts = [req.n_ctx]
    while contexts[-1] // 2 >= MIN_CONTEXT:
        contexts.append(contexts[-1] // 2)
    kv_types = req.kv_types if shape.has_kv_cache else ("f16",)
    tables = {
        (n_ctx, kv_type): cache_table(shape, ContextSettings(n_ctx, req.n_ubatch, kv_type, req.flash_attention
                                                              or kv_type not in ("f16", "bf16", "f32"), req.swa_full))
        for n_ctx in contexts for kv_type in kv_types
    }  # fmt: skip
    best: list[Option] = []
    for type_profile in profile.types:
        chosen: Option | None = None
        for n_ctx in contexts:
            candidates = [_configure(type_profile, shape, req, tables[n_ctx, kv]) for kv in kv_types]
            fitting = [c for c in candidates if c.fits]
            pick = max(
                fitting or candidates, key=lambda o: (o.fits, _score(o, req.preference, req.machine), -o.overshoot)
            )
            if chosen is None or (pick.fits and not chosen.fits):
                chosen = pick
            if chosen.fits:
                break
        assert chosen is not None
        best.append(chosen)
    for option in best:
        option.score = _score(option, req.preference, req.machine)
    best.sort(key=lambda o: (not o.fits, -o.score if o.fits else o.overshoot))
    return best
