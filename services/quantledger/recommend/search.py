"""The joint search: quantization type x KV cache type x context x GPU layers under RAM and VRAM.

For one context setting every type is evaluated at once (numpy over the rows of ``TypeArrays``): the
largest number of GPU layers the devices hold (offloading goes output layer first, then blocks from
the last, so the bytes on the GPUs for g layers are the output layer plus the suffix sums of the last
g - 1 blocks and their KV), then what stays in RAM, the decode speed and the quality. Each type keeps
its best KV cache type for the preference; a type that does not fit for lack of memory is tried at
shorter contexts (halving, down to 2,048 tokens).

Decode speed is memory-bound: tokens/s ~ 1 / (t0 + sum over devices of bytes read per token /
(efficiency x bandwidth)), where a token reads the weights it uses and half the KV cache.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

import numpy as np

from quantledger.errors import InvalidArgument
from quantledger.recommend import quality
from quantledger.recommend.hardware import GIB, GPU_MARGIN, GPU_RESERVE, RAM_RESERVE, Machine
from quantledger.recommend.memory import ContextSettings, is_quantized_kv
from quantledger.recommend.profile import CacheTable, Floats, Ints, ModelProfile, TypeProfile

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


@dataclass(frozen=True)
class _Budget:
    """What one request's machine offers."""

    usable_ram: int
    cpu_bandwidth: float
    gpu_bandwidth: float
    gpu_memory: tuple[int, ...]
    gpu_names: tuple[str, ...]
    unified: bool
    gpu_capacity: int  # what the GPUs hold for weights and KV before their compute buffers
    gpu_total: int

    @classmethod
    def of(cls, machine: Machine) -> _Budget:
        gpus = machine.gpus
        return cls(
            usable_ram=machine.usable_ram(),
            cpu_bandwidth=machine.effective_cpu_bandwidth(),
            gpu_bandwidth=min((g.effective_bandwidth() for g in gpus), default=1.0),
            gpu_memory=tuple(g.memory_bytes for g in gpus),
            gpu_names=tuple(f"{g.kind}:{i}" for i, g in enumerate(gpus)),
            unified=machine.unified_memory and bool(gpus),
            gpu_capacity=sum(g.memory_bytes - GPU_RESERVE - GPU_MARGIN for g in gpus),
            gpu_total=sum(g.memory_bytes for g in gpus) or 1,
        )


@dataclass(frozen=True)
class _Fits:
    """Every type at every context setting: arrays of (settings, types)."""

    caches: list[CacheTable]
    gpu_layers: Ints
    cpu_bytes: Ints
    gpu_weights_kv: Ints  # weights and KV on the GPUs (without compute buffers and reserves)
    memory_total: Ints  # what the memory limit applies to: RAM, or RAM and GPU when unified
    overshoot: Floats  # > 0: over the memory limit by this fraction
    tokens_per_second: Floats
    kld: Floats
    fits: np.ndarray  # memory and the request's constraints
    score: Floats


def _score(kld: Floats, speed: Floats, size: Ints, fill: Floats, preference: Preference) -> Floats:
    """Higher is better; only compares configurations that fit."""
    kld = np.maximum(kld, 1e-6)
    acceptable = kld <= ACCEPTABLE_KLD
    if preference is Preference.QUALITY:
        return -kld + speed * 1e-9
    if preference is Preference.SPEED:
        return np.where(acceptable, speed, speed * 1e-3)
    if preference is Preference.SIZE:
        return np.where(acceptable, -size, -size * 1e3).astype(np.float64)
    # BALANCED: perplexity points against speed, speed counting less once it is interactive,
    # and a device filled past 85 % counting against (no room for the context to grow)
    score: Floats = -100 * kld + 12 * np.log(np.minimum(speed, 30.0)) + 3 * np.log(np.maximum(speed, 30.0) / 30.0)
    crowded: Floats = 40 * np.maximum(0.0, fill - 0.85)
    return score - crowded


