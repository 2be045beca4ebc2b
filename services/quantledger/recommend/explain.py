"""Reasons in plain words for each option, and what the next better option would cost."""

from __future__ import annotations

from quantledger.recommend.hardware import GIB
from quantledger.recommend.profile import ModelProfile
from quantledger.recommend.search import Option, Preference, Ranking, Request

_SOURCES = {
    "published": "llama.cpp's published KL divergence for Llama-3-8B",
    "scaled": "llama.cpp's published KL divergence for Llama-3-8B, scaled to {params} and this KV cache",
    "interpolated": "interpolated from {bpw:.2f} bits per weight on llama.cpp's published curve, scaled to {params}",
    "estimated": "a rule-of-thumb estimate (no published figure for this case), scaled to {params}",
    "measured": "measured by this deployment's quality report of the same model",
}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _placement(option: Option) -> str:
    gpus = [d for d in option.devices if d.device != "cpu"]
    blocks = option.total_layers - 1
    if not gpus or option.gpu_layers == 0:
        return f"runs on the CPU: all {blocks} blocks in RAM"
    names = " and ".join(d.device for d in gpus)
    if option.gpu_layers == option.total_layers:
        return f"all {option.total_layers} layers on {names}"
    on_cpu = option.total_layers - option.gpu_layers
    return (
        f"{option.gpu_layers} of {option.total_layers} layers on {names}, {on_cpu} blocks in RAM "
        "(the CPU part sets the decode speed)"
    )


def _memory(option: Option) -> str:
    parts = [
        f"{_gib(d.bytes_used)} of {_gib(d.bytes_available)} {'in RAM' if d.device == 'cpu' else 'on ' + d.device}"
        for d in option.devices
        if d.bytes_used or d.device == "cpu"
    ]
    return "uses " + ", ".join(parts)


def _quality(option: Option, profile: ModelProfile) -> str:
    q = option.quality
    params = profile.shape.n_parameters
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    source = _SOURCES[q.source].format(params=f"{size} parameters", bpw=option.bits_per_weight)
    change = f"+{100 * q.perplexity_change:.1f}%"
    return f"predicted perplexity {change} (mean KL divergence {q.mean_kl_divergence:.4f}, {source})"


def _compare(option: Option, better: Option) -> str:
    name = better.quant_type
    if not better.fits:
        why = better.problems[0] if better.problems else "it does not fit"
        return f"next better: {name} does not fit ({why})"
    slower = 1 - better.tokens_per_second / option.tokens_per_second
    speed = f"about {100 * slower:.0f}% slower" if slower > 0.005 else "as fast"
    layers = option.gpu_layers - better.gpu_layers
    if layers > 0:
        return f"next better: {name} needs {layers} more layer{'s' if layers > 1 else ''} on the CPU: {speed}"
    if better.n_ctx < option.n_ctx:
        return f"next better: {name} only fits {better.n_ctx} tokens of context"
    larger = better.size_bytes / option.size_bytes - 1
    return f"next better: {name} is {100 * larger:.0f}% larger and {speed}"


def explain(shown: list[Option], ranking: Ranking, profile: ModelProfile, req: Request) -> None:
    """Fill ``reasons`` of the options ``shown`` (in place), comparing with every type of ``ranking``."""
    for option in shown:
        reasons = []
        if option.fits:
            reasons.append(_placement(option))
        reasons.extend(option.problems)
        reasons.append(_memory(option))
        reasons.append(_quality(option, profile))
        reasons.append(f"{option.tokens_per_second:.1f} tokens/s predicted decode speed")
        if option.n_ctx < req.n_ctx:
            reasons.append(f"fits only with {option.n_ctx} tokens of context ({req.n_ctx} asked)")
        if option.kv_type != "f16":
            reasons.append(f"{option.kv_type} KV cache: {_gib(option.kv_bytes)} at {option.n_ctx} tokens")
        if option.needs_imatrix:
            reasons.append("needs an importance matrix when quantizing")
        if option.fits:
            better = ranking.next_better(option)
            if better is not None:
                reasons.append(_compare(option, better))
            elif req.preference is not Preference.QUALITY:
                reasons.append("no type of better quality exists")
        option.reasons = reasons
