"""Quality reports: checked against an independent computation, and through a job."""

from __future__ import annotations

import ctypes
import pathlib

import llama_cpp
import numpy as np
import pytest
from conftest import Models, wait_for_job

from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.quality.evaluate import default_embedding_set, default_eval_text, evaluate_causal
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


def independent_kld(reference: pathlib.Path, quantized: pathlib.Path, tokens: list[int]) -> tuple[float, float]:
    """Mean KLD and top-1 agreement over all positions but the first half, computed directly."""

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
    return float((np.exp(p) * (p - q)).sum(axis=1).mean()), float((p.argmax(1) == q.argmax(1)).mean())


def test_matches_an_independent_computation(models: Models, quantized: dict[str, pathlib.Path]) -> None:
    llm = llama_cpp.Llama(model_path=str(models.f16), n_ctx=64, verbose=False)
    text = default_eval_text()
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[:128]
    tokens = [llm.token_bos(), *tokens[1:]]
    del llm
    expected_kld, expected_top1 = independent_kld(models.f16, quantized["Q4_K_M"], tokens)
    # one chunk of 128 tokens: the same positions the evaluator scores
    piece = (
        llama_cpp.Llama(model_path=str(models.f16), n_ctx=64, verbose=False)
        .detokenize(tokens[1:])
        .decode(errors="ignore")
    )
    report = evaluate_causal(models.f16, quantized["Q4_K_M"], piece, n_ctx=128, max_chunks=1)
    assert report.items_evaluated == 63
    assert report.mean_kl_divergence == pytest.approx(expected_kld, rel=1e-3)
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
