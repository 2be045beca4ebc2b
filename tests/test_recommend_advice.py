"""Recommendations for well-known questions, preferences, constraints and bad input (domain level)."""

from __future__ import annotations

import pathlib

import pytest

from quantledger.errors import InvalidArgument
from quantledger.quantize.catalogue import catalogue
from quantledger.recommend.hardware import GIB, Device
from quantledger.recommend.models import ModelRef
from quantledger.recommend.search import Preference
from quantledger.recommend.service import HardwareSpec, Recommender, RecommendQuery
from quantledger.recommend.shape import hyperparameters_from_config

# config.json of mistralai/Mistral-7B-v0.1 as published (the fields the recommender reads)
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "vocab_size": 32000, "model_type": "mistral",
}  # fmt: skip
FOUR_BIT = {"Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "IQ4_XS", "IQ4_NL"}


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    return Recommender([pathlib.Path("/nonexistent")], [(t.name, t.file_type) for t in catalogue()])


def ask(recommender: Recommender, model: ModelRef, hardware: HardwareSpec, **options: object):  # type: ignore[no-untyped-def]
    return recommender.recommend(RecommendQuery(model=model, hardware=hardware, **options))  # type: ignore[arg-type]


def cuda(gib: float) -> Device:
    return Device("cuda", int(gib * GIB))


def test_a_7b_model_on_an_8_gb_card_gets_q4_k_m_fully_offloaded(recommender: Recommender) -> None:
    model = ModelRef(hyperparameters=hyperparameters_from_config(MISTRAL_7B, "Mistral-7B-v0.1"))
    answer = ask(recommender, model, HardwareSpec(ram_bytes=32 * GIB, devices=(cuda(8),)))
    best = answer.options[0]
    assert best.quant_type == "Q4_K_M" and best.fits
    assert best.gpu_layers == best.total_layers == 33
    assert best.n_ctx == 32768  # the model's own context, which is why 5-bit types do not fit beside it
    assert any("next better" in r and "Q5" in r for r in best.reasons), best.reasons


def test_a_70b_model_on_a_24_gb_card_gets_an_iq3_type_partly_offloaded(recommender: Recommender) -> None:
    """The workstation tier: 64 GiB of dual-channel RAM (80 GB/s), 16 cores, one 24 GiB card."""
    answer = ask(
        recommender,
        ModelRef(parameter_count=70_600_000_000, family="llama"),
        HardwareSpec(tier="workstation"),
        context_length=8192,
    )
    best = answer.options[0]
    assert best.quant_type.startswith("IQ3") and best.fits
    assert 0 < best.gpu_layers < best.total_layers
    cpu, gpu = best.devices
    assert gpu.bytes_used <= gpu.bytes_available and cpu.bytes_used <= cpu.bytes_available
    assert any(f"{best.gpu_layers} of 81 layers on cuda:0" in r for r in best.reasons)


def test_an_8_gb_cpu_only_laptop_gets_a_4_bit_type(recommender: Recommender) -> None:
    answer = ask(
        recommender,
        ModelRef(parameter_count=8_030_000_000, family="llama"),
        HardwareSpec(tier="laptop", ram_bytes=8 * GIB),
        context_length=4096,
    )
    best = answer.options[0]
    assert best.quant_type in FOUR_BIT and best.fits and best.gpu_layers == 0
    assert answer.hardware_summary.startswith("8 GiB RAM")


@pytest.mark.parametrize(
    ("params", "family", "ctx"), [(13_016_000_000, "llama", 4096), (14_770_000_000, "qwen2", 8192)]
)
def test_a_16_gb_card_gets_a_5_or_6_bit_type(recommender: Recommender, params: int, family: str, ctx: int) -> None:
    answer = ask(
        recommender,
        ModelRef(parameter_count=params, family=family),
        HardwareSpec(ram_bytes=32 * GIB, devices=(cuda(16),)),
        context_length=ctx,
    )
    assert answer.options[0].quant_type in ("Q5_K_M", "Q6_K")
    assert answer.options[0].gpu_layers == answer.options[0].total_layers


def test_preferences_rank_differently(recommender: Recommender) -> None:
    model = ModelRef(parameter_count=8_030_000_000, family="llama")
    hardware = HardwareSpec(ram_bytes=32 * GIB, devices=(cuda(16),))
    best = {p: ask(recommender, model, hardware, preference=p, context_length=8192).options[0] for p in Preference}
    assert best[Preference.QUALITY].quant_type in ("F16", "BF16")  # 16 GB hold the unquantized 8B model
    assert best[Preference.SIZE].size_bytes < best[Preference.BALANCED].size_bytes
    assert best[Preference.SIZE].quality.mean_kl_divergence <= 0.12
    assert best[Preference.SPEED].tokens_per_second >= best[Preference.BALANCED].tokens_per_second


def test_constraints_on_size_and_kl_divergence(recommender: Recommender) -> None:
    model = ModelRef(parameter_count=8_030_000_000, family="llama")
    hardware = HardwareSpec(ram_bytes=64 * GIB, devices=(cuda(24),))
    small = ask(recommender, model, hardware, max_size_bytes=4 * GIB, max_options=50)
    assert all(o.size_bytes <= 4 * GIB for o in small.options if o.fits)
    assert any(not o.fits and "over the maximum size" in " ".join(o.reasons) for o in small.options)
    precise = ask(recommender, model, hardware, max_kl_divergence=0.006, preference=Preference.SPEED)
    assert precise.options[0].quality.mean_kl_divergence <= 0.006


def test_a_model_that_fits_nowhere_gets_an_answer_not_an_error(recommender: Recommender) -> None:
    answer = ask(recommender, ModelRef(parameter_count=405_000_000_000, family="llama"), HardwareSpec(tier="laptop"))
    assert not answer.any_fits and answer.options
    for option in answer.options:
        assert not option.fits
        assert any("needs" in r and "GiB" in r for r in option.reasons)


def test_a_long_context_that_does_not_fit_is_shortened_and_said_so(recommender: Recommender) -> None:
    answer = ask(
        recommender,
        ModelRef(parameter_count=8_030_000_000, family="llama"),
        HardwareSpec(ram_bytes=8 * GIB),
        context_length=131072,
        kv_cache_type="f16",
    )
    best = answer.options[0]
    assert best.fits and best.n_ctx < 131072
    assert any(f"fits only with {best.n_ctx} tokens of context (131072 asked)" in r for r in best.reasons)


def test_measured_quality_replaces_the_published_figure() -> None:
    model = ModelRef(parameter_count=8_030_000_000, family="llama")
    measured: dict[tuple[str, int], dict[str, float]] = {}
    recommender = Recommender(
        [],
        [(t.name, t.file_type) for t in catalogue()],
        measured_quality=lambda: dict(measured),
        quality_refresh_seconds=0,
    )
    # an f16 KV cache adds no quality cost of its own, so the option's KL divergence is the measured figure
    query = RecommendQuery(model=model, hardware=HardwareSpec(ram_bytes=64 * GIB), max_options=50, kv_cache_type="f16")
    first = recommender.recommend(query)
    before = {o.quant_type: o for o in first.options}
    assert before["Q4_K_M"].quality.source == "scaled"  # the table's figure, scaled for this parameter count
    measured[("llama", first.parameter_count)] = {"Q4_K_M": 0.0123}
    after = {o.quant_type: o for o in recommender.recommend(query).options}  # the cached answer is not reused
    assert after["Q4_K_M"].quality.source == "measured"
    assert after["Q4_K_M"].kv_type == "f16"
    assert after["Q4_K_M"].quality.mean_kl_divergence == pytest.approx(0.0123)
    assert after["Q8_0"].quality.source == "scaled"


@pytest.mark.parametrize(
    ("hardware", "options", "needle"),
    [
        (HardwareSpec(ram_bytes=-1), {}, "negative"),
        (HardwareSpec(ram_bytes=8 * GIB), {"context_length": 0}, "context length"),
        (HardwareSpec(ram_bytes=8 * GIB), {"context_length": -5}, "context length"),
        (HardwareSpec(tier="mainframe"), {}, "laptop, workstation, server, enterprise"),
        (HardwareSpec(), {}, "RAM"),
        (HardwareSpec(ram_bytes=8 * GIB, devices=(Device("cuda", -GIB),)), {}, "positive"),
        (HardwareSpec(ram_bytes=8 * GIB, devices=(Device("tpu", GIB),)), {}, "device kind"),
        (HardwareSpec(ram_bytes=8 * GIB), {"kv_cache_type": "q3_k"}, "KV cache type"),
        (HardwareSpec(ram_bytes=8 * GIB), {"kv_cache_type": "q4_0", "disable_flash_attention": True}, "flash"),
        (HardwareSpec(ram_bytes=8 * GIB), {"max_options": -1}, "negative"),
    ],
)
def test_bad_input_is_invalid_argument_with_a_clear_message(
    recommender: Recommender, hardware: HardwareSpec, options: dict[str, object], needle: str
) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ask(recommender, ModelRef(parameter_count=8_000_000_000), hardware, **options)


@pytest.mark.parametrize(
    "model",
    [
        ModelRef(),
        ModelRef(parameter_count=8_000_000_000, gguf_path="x.gguf"),
        ModelRef(parameter_count=5),
        ModelRef(parameter_count=8_000_000_000, family="gpt-17"),
        ModelRef(registry_file="not-a-digest"),
    ],
)
def test_bad_model_references_are_invalid_argument(recommender: Recommender, model: ModelRef) -> None:
    with pytest.raises(InvalidArgument):
        ask(recommender, model, HardwareSpec(ram_bytes=8 * GIB))


def test_quality_source_says_what_each_value_is() -> None:
    """A value is labelled published only when it is llama.cpp's table figure as is."""
    from quantledger.recommend.quality import REFERENCE_PARAMETERS, predict

    published_q4_k_m, published_q8_0 = 0.0313, 0.00136  # llama.cpp's table (Llama-3-8B, no imatrix)

    as_published = predict("Q4_K_M", 4.89, int(REFERENCE_PARAMETERS), has_imatrix=False)
    assert (as_published.source, as_published.mean_kl_divergence) == ("published", published_q4_k_m)
    q8_0 = predict("Q8_0", 8.5, int(REFERENCE_PARAMETERS), has_imatrix=False)
    assert (q8_0.source, q8_0.mean_kl_divergence) == ("published", published_q8_0)
    assert predict("Q4_K_M", 4.89, 70_000_000_000, has_imatrix=False).source == "scaled"
    # only the imatrix figure is published: without one it is raised by a rule of thumb
    assert predict("IQ4_XS", 4.46, int(REFERENCE_PARAMETERS), has_imatrix=False).source == "estimated"
    assert predict("F16", 16.0, int(REFERENCE_PARAMETERS), has_imatrix=False).source == "estimated"
    assert predict("Q5_1", 6.0, int(REFERENCE_PARAMETERS), has_imatrix=False).source == "interpolated"
    # through the recommender: a described model is never exactly Llama-3-8B, and a q8_0 KV cache adds
    # to the divergence, so nothing it says about it is "published"
    model = ModelRef(parameter_count=int(REFERENCE_PARAMETERS), family="llama")
    recommender = Recommender([], [(t.name, t.file_type) for t in catalogue()])
    for kv in ("f16", "q8_0"):
        query = RecommendQuery(model=model, hardware=HardwareSpec(ram_bytes=64 * GIB), kv_cache_type=kv, max_options=50)
        options = {o.quant_type: o for o in recommender.recommend(query).options}
        assert options["Q8_0"].quality.source == options["Q4_K_M"].quality.source == "scaled"
        assert options["F16"].quality.source == "estimated"
