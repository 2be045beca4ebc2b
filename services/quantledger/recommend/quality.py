"""Predicted quality of a quantization: mean KL divergence against the unquantized model.

Published figures (llama.cpp's KL-divergence tables for Llama-3-8B on Wikitext, reference/FACTS.md)
give the divergence per type, with and without an importance matrix. Types without a published
figure are read off the curve of log divergence against bits per weight through the published
points (legacy block types sit 1.4x above it, as Q4_0 does). Larger models are less sensitive:
the divergence scales with (8 B / parameters)^0.75, which turns Llama-3-8B's +56 % perplexity at
Q2_K into Llama-2-70B's +9 %. A deployment's own measurements (quality reports of finished jobs of
the same model) replace the prediction for the types they cover.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

REFERENCE_PARAMETERS = 8.03e9
SIZE_EXPONENT = 0.75
# (without imatrix, with imatrix); None = not published for that case
PUBLISHED_KLD: dict[str, tuple[float | None, float | None]] = {
    "Q8_0": (0.00136, 0.00136), "Q6_K": (0.00545, 0.00545), "Q5_K_M": (0.0108, 0.0108),
    "Q5_K_S": (0.0166, 0.0166), "Q4_K_M": (0.0313, 0.0282), "Q4_K_S": (0.0431, 0.0320),
    "IQ4_XS": (None, 0.0363), "Q4_0": (0.0719, None), "Q3_K_L": (0.0872, 0.0731), "Q3_K_M": (0.102, 0.0844),
    "IQ3_M": (None, 0.103), "IQ3_XXS": (None, 0.184), "Q3_K_S": (0.228, 0.200), "Q2_K": (0.445, 0.332),
    "IQ2_M": (None, 0.326), "IQ2_XXS": (None, 0.812), "IQ1_M": (None, 1.39), "IQ1_S": (None, 2.21),
}  # fmt: skip
# bits per weight of the published types on Llama-3.1-8B (the x axis of the curve)
_BPW = {"Q8_0": 8.50, "Q6_K": 6.56, "Q5_K_M": 5.70, "Q5_K_S": 5.57, "Q4_K_M": 4.89, "Q4_K_S": 4.67, "IQ4_XS": 4.46,
        "Q3_K_L": 4.27, "Q3_K_M": 4.00, "IQ3_M": 3.76, "IQ3_XXS": 3.25, "Q3_K_S": 3.64, "Q2_K": 3.16, "IQ2_M": 2.93,
        "IQ2_XXS": 2.38, "IQ1_M": 2.15, "IQ1_S": 2.00}  # fmt: skip
_FLOAT = {"F32": 0.0, "F16": 1e-5, "BF16": 6e-5}
_LEGACY = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q1_0", "Q2_0"})
# without an importance matrix a type loses about this much more (Q4_K_M 1.11x, Q3_K_M 1.21x, Q2_K 1.34x)
_NO_IMATRIX_FACTOR = 1.2


def _curve() -> tuple[list[float], list[float]]:
    points = sorted((_BPW[t], math.log(with_)) for t, (_, with_) in PUBLISHED_KLD.items() if with_ and t in _BPW)
    return [p[0] for p in points], [p[1] for p in points]


_X, _Y = _curve()


def _on_curve(bpw: float) -> float:
    """log KL divergence at ``bpw`` on the published curve, extended linearly past its ends."""
    i = bisect.bisect_left(_X, bpw)
    i = min(max(i, 1), len(_X) - 1)
    x0, x1, y0, y1 = _X[i - 1], _X[i], _Y[i - 1], _Y[i]
    return y0 + (y1 - y0) * (bpw - x0) / (x1 - x0)


def size_factor(parameters: int) -> float:
    if parameters <= 0:
        return 1.0
    factor: float = (REFERENCE_PARAMETERS / parameters) ** SIZE_EXPONENT
    return min(5.0, max(0.1, factor))


# What a predicted value is (PredictedQuality.source in the API):
PUBLISHED = "published"  # a figure of llama.cpp's table taken as is (Llama-3-8B, the same imatrix case)
SCALED = "scaled"  # a published figure adjusted: for the model's size, or for a quantized KV cache
INTERPOLATED = "interpolated"  # read off the published curve at the type's bits per weight (then scaled)
ESTIMATED = "estimated"  # a rule of thumb: float types; an imatrix-only figure raised for no imatrix
MEASURED = "measured"  # this deployment's quality reports of the same model


@dataclass(frozen=True)
class QualityPrediction:
    mean_kl_divergence: float
    perplexity_change: float  # fraction: 0.03 = +3 %
    source: str  # PUBLISHED | SCALED | INTERPOLATED | ESTIMATED | MEASURED

    def adjusted(self, kld: float) -> QualityPrediction:
        """This prediction with another divergence (a KV cache penalty): a published figure is then scaled."""
        if kld == self.mean_kl_divergence:
            return self
        return QualityPrediction(kld, math.expm1(kld), SCALED if self.source == PUBLISHED else self.source)


def predict(quant_type: str, bits_per_weight: float, parameters: int, has_imatrix: bool) -> QualityPrediction:
    """KL divergence of ``quant_type`` for a model of ``parameters`` weights, labelled by what it is."""
    if quant_type in _FLOAT:
        kld = _FLOAT[quant_type]
        return QualityPrediction(kld, math.expm1(kld), ESTIMATED)
    without, with_ = PUBLISHED_KLD.get(quant_type, (None, None))
    source = PUBLISHED
    if has_imatrix and with_ is not None:
        kld = with_
    elif not has_imatrix and without is not None:
        kld = without
    elif with_ is not None:  # only the imatrix figure is published
        kld = with_ * (1.0 if has_imatrix else _NO_IMATRIX_FACTOR)
        source = ESTIMATED
    else:
        source = INTERPOLATED
        kld = math.exp(_on_curve(bits_per_weight)) * (1.4 if quant_type in _LEGACY else 1.0)
        if not has_imatrix:
            kld *= _NO_IMATRIX_FACTOR
    factor = size_factor(parameters)
    if factor != 1.0 and source == PUBLISHED:
        source = SCALED
    return QualityPrediction(kld * factor, math.expm1(kld * factor), source)


def measured(kld: float) -> QualityPrediction:
    return QualityPrediction(kld, math.expm1(kld), MEASURED)
