"""The recommender: a request in, ranked options with reasons out. No grpc here.

Model profiles (per-tensor types and exact bytes of every mix) are cached by model reference, so a
request for a known model is arithmetic only. Whole answers are cached too, keyed by the request and
by the version of the deployment's measured quality, so they stay true when a job finishes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from quantledger.errors import InvalidArgument
from quantledger.jobs.model import MAX_NAME_LENGTH, MAX_PATH_LENGTH, check_text
from quantledger.recommend.explain import explain
from quantledger.recommend.hardware import GIB, Device, Machine, tier_machine, with_overrides
from quantledger.recommend.hf_formats import HfFormatFit, rate
from quantledger.recommend.memory import KV_TYPE_BYTES, is_quantized_kv
from quantledger.recommend.mixes import is_known_mix
from quantledger.recommend.models import ModelRef, ModelResolver
from quantledger.recommend.profile import ModelProfile, build_profile
from quantledger.recommend.search import Option, Preference, Request, search

DEFAULT_MAX_CONTEXT = 32768
MAX_CONTEXT = 1 << 24
# types made for ternary or binary-trained models (BitNet), never a choice for a float-trained one
_SPECIAL_TYPES = frozenset({"TQ1_0", "TQ2_0", "Q1_0", "Q2_0"})


@dataclass(frozen=True)
class HardwareSpec:
    tier: str = ""
    ram_bytes: int = 0
    cores: int = 0
    devices: tuple[Device, ...] = ()
    unified_memory: bool = False
    cpu_bandwidth: float = 0.0
    cpu_only: bool = False

    def machine(self) -> Machine:
        if any(not device.kind for device in self.devices):
            raise InvalidArgument("every device needs a kind: cuda or metal", field="devices")
        if self.ram_bytes < 0 or self.cores < 0:
            raise InvalidArgument("memory and core counts must not be negative")
        if self.tier:
            base = tier_machine(self.tier)
            gpus = self.devices or base.gpus
            machine = with_overrides(
                base,
                ram_bytes=self.ram_bytes,
                cores=self.cores,
                gpus=gpus,
                unified=self.unified_memory or base.unified_memory,
            )
        else:
            if not self.ram_bytes:
                raise InvalidArgument("give the system RAM (ram_bytes) or a tier")
            machine = Machine(self.ram_bytes, self.cores or 8, self.devices, self.unified_memory)
        if self.cpu_bandwidth:
            machine = dataclasses.replace(machine, cpu_bandwidth=self.cpu_bandwidth)
        if self.cpu_only:
            machine = dataclasses.replace(machine, gpus=())
        machine.check()
        return machine


@dataclass(frozen=True)
class RecommendQuery:
    model: ModelRef
    hardware: HardwareSpec
    context_length: int | None = None  # None = the model's training context, at most DEFAULT_MAX_CONTEXT
    batch_size: int = 0
    kv_cache_type: str = ""
    preference: Preference = Preference.BALANCED
    max_size_bytes: int = 0
    max_kl_divergence: float = 0.0
    imatrix: bool = False
    max_options: int = 0
    disable_flash_attention: bool = False
    full_swa_cache: bool = False
    hf_formats: bool = False  # also rate the Hugging Face formats under transformers (recommend/hf_formats.py)

    def check_bounds(self) -> None:
        """Refuse a query by its size alone, before any model is looked at (INVALID_ARGUMENT); the same
        bounds as a quantize job's (jobs/model.py, docs/SECURITY.md "Request limits")."""
        model, hardware = self.model, self.hardware
        for name in ("gguf_path", "hf_folder", "hf_repo", "registry_file"):
            check_text(name, getattr(model, name), MAX_PATH_LENGTH)
        check_text("family", model.family, MAX_NAME_LENGTH)
        if model.hyperparameters is not None:
            check_text("architecture", model.hyperparameters.architecture, MAX_NAME_LENGTH)
        check_text("kv_cache_type", self.kv_cache_type, MAX_NAME_LENGTH)
        check_text("tier", hardware.tier, MAX_NAME_LENGTH)
        if len(hardware.devices) > MAX_DEVICES:
            raise InvalidArgument(f"at most {MAX_DEVICES} devices per query", field="devices")
        for device in hardware.devices:
            check_text("devices.name", device.name, MAX_DEVICE_NAME_LENGTH)


