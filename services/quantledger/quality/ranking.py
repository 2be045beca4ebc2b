"""Ranking metrics of one query's scored candidates: pure numpy, no model (docs/QUALITY.md uses them).

Every function takes the scores a model gave a query's candidates (higher is better) and what is known
of their relevance, aligned index by index. The ranking is the candidates by descending score; equal
scores keep the candidates' order in the input (a stable sort), so callers shuffle candidates that could
tie (the shipped rank set is shuffled). ``k`` larger than the candidates counts them all.

- ``dcg_at_k``: Σ over the first k ranks i (from 1) of gain_i / log2(i + 1), the gain taken as is
  (Järvelin and Kekäläinen's linear gain, not 2^gain - 1).
- ``ndcg_at_k``: DCG@k of the ranking over DCG@k of the candidates sorted by gain; 0 when no candidate
  has a gain (nothing to find).
- ``precision_at_k``: relevant candidates among the first k, over k.
- ``recall_at_k``: relevant candidates among the first k, over all relevant ones; 0 when none is.
- ``average_precision``: the mean, over the relevant candidates, of the precision at the rank of each
  (the whole ranking, no cut-off); 0 when none is relevant. MAP is its mean over queries.
- ``reciprocal_rank_at_k``: 1 / rank of the first relevant candidate when it is within the first k, else 0.
  MRR@k is its mean over queries.
- ``kendall_tau_b``: rank agreement of two score lists of the same candidates, (concordant - discordant)
  pairs over √((pairs - ties in a)(pairs - ties in b)), from -1 (reversed) to 1 (same order); a pair tied
  in both lists counts in neither. When either list is all ties the order is undefined: 1 if both are,
  else 0.
- ``reference_gains``: a reference model's scores as graded relevance, scaled to 0..1 within the query
  (its best candidate 1, its worst 0; all 1 when it scores every candidate the same), so a swap of two
  candidates the reference scores alike costs little and a swap of its best and worst costs most.
- ``top_n``: the first n candidates of a ranking, as a relevance mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Scores = Sequence[float] | npt.NDArray[np.floating]
Relevance = Sequence[float] | Sequence[bool] | npt.NDArray[np.generic]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _vector(values: Scores | Relevance, name: str) -> FloatArray:
    array: FloatArray = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one score per candidate")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds a value that is not finite")
    return array


def _pair(scores: Scores, relevance: Relevance) -> tuple[FloatArray, FloatArray]:
    s, r = _vector(scores, "scores"), _vector(relevance, "relevance")
    if s.shape != r.shape:
        raise ValueError(f"{s.size} scores for {r.size} relevance values")
    if np.any(r < 0):
        raise ValueError("relevance must not be negative")
    return s, r


def ranking(scores: Scores) -> npt.NDArray[np.intp]:
    """Candidate indices, best score first; equal scores in input order."""
    order: npt.NDArray[np.intp] = np.argsort(-_vector(scores, "scores"), kind="stable")
    return order


def dcg_at_k(gains_in_rank_order: Relevance, k: int) -> float:
    """Discounted cumulative gain of the first ``k`` gains, given best rank first."""
    gains = _vector(gains_in_rank_order, "gains")[: max(k, 0)]
    return float((gains / np.log2(np.arange(2, gains.size + 2))).sum())


def ndcg_at_k(scores: Scores, gains: Relevance, k: int) -> float:
    """Normalized DCG@k of ranking by ``scores`` with graded ``gains``."""
    s, g = _pair(scores, gains)
    ideal = dcg_at_k(np.sort(g)[::-1], k)
    return dcg_at_k(g[ranking(s)], k) / ideal if ideal > 0 else 0.0


def _relevant(relevance: Relevance) -> BoolArray:
    mask: BoolArray = np.asarray(relevance, dtype=np.float64) > 0
    return mask


def precision_at_k(scores: Scores, relevant: Relevance, k: int) -> float:
    """Share of the first ``k`` (at most every candidate) that are relevant (relevance > 0)."""
    s, r = _pair(scores, relevant)
    top = min(k, s.size)
    return float(_relevant(r)[ranking(s)[:top]].sum() / top) if top > 0 else 0.0


def recall_at_k(scores: Scores, relevant: Relevance, k: int) -> float:
    """Share of the relevant candidates found in the first ``k``."""
    s, r = _pair(scores, relevant)
    mask = _relevant(r)
    total = int(mask.sum())
    return float(mask[ranking(s)[: max(k, 0)]].sum() / total) if total else 0.0


def average_precision(scores: Scores, relevant: Relevance) -> float:
    """Mean of the precision at each relevant candidate's rank."""
    s, r = _pair(scores, relevant)
    hits = _relevant(r)[ranking(s)]
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant candidates
    return float((np.arange(1, ranks.size + 1) / ranks).mean())


def reciprocal_rank_at_k(scores: Scores, relevant: Relevance, k: int) -> float:
    """1 / rank of the first relevant candidate within the first ``k``, else 0."""
    s, r = _pair(scores, relevant)
    hits = np.flatnonzero(_relevant(r)[ranking(s)[: max(k, 0)]])
    return 1.0 / float(hits[0] + 1) if hits.size else 0.0


def kendall_tau_b(a: Scores, b: Scores) -> float:
    """Kendall's tau-b of two score lists of the same candidates (see the module docstring for ties)."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} scores against {y.size}")
    upper = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    untied_x, untied_y = int(np.count_nonzero(dx)), int(np.count_nonzero(dy))
    if untied_x == 0 or untied_y == 0:
        return 1.0 if untied_x == untied_y else 0.0
    return float((dx * dy).sum() / np.sqrt(untied_x * untied_y))


def reference_gains(reference_scores: Scores) -> FloatArray:
    """A reference's scores of one query as gains in 0..1 (min-max within the query)."""
    s = _vector(reference_scores, "reference_scores")
    low, high = (float(s.min()), float(s.max())) if s.size else (0.0, 0.0)
    if high <= low:
        return np.ones_like(s)
    gains: FloatArray = (s - low) / (high - low)
    return gains


def top_n(scores: Scores, n: int) -> BoolArray:
    """The first ``n`` candidates of the ranking by ``scores``, as a mask over the candidates."""
    s = _vector(scores, "scores")
    mask: BoolArray = np.zeros(s.size, dtype=bool)
    mask[ranking(s)[: max(n, 0)]] = True
    return mask