def _evaluate(
    profile: ModelProfile, req: Request, budget: _Budget, caches: list[CacheTable], base_kld: Floats
) -> _Fits:
    """Every type (columns) at every context setting (rows), in one pass."""
    shape, a = profile.shape, profile.arrays
    n_layer, n_gpus, n_types = shape.n_layer, len(budget.gpu_memory), len(profile.types)
    kvs = np.stack([c.kv_suffix for c in caches])  # (settings, n_layer + 1)
    compute = np.array([c.compute for c in caches], dtype=np.int64)[:, None]
    kv_total = kvs[:, -1:]
    gpu_capacity = budget.gpu_capacity - compute * n_gpus  # (settings, 1)
    if n_gpus:  # need[m, t, g - 1] for g = 1 .. n_layer + 1 grows with g
        need = a.output_layer[None, :, None] + a.block_suffix[None, :, :] + kvs[:, None, :]
        gpu_layers = (need <= gpu_capacity[:, :, None]).sum(axis=2)
    else:
        gpu_layers = np.zeros((len(caches), n_types), dtype=np.int64)
    offloaded = gpu_layers > 0
    on_gpu = np.maximum(gpu_layers - 1, 0)  # blocks on the GPUs
    types = np.arange(n_types)[None, :]
    blocks_on_gpu = a.block_suffix[types, on_gpu]
    kv_on_gpu = np.take_along_axis(kvs, on_gpu, axis=1)
    cpu_kv = kv_total - kv_on_gpu
    cpu_weights = np.where(offloaded, a.total - a.output - blocks_on_gpu, a.total)
    cpu_bytes = cpu_weights + cpu_kv + np.where(offloaded, compute // 8, compute) + shape.n_vocab * 4 + RAM_RESERVE
    gpu_weights_kv = np.where(offloaded, a.output_layer + blocks_on_gpu + kv_on_gpu, 0)
    gpu_used = np.where(offloaded, gpu_weights_kv + (compute + GPU_RESERVE) * n_gpus, 0)
    memory_total = cpu_bytes + gpu_used if budget.unified else cpu_bytes
    overshoot = np.maximum(0.0, memory_total / budget.usable_ram - 1)
    # decode speed: every weight a token uses and half the cache are read once per token
    read_on_gpu = a.read_suffix[types, on_gpu]
    cpu_read = a.read_suffix[:, -1] - read_on_gpu + cpu_kv / 2 + np.where(offloaded, 0, a.output_layer)
    seconds = 0.0005 + cpu_read / (a.efficiency * budget.cpu_bandwidth)
    gpu_read = a.output_layer + read_on_gpu + kv_on_gpu / 2
    seconds = seconds + np.where(offloaded, 0.00002 * n_layer + gpu_read / (a.efficiency * budget.gpu_bandwidth), 0)
    speed = 1.0 / seconds
    kv_cost = np.array([_KV_QUALITY_COST.get(c.ctx.kv_type, 0.0) for c in caches])[:, None]
    kld = base_kld[None, :] + kv_cost
    fits = overshoot == 0
    if req.max_size_bytes:
        fits &= a.size <= req.max_size_bytes
    if req.max_kl_divergence:
        fits &= kld <= req.max_kl_divergence
    if not req.has_imatrix:
        fits &= ~a.needs_imatrix
    fill = np.maximum(cpu_bytes / budget.usable_ram, gpu_used / budget.gpu_total)
    score = _score(kld, speed, a.size, fill, req.preference)
    return _Fits(caches, gpu_layers, cpu_bytes, gpu_weights_kv, memory_total, overshoot, speed, kld, fits, score)


@dataclass
class Ranking:
    """Every type's best configuration, best first (those that fit before those that do not).
    Options are made when asked for: a request shows a few."""

    profile: ModelProfile
    request: Request
    budget: _Budget
    order: list[int]  # type indices, best first
    fits: _Fits
    choice: Ints  # per type, the row (context setting) of ``fits`` it runs with
    predictions: list[quality.QualityPrediction]  # per type
    _made: dict[int, Option] = field(default_factory=dict)
    _by_quality: list[tuple[float, int]] = field(default_factory=list)

    def option(self, rank: int) -> Option:
        return self._option_of(self.order[rank])

    def options(self, limit: int | None = None) -> list[Option]:
        return [self.option(r) for r in range(len(self.order) if limit is None else min(limit, len(self.order)))]

    def next_better(self, option: Option) -> Option | None:
        """The type of the least better predicted quality, if any."""
        if not self._by_quality:
            self._by_quality = sorted((float(self.fits.kld[m, t]), t) for t, m in enumerate(self.choice))
        index = bisect.bisect_left(self._by_quality, (option.quality.mean_kl_divergence, -1))
        return self._option_of(self._by_quality[index - 1][1]) if index else None

    def _option_of(self, t: int) -> Option:
        if t not in self._made:
            self._made[t] = self._make(t)
        return self._made[t]

    def _make(self, t: int) -> Option:
        fits, predicted, m = self.fits, self.predictions[t], int(self.choice[t])
        profile, req, budget, cache = self.profile.types[t], self.request, self.budget, fits.caches[m]
        ctx, compute, n_layer = cache.ctx, cache.compute, self.profile.shape.n_layer
        gpu_layers, kld, overshoot = int(fits.gpu_layers[m, t]), float(fits.kld[m, t]), float(fits.overshoot[m, t])
        on_gpu = max(0, gpu_layers - 1)
        return Option(
            quant_type=profile.quant_type,
            size_bytes=profile.size_bytes,
            bits_per_weight=profile.bits_per_weight,
            n_ctx=ctx.n_ctx,
            kv_type=ctx.kv_type,
            flash_attention=ctx.flash_attention,
            gpu_layers=gpu_layers,
            total_layers=n_layer + 1,
            devices=self._devices(m, t, on_gpu),
            kv_bytes=cache.kv_total,
            compute_bytes=compute,
            tokens_per_second=float(fits.tokens_per_second[m, t]),
            quality=predicted.adjusted(kld),
            fits=bool(fits.fits[m, t]),
            needs_imatrix=profile.plan.needs_imatrix,
            problems=self._problems(profile, req, budget, int(fits.memory_total[m, t]), overshoot, kld),
        )

    def _devices(self, m: int, t: int, on_gpu: int) -> list[DeviceUse]:
        fits, budget, n_layer = self.fits, self.budget, self.profile.shape.n_layer
        devices = [DeviceUse("cpu", int(fits.cpu_bytes[m, t]), budget.usable_ram, n_layer - on_gpu)]
        for name, memory in zip(budget.gpu_names, budget.gpu_memory, strict=True):
            share = memory / budget.gpu_total
            compute = fits.caches[m].compute
            used = int(fits.gpu_weights_kv[m, t] * share) + compute + GPU_RESERVE if fits.gpu_layers[m, t] else 0
            devices.append(DeviceUse(name, used, memory, round(on_gpu * share)))
        return devices

    @staticmethod
    def _problems(
        profile: TypeProfile, req: Request, budget: _Budget, memory_total: int, overshoot: float, kld: float
    ) -> list[str]:
        problems = []
        if overshoot:
            where = "unified memory" if budget.unified else "RAM besides the GPU" if budget.gpu_memory else "RAM"
            problems.append(f"needs {memory_total / GIB:.1f} GiB of {where}, {budget.usable_ram / GIB:.1f} GiB usable")
        if req.max_size_bytes and profile.size_bytes > req.max_size_bytes:
            problems.append(f"the file ({profile.size_bytes / GIB:.2f} GiB) is over the maximum size")
        if req.max_kl_divergence and kld > req.max_kl_divergence:
            problems.append(f"KL divergence {kld:.3g} is over the maximum")
        if profile.plan.needs_imatrix and not req.has_imatrix:
            problems.append("llama.cpp needs an importance matrix for this type (pass imatrix)")
        return problems


def search(profile: ModelProfile, req: Request) -> Ranking:
    """Every type's best configuration, ranked for the preference."""
    shape = profile.shape
    if req.n_ctx <= 0:
        raise InvalidArgument(f"the context length must be positive, not {req.n_ctx}")
    kv_types = req.kv_types if shape.has_kv_cache else ("f16",)
    budget = _Budget.of(req.machine)
    predictions = [
        quality.measured(req.measured_kld[t.quant_type])
        if t.quant_type in req.measured_kld
        else profile.predicted(t, req.has_imatrix)
        for t in profile.types
    ]
    base_kld = np.array([p.mean_kl_divergence for p in predictions], dtype=np.float64)
    n_types = len(profile.types)
    contexts = [req.n_ctx]
    while contexts[-1] // 2 >= MIN_CONTEXT:
        contexts.append(contexts[-1] // 2)
    caches = [  # row m: context m // len(kv_types), KV type m % len(kv_types)
        profile.table(
            ContextSettings(n_ctx, req.n_ubatch, kv, req.flash_attention or is_quantized_kv(kv), req.swa_full)
        )
        for n_ctx in contexts
        for kv in kv_types
    ]
    fits = _evaluate(profile, req, budget, caches, base_kld)
    k = len(kv_types)
    types = np.arange(n_types)
    # per context, each type's best KV type: one that fits, then the higher score (or the smaller overshoot)
    best_rows = []
    for c in range(len(contexts)):
        best = np.full(n_types, c * k, dtype=np.int64)
        for m in range(c * k + 1, c * k + k):
            fm, fb = fits.fits[m], fits.fits[best, types]
            sm, sb, om, ob = fits.score[m], fits.score[best, types], fits.overshoot[m], fits.overshoot[best, types]
            closer = (om < ob) | ((om == ob) & (sm > sb))
            best = np.where((fm & ~fb) | ((fm == fb) & np.where(fm, sm > sb, closer)), m, best)
        best_rows.append(best)
    picked = np.stack(best_rows)  # (contexts, types)
    picked_fits = fits.fits[picked, types]
    memory_bound = (fits.overshoot.reshape(len(contexts), k, n_types) > 0).any(axis=1)
    # a type takes the first context where it fits; it stops looking where memory is not what stops it
    stops = picked_fits | ~memory_bound
    first_stop = np.where(stops.any(axis=0), stops.argmax(axis=0), 0)
    use = np.where(picked_fits[first_stop, types], first_stop, 0)
    choice = picked[use, types]

    def rank(t: int) -> tuple[bool, float]:
        m = choice[t]
        return (not fits.fits[m, t], -float(fits.score[m, t]) if fits.fits[m, t] else float(fits.overshoot[m, t]))

    return Ranking(profile, req, budget, sorted(range(n_types), key=rank), fits, choice, predictions)
