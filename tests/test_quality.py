"""Quality reports: checked against an independent computation, and through a job."""

from __future__ import annotations

import ctypes
import pathlib

import llama_cpp
import numpy as np
import pytest
from conftest import Models, wait_for_job

from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.quality.evaluate import default_embedding_set, default_eval_text, evaluate_causal, load_reference
from quantledger.v1 import quantize_service_pb2 as pb


def quantize(source: pathlib.Path, out: pathlib.Path, ftype: int) -> pathlib.Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


@pytest.fixture(scope="module")
def quantized(models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("quality")
    return {
        "Q8_0": quantize(models.f16, root / "q8.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
        "Q4_K_M": quantize(models.f16, root / "q4km.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),
        "Q2_K": quantize(models.f16, root / "q2k.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K),
    }


def test_a_model_against_itself_costs_nothing(models: Models) -> None:
    report = evaluate_causal(models.f16, models.f16, default_eval_text())
    assert report.mean_kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert report.top1_agreement == 1.0 and report.perplexity_delta == pytest.approx(0.0, abs=1e-12)
    assert report.items_evaluated >= 500


def test_fewer_bits_cost_more(models: Models, quantized: dict[str, pathlib.Path]) -> None:
    text = default_eval_text()
    klds = {name: evaluate_causal(models.f16, path, text).mean_kl_divergence for name, path in quantized.items()}
    assert 0 < klds["Q8_0"] < klds["Q4_K_M"] < klds["Q2_K"]


def independent_kld(reference: pathlib.Path, quantized: pathlib.Path, tokens: list[int]) -> tuple[np.ndarray, float]:
    """Per-position KLD and top-1 agreement over all positions but the first half, computed directly."""

    def log_probs(path: pathlib.Path) -> np.ndarray:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=len(tokens), n_batch=len(tokens), logits_all=True, verbose=False
        )
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        del llm
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    p, q = log_probs(reference), log_probs(quantized)
    half = len(tokens) // 2
    p, q = p[half : len(tokens) - 1], q[half : len(tokens) - 1]
    return (np.exp(p) * (p - q)).sum(axis=1), float((p.argmax(1) == q.argmax(1)).mean())


def test_matches_an_independent_computation(models: Models, quantized: dict[str, pathlib.Path]) -> None:
    llm = llama_cpp.Llama(model_path=str(models.f16), n_ctx=64, verbose=False)
    text = default_eval_text()
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[:128]
    tokens = [llm.token_bos(), *tokens[1:]]
    del llm
    per_position, expected_top1 = independent_kld(models.f16, quantized["Q4_K_M"], tokens)
    # one chunk of 128 tokens: the same positions the evaluator scores
    piece = (
        llama_cpp.Llama(model_path=str(models.f16), n_ctx=64, verbose=False)
        .detokenize(tokens[1:])
        .decode(errors="ignore")
    )
    report = evaluate_causal(models.f16, quantized["Q4_K_M"], piece, n_ctx=128, max_chunks=1)
    assert report.items_evaluated == 63
    assert report.mean_kl_divergence == pytest.approx(per_position.mean(), rel=1e-3)
    expected_error = per_position.std(ddof=1) / np.sqrt(per_position.size)
    assert report.kl_divergence_stderr == pytest.approx(expected_error, rel=1e-2)
    assert report.top1_agreement == pytest.approx(expected_top1, abs=0.02)


def test_bad_input(models: Models) -> None:
    with pytest.raises(SourceNotFound):
        evaluate_causal(models.root / "missing.gguf", models.f16, default_eval_text())
    with pytest.raises(InvalidArgument, match="at least 256"):
        evaluate_causal(models.f16, models.f16, "too short")


def test_shipped_data_is_there() -> None:
    corpus, queries = default_embedding_set()
    assert len(corpus) >= 40 and len(queries) >= 12
    assert len(default_eval_text().split()) >= 1000


def test_jobs_report_quality_and_enforce_the_gate(stub, models: Models) -> None:
    job = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=["Q8_0", "Q2_K"],
        options=pb.QuantizeOptions(output_dir=str(models.root / "q-job")),
    )
    final = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    q8, q2 = final.outputs
    assert q8.quality.kind == "causal" and q8.quality.eval_set.startswith("quantledger-eval-text:")
    assert 0 < q8.quality.mean_kl_divergence < q2.quality.mean_kl_divergence
    assert q8.quality.top1_agreement > q2.quality.top1_agreement
    gated = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=["Q8_0", "Q2_K"],
        options=pb.QuantizeOptions(
            output_dir=str(models.root / "q-gate"),
            max_kl_divergence=(q8.quality.mean_kl_divergence + q2.quality.mean_kl_divergence) / 2,
        ),
    )
    failed = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=gated)).name)
    assert failed.state == pb.QuantizeJob.STATE_FAILED
    from conftest import job_error_reason

    assert job_error_reason(failed) == "QUALITY_GATE_FAILED" and "Q2_K" in failed.error.message
    assert len(failed.outputs) == 2 and all(pathlib.Path(o.path).is_file() for o in failed.outputs)  # kept


def test_the_reference_read_once_scores_every_output_the_same(
    models: Models, quantized: dict[str, pathlib.Path], tmp_path
) -> None:
    """The unquantized model reads the text once (kept in a folder); each output's report against that
    read is the report of a fresh evaluation, to the bit."""
    text = default_eval_text()
    kept = load_reference(models.f16, text, tmp_path)
    for path in quantized.values():
        fresh = evaluate_causal(models.f16, path, text)
        again = evaluate_causal(models.f16, path, text, reference=kept)
        assert again == fresh and fresh.kl_divergence_stderr > 0


def test_evaluating_counts_tokens_of_one_reference_pass_and_one_pass_per_output(stub, models: Models) -> None:
    job = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=["Q8_0", "Q4_0", "Q2_K"],
        options=pb.QuantizeOptions(output_dir=str(models.root / "q-passes")),
    )
    created = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))
    seen = []
    for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=created.name), timeout=300):
        if snapshot.stage == pb.QuantizeJob.STAGE_EVALUATING and snapshot.progress.stage_total:
            seen.append((snapshot.progress.stage_done, snapshot.progress.stage_total, snapshot.progress.stage_unit))
        last = snapshot
    assert last.state == pb.QuantizeJob.STATE_SUCCEEDED, last.error
    vocab = llama_cpp.Llama(model_path=str(models.f16), vocab_only=True, verbose=False)
    n_chunks = min(64, len(vocab.tokenize(default_eval_text().encode(), add_bos=False, special=False)) // 256)
    tokens = n_chunks * 256  # the chunks of 256 tokens of the shipped text the evaluator may read, at most 64
    assert {total for _, total, _ in seen} == {4 * tokens} and {unit for _, _, unit in seen} == {"tokens"}
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and len(set(done)) > 4
    for output in last.outputs:  # read until the mean is known to 5% of itself, or the text ends
        q = output.quality
        assert q.kl_divergence_stderr > 0 and q.items_evaluated % 127 == 0, q  # whole chunks of 127 scored
        assert q.kl_divergence_stderr <= 0.05 * q.mean_kl_divergence or q.items_evaluated == n_chunks * 127, q
