"""What the search needs of a model, computed once per model and kept: per mix, llama.cpp's type of
every tensor, the exact weight bytes per block and the file size (``ModelProfile``), as numpy arrays
over the types so one request evaluates every type at once; per context setting, the KV cache per
layer and the compute buffer (``CacheTable``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from quantledger.gguf.format import DEFAULT_ALIGNMENT
from quantledger.gguf.layout import predict_quantized_file_size
from quantledger.recommend import quality
from quantledger.recommend.memory import (
    ContextSettings,
    WeightLayout,
    compute_buffer_bytes,
    kv_bytes_per_layer,
    pad,
    weight_layout,
)
from quantledger.recommend.mixes import TensorPlan, plan_types, weight_bytes
from quantledger.recommend.shape import ModelShape, tensor_info_bytes

GGML_QNT_VERSION = 2
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def efficiency(quant_type: str) -> float:
    """The share of memory bandwidth llama.cpp's kernels for a type reach when decoding."""
    if quant_type.startswith(("IQ1", "IQ2", "Q2_K", "TQ", "Q1_0", "Q2_0")):
        return 0.55
    return 0.7


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


@dataclass(frozen=True)
class TypeArrays:
    """The types' numbers side by side (row t = type t), for evaluating all types in one pass."""

    block_suffix: Ints  # (types, n_layer + 1)
    read_suffix: Floats  # (types, n_layer + 1)
    output_layer: Ints  # bytes of the output layer on its device, and what a token reads of it
    output: Ints  # bytes that leave RAM with the output layer (not a tied copy)
    total: Ints
    efficiency: Floats
    size: Ints
    needs_imatrix: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, types: Sequence[TypeProfile]) -> TypeArrays:
        return cls(
            block_suffix=np.array([t.block_suffix for t in types], dtype=np.int64).reshape(len(types), -1),
            read_suffix=np.array([t.read_suffix for t in types], dtype=np.float64).reshape(len(types), -1),
            output_layer=np.array([t.layout.output_layer_bytes for t in types], dtype=np.int64),
            output=np.array([t.layout.output_bytes for t in types], dtype=np.int64),
            total=np.array([t.layout.total for t in types], dtype=np.int64),
            efficiency=np.array([efficiency(t.quant_type) for t in types], dtype=np.float64),
            size=np.array([t.size_bytes for t in types], dtype=np.int64),
            needs_imatrix=np.array([t.plan.needs_imatrix for t in types], dtype=np.bool_),
        )


@dataclass(frozen=True)
class ModelProfile:
    shape: ModelShape
    types: tuple[TypeProfile, ...]
    arrays: TypeArrays
    # what requests keep asking again: KV caches per context setting, predicted quality per type
    tables: dict[ContextSettings, CacheTable] = field(default_factory=dict, compare=False, repr=False)
    predictions: dict[tuple[str, bool], quality.QualityPrediction] = field(
        default_factory=dict, compare=False, repr=False
    )

    def table(self, settings: ContextSettings) -> CacheTable:
        found = self.tables.get(settings)
        if found is None:
            if len(self.tables) > 256:
                self.tables.clear()
            found = self.tables[settings] = cache_table(self.shape, settings)
        return found

    def predicted(self, profile: TypeProfile, has_imatrix: bool) -> quality.QualityPrediction:
        key = (profile.quant_type, has_imatrix)
        found = self.predictions.get(key)
        if found is None:
            found = quality.predict(profile.quant_type, profile.bits_per_weight, self.shape.n_parameters, has_imatrix)
            self.predictions[key] = found
        return found


def _file_size(shape: ModelShape, plan: TensorPlan, file_type: int, tensor_bytes: dict[str, int]) -> int:
    if shape.header is not None:
        values = {"general.quantization_version": GGML_QNT_VERSION, "general.file_type": file_type}
        return predict_quantized_file_size(shape.header, plan.types, values)
    meta = 24 + shape.metadata_bytes + sum(tensor_info_bytes(t.name, t.shape) for t in shape.tensors)
    return pad(meta, DEFAULT_ALIGNMENT) + sum(pad(b, DEFAULT_ALIGNMENT) for b in tensor_bytes.values())


def suffix_sums(values: Sequence[int]) -> tuple[int, ...]:
    return (0, *itertools.accumulate(reversed(values)))


@dataclass(frozen=True)
class CacheTable:
    """The KV cache and compute buffer of one context setting, shared by every type."""

    ctx: ContextSettings
    kv_suffix: Ints  # kv_suffix[k] = KV bytes of the last k layers
    compute: int

    @property
    def kv_total(self) -> int:
        return int(self.kv_suffix[-1])


def cache_table(shape: ModelShape, ctx: ContextSettings) -> CacheTable:
    kv = np.array(suffix_sums(kv_bytes_per_layer(shape, ctx)), dtype=np.int64)
    return CacheTable(ctx, kv, compute_buffer_bytes(shape, ctx))


def build_profile(shape: ModelShape, quant_types: Sequence[tuple[str, int]], has_imatrix: bool) -> ModelProfile:
    """Profiles of every (name, llama_ftype) in ``quant_types`` for ``shape``."""
    active = shape.n_expert_used / shape.n_expert if shape.n_expert > 1 and shape.n_expert_used else 1.0
    elements = shape.n_parameters
    profiles = []
    for name, file_type in quant_types:
        plan = plan_types(shape, name, has_imatrix=has_imatrix)
        sizes = weight_bytes(shape, plan)
        layout = weight_layout(shape, sizes)
        read = [0.0] * shape.n_layer
        for tensor in shape.tensors:
            if 0 <= tensor.layer < shape.n_layer:
                read[tensor.layer] += sizes[tensor.name] * (active if "_exps" in tensor.name else 1.0)
        profiles.append(
            TypeProfile(
                quant_type=name,
                file_type=file_type,
                plan=plan,
                size_bytes=_file_size(shape, plan, file_type, sizes),
                bits_per_weight=8 * sum(sizes.values()) / elements if elements else 0.0,
                layout=layout,
                block_suffix=suffix_sums(layout.block_bytes),
                read_suffix=suffix_sums([int(r) for r in read]),
            )
        )
    return ModelProfile(shape, tuple(profiles), TypeArrays.of(profiles))
