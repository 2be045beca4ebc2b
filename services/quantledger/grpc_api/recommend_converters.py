"""quantledger.v1 recommend messages <-> recommender domain objects. No rules here, only field mapping."""

from __future__ import annotations

from quantledger.errors import InvalidArgument
from quantledger.recommend.hardware import Device
from quantledger.recommend.models import ModelRef
from quantledger.recommend.quality import QualityPrediction
from quantledger.recommend.search import Option, Preference
from quantledger.recommend.service import HardwareSpec, Recommendation, RecommendQuery
from quantledger.recommend.shape import Hyperparameters
from quantledger.v1 import recommend_service_pb2 as pb

_KINDS = {pb.Device.KIND_CUDA: "cuda", pb.Device.KIND_METAL: "metal"}
_PREFERENCES = {
    pb.PREFERENCE_UNSPECIFIED: Preference.BALANCED,
    pb.PREFERENCE_BALANCED: Preference.BALANCED,
    pb.PREFERENCE_QUALITY: Preference.QUALITY,
    pb.PREFERENCE_SPEED: Preference.SPEED,
    pb.PREFERENCE_SIZE: Preference.SIZE,
}


def model_ref(spec: pb.ModelSpec) -> ModelRef:
    which = spec.WhichOneof("model")
    if which is None:
        return ModelRef()  # the recommender says how to name a model
    if which == "hyperparameters":
        h = spec.hyperparameters
        return ModelRef(
            hyperparameters=Hyperparameters.given(
                h.n_layer,
                h.n_embd,
                h.n_ff,
                h.n_head,
                h.n_head_kv,
                h.n_vocab,
                head_dim=h.head_dim,
                context_length=h.context_length,
                tied_embeddings=h.tied_embeddings,
                n_expert=h.n_expert,
                n_expert_used=h.n_expert_used,
                architecture=h.architecture,
            )
        )
    if which == "description":
        return ModelRef.described(spec.description.parameter_count, spec.description.family)
    return ModelRef(**{which: getattr(spec, which)})


def hardware_spec(hw: pb.Hardware) -> HardwareSpec:
    devices = tuple(
        Device(_KINDS.get(d.kind, ""), d.memory_bytes, d.bandwidth_bytes_per_second, d.name) for d in hw.devices
    )
    return HardwareSpec(
        tier=hw.tier,
        ram_bytes=hw.ram_bytes,
        cores=hw.cores,
        devices=devices,
        unified_memory=hw.unified_memory,
        cpu_bandwidth=hw.cpu_bandwidth_bytes_per_second,
        cpu_only=hw.cpu_only,
    )


def query_from_proto(request: pb.RecommendRequest) -> RecommendQuery:
    if request.preference not in _PREFERENCES:
        raise InvalidArgument(f"unknown preference {request.preference}", field="preference")
    return RecommendQuery(
        model=model_ref(request.model),
        hardware=hardware_spec(request.hardware),
        context_length=request.context_length if request.HasField("context_length") else None,
        batch_size=request.batch_size,
        kv_cache_type=request.kv_cache_type,
        preference=_PREFERENCES[request.preference],
        max_size_bytes=request.max_size_bytes,
        max_kl_divergence=request.max_kl_divergence,
        imatrix=request.imatrix,
        max_options=request.max_options,
        disable_flash_attention=request.disable_flash_attention,
        full_swa_cache=request.full_swa_cache,
        hf_formats=request.hf_formats,
    )


def option_to_proto(option: Option) -> pb.RecommendOption:
    q = option.quality
    return pb.RecommendOption(
        quant_type=option.quant_type,
        size_bytes=option.size_bytes,
        bits_per_weight=option.bits_per_weight,
        context_length=option.n_ctx,
        kv_cache_type=option.kv_type,
        flash_attention=option.flash_attention,
        gpu_layers=option.gpu_layers,
        total_layers=option.total_layers,
        devices=[
            pb.DeviceUsage(device=d.device, bytes_used=d.bytes_used, bytes_available=d.bytes_available, layers=d.layers)
            for d in option.devices
        ],
        kv_cache_bytes=option.kv_bytes,
        compute_buffer_bytes=option.compute_bytes,
        tokens_per_second=option.tokens_per_second,
        quality=_quality(q),
        fits=option.fits,
        needs_imatrix=option.needs_imatrix,
        reasons=option.reasons,
    )


def _quality(q: QualityPrediction) -> pb.PredictedQuality:
    return pb.PredictedQuality(
        mean_kl_divergence=q.mean_kl_divergence, perplexity_change=q.perplexity_change, source=q.source
    )


def recommendation_to_proto(answer: Recommendation) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        options=[option_to_proto(o) for o in answer.options],
        model_summary=answer.model_summary,
        hardware_summary=answer.hardware_summary,
        parameter_count=answer.parameter_count,
        exact_sizes=answer.exact_sizes,
        any_fits=answer.any_fits,
        hf_formats=[
            pb.HfFormatOption(
                format=f.format,
                weight_bytes=f.weight_bytes,
                kv_cache_bytes=f.kv_cache_bytes,
                memory_bytes=f.memory_bytes,
                device=f.device,
                bytes_available=f.bytes_available,
                fits=f.fits,
                quality=_quality(f.quality),
                note=f.note,
            )
            for f in answer.hf_formats
        ],
    )