MAX_DEVICES = 64  # GPUs of one machine; an 8-GPU server is the common top
MAX_DEVICE_NAME_LENGTH = 256


@dataclass
class Recommendation:
    options: list[Option]
    model_summary: str
    hardware_summary: str
    parameter_count: int
    exact_sizes: bool
    any_fits: bool
    hf_formats: list[HfFormatFit] = field(default_factory=list)


@dataclass
class _QualityIndex:
    """Measured KL divergence per (architecture, parameter count), per type, from finished jobs."""

    by_model: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    version: int = 0
    loaded_at: float = 0.0
    marker: object = None


@dataclass(frozen=True)
class Prepared:
    query: RecommendQuery
    machine: Machine
    kv: str
    index: _QualityIndex
    key: tuple[object, ...]
    answer: Recommendation | None


class Recommender:
    """Answers Recommend requests; thread-safe."""

    def __init__(
        self,
        roots: Sequence[pathlib.Path],
        quant_types: Sequence[tuple[str, int]],
        *,
        find_artifact: Callable[[str], str | None] = lambda _digest: None,
        measured_quality: Callable[[], dict[tuple[str, int], dict[str, float]]] = dict,
        quality_marker: Callable[[], object] | None = None,
        profile_cache_size: int = 32,
        answer_cache_size: int = 4096,
        quality_refresh_seconds: float = 5.0,
    ) -> None:
        """``measured_quality`` is read again when ``quality_marker`` (cheap, asked on every request) changes
        its answer, or without a marker every ``quality_refresh_seconds``."""
        self._resolver = ModelResolver(roots, find_artifact)
        self._types = tuple((name, ft) for name, ft in quant_types if is_known_mix(name) and name != "F32")
        self._measured = measured_quality
        self._marker = quality_marker
        self._lock = threading.Lock()
        self._profiles: collections.OrderedDict[tuple[str, bool], ModelProfile] = collections.OrderedDict()
        self._answers: collections.OrderedDict[tuple[object, ...], Recommendation] = collections.OrderedDict()
        self._profile_cache_size = profile_cache_size
        self._answer_cache_size = answer_cache_size
        self._quality = _QualityIndex()
        self._quality_refresh = quality_refresh_seconds

    def _profile(self, ref: ModelRef, imatrix: bool) -> ModelProfile:
        key = (self._resolver.key(ref), imatrix)
        with self._lock:
            cached = self._profiles.get(key)
            if cached is not None:
                self._profiles.move_to_end(key)
                return cached
        shape = self._resolver.resolve(ref)
        special_ok = shape.architecture.startswith("bitnet")
        types = [
            (name, ft)
            for name, ft in self._types
            if (name not in _SPECIAL_TYPES or special_ok) and (name != "MXFP4_MOE" or shape.n_expert > 1)
        ]
        profile = build_profile(shape, types, imatrix)
        with self._lock:
            self._profiles[key] = profile
            while len(self._profiles) > self._profile_cache_size:
                self._profiles.popitem(last=False)
        return profile

    def _quality_index(self) -> _QualityIndex:
        now = time.monotonic()
        marker = self._marker() if self._marker is not None else None
        with self._lock:
            current = self._quality
            fresh = (
                marker == current.marker
                if self._marker is not None
                else now - current.loaded_at < self._quality_refresh
            )
            if fresh and current.loaded_at:
                return current
        measured = self._measured()
        with self._lock:
            version = self._quality.version + (measured != self._quality.by_model)
            self._quality = _QualityIndex(measured, version, now, marker)
            return self._quality

    def recommend(self, query: RecommendQuery) -> Recommendation:
        """The answer to ``query``: from the cache, or computed (reads model headers on a cache miss)."""
        prepared = self.prepare(query)
        return prepared.answer if prepared.answer is not None else self.complete(prepared)

    async def answer(self, query: RecommendQuery) -> Recommendation:
        """``recommend`` for an event loop: a cached answer or a loaded model is arithmetic (about a
        millisecond) and runs inline; reading model headers or config files runs in a thread."""
        prepared = self.prepare(query)
        if prepared.answer is not None:
            return prepared.answer
        if self.model_is_loaded(prepared):
            return self.complete(prepared)
        return await asyncio.to_thread(self.complete, prepared)

    def prepare(self, query: RecommendQuery) -> Prepared:
        """Check ``query`` and look its answer up; cheap (no model is read), so callers may run it inline."""
        query.check_bounds()
        machine = query.hardware.machine()
        if query.context_length is not None and not 0 < query.context_length <= MAX_CONTEXT:
            raise InvalidArgument(
                f"the context length must be 1..{MAX_CONTEXT} tokens (leave it unset for the "
                f"model's own), not {query.context_length}",
                field="context_length",
            )
        if query.batch_size < 0 or query.max_options < 0 or query.max_size_bytes < 0:
            raise InvalidArgument("batch_size, max_options and max_size_bytes must not be negative")
        if query.max_kl_divergence < 0:
            raise InvalidArgument("max_kl_divergence must not be negative")
        kv = query.kv_cache_type.strip().lower()
        if kv and kv not in KV_TYPE_BYTES:
            raise InvalidArgument(f"unknown KV cache type {query.kv_cache_type!r}; known: {', '.join(KV_TYPE_BYTES)}")
        if kv and is_quantized_kv(kv) and query.disable_flash_attention:
            raise InvalidArgument(f"a {kv} KV cache needs flash attention: llama.cpp refuses it without")
        index = self._quality_index()
        key = (self._resolver.key(query.model), query, machine, index.version)
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
        return Prepared(query, machine, kv, index, key, answer)

    def model_is_loaded(self, prepared: Prepared) -> bool:
        """Whether completing ``prepared`` is arithmetic only (its model's profile is cached)."""
        with self._lock:
            return (prepared.key[0], prepared.query.imatrix) in self._profiles

    def complete(self, prepared: Prepared) -> Recommendation:
        """Compute a prepared query's answer and cache it."""
        answer = self._compute(prepared.query, prepared.machine, prepared.kv, prepared.index)
        with self._lock:
            self._answers[prepared.key] = answer
            while len(self._answers) > self._answer_cache_size:
                self._answers.popitem(last=False)
        return answer

    def _compute(self, query: RecommendQuery, machine: Machine, kv: str, index: _QualityIndex) -> Recommendation:
        profile = self._profile(query.model, query.imatrix)
        shape = profile.shape
        n_ctx = query.context_length or min(shape.context_length or 4096, DEFAULT_MAX_CONTEXT)
        request = Request(
            machine=machine,
            n_ctx=n_ctx,
            n_ubatch=query.batch_size or 512,
            kv_types=(kv,) if kv else ("f16", "q8_0"),
            flash_attention=not query.disable_flash_attention,
            swa_full=query.full_swa_cache,
            preference=query.preference,
            max_size_bytes=query.max_size_bytes,
            max_kl_divergence=query.max_kl_divergence,
            has_imatrix=query.imatrix,
            measured_kld=index.by_model.get((shape.architecture, shape.n_parameters), {}),
        )
        ranking = search(profile, request)
        shown = ranking.options(query.max_options or 5)
        explain(shown, ranking, profile, request)
        params = shape.n_parameters
        origin = {
            "gguf": "GGUF header",
            "hf-folder": "safetensors headers",
            "hf-config": "config.json",
            "hyperparameters": "hyper-parameters",
            "description": "description",
        }[shape.origin]
        return Recommendation(
            options=shown,
            model_summary=f"{shape.name}: {shape.architecture}, {shape.n_layer} layers, {params / 1e9:.2f}B "
            f"parameters, trained for {shape.context_length} tokens (from its {origin})",
            hardware_summary=machine.describe(),
            parameter_count=params,
            exact_sizes=shape.exact,
            any_fits=bool(shown) and shown[0].fits,
            hf_formats=rate(shape, machine, n_ctx, query.imatrix) if query.hf_formats else [],
        )


def parse_bytes(text: str) -> int:
    """'8G', '24GiB', '512M', '1.5T' or a plain number of bytes (binary units)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": GIB, "T": 1 << 40}
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(float(raw))
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not a size: write it as 8G, 512M or bytes") from exc
