"""An optional stage never loses what an earlier stage made.

A crash while evaluating (a real worker killed, as llama.cpp aborting looks from outside), or an
evaluation llama.cpp cannot do, leaves the outputs kept, hashed, listed and registered; the quality
report of each affected output says why. The job SUCCEEDED unless the client asked for a quality gate,
which then cannot be checked: FAILED (QUALITY_GATE_FAILED), the outputs kept and registered all the same.
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest
from conftest import Models, RunningServer, job_error_reason, wait_for_job
from google.rpc import error_details_pb2
from test_lifecycle import workers_of

from quantledger.testing.synthetic_model import write_llama_gguf
from quantledger.v1 import quantize_service_pb2 as pb

Job = pb.QuantizeJob


@pytest.fixture(scope="module")
def medium(models: Models) -> pathlib.Path:
    """~35 MB F16: quantizes in a second, evaluates for a few (long enough to kill its worker)."""
    path = models.root / "medium-f16.gguf"
    write_llama_gguf(path, n_embd=512, n_ff=1408, n_layer=4, n_head=8, n_head_kv=4, n_vocab=4096, seed=11)
    return path


def create(stub, source, types, **options) -> pb.QuantizeJob:
    job = Job(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def reason_of(status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def assert_kept_and_registered(job: pb.QuantizeJob) -> None:
    assert [o.quant_type for o in job.outputs] == list(job.quant_types)
    for output in job.outputs:
        path = pathlib.Path(output.path)
        assert path.is_file() and path.stat().st_size == output.size_bytes
        assert hashlib.sha256(path.read_bytes()).hexdigest() == output.sha256
        assert output.registry.state == pb.RegistryRecord.STATE_UNREGISTERED  # this server has no chain
        assert pathlib.Path(output.registry.provenance_path).is_file()
        assert output.registry.provenance_sha256


@pytest.mark.parametrize("which", ["reference", "output"])
def test_a_worker_crash_while_evaluating_keeps_and_registers_the_outputs(
    stub, server: RunningServer, models: Models, medium: pathlib.Path, which: str
) -> None:
    """Killed while the unquantized model reads the text (the pass every output is scored against), each
    output's worker reads it itself and every output is evaluated; killed while an output is scored, that
    output's report says so and the other is evaluated."""
    job = create(stub, medium, ["Q8_0", "Q4_0"], output_dir=str(models.root / f"crash-evaluating-{which}"))
    killed = []
    final = None
    for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=600):
        final = snapshot
        progress = snapshot.progress
        # three passes: the reference's, then one per output
        when = progress.stage_done > progress.stage_total / 3 if which == "output" else True
        if not killed and snapshot.stage == Job.STAGE_EVALUATING and progress.stage_total and when:
            killed = workers_of(server)  # the evaluating worker (quantization and hashing are done)
            for worker in killed:
                worker.kill()
    assert killed, "never saw the evaluation running"
    assert final is not None and final.state == Job.STATE_SUCCEEDED, final.error
    assert_kept_and_registered(final)
    crashed = [o for o in final.outputs if o.quality.HasField("error")]
    assert len(crashed) == (1 if which == "output" else 0), [o.quality.error.message for o in crashed]
    for output in crashed:
        assert reason_of(output.quality.error) == "WORKER_CRASHED"
        assert "evaluate worker died" in output.quality.error.message and output.quality.kind == ""
    for output in final.outputs:
        if output not in crashed:  # evaluated before or after the crash
            assert output.quality.kind == "causal" and output.quality.mean_kl_divergence > 0


@pytest.fixture(scope="module")
def short_text(models: Models) -> pathlib.Path:
    """Evaluation text llama.cpp cannot evaluate (fewer tokens than one chunk): every evaluation fails."""
    path = models.root / "too-short-eval.txt"
    path.write_text("far too short to evaluate")
    return path


def test_a_failed_evaluation_leaves_the_job_succeeded_with_the_reason_in_each_report(
    stub, models: Models, short_text: pathlib.Path
) -> None:
    job = create(
        stub, models.f16, ["Q8_0", "Q4_0"], output_dir=str(models.root / "eval-fails"), eval_text_path=str(short_text)
    )
    final = wait_for_job(stub, job.name)
    assert final.state == Job.STATE_SUCCEEDED, final.error
    assert_kept_and_registered(final)
    for output in final.outputs:
        assert reason_of(output.quality.error) == "INVALID_ARGUMENT"
        assert "tokens" in output.quality.error.message


def test_a_gate_that_cannot_be_checked_fails_the_job_and_still_keeps_and_registers_outputs(
    stub, models: Models, short_text: pathlib.Path
) -> None:
    job = create(
        stub,
        models.f16,
        ["Q8_0"],
        output_dir=str(models.root / "gate-unchecked"),
        eval_text_path=str(short_text),
        max_kl_divergence=1.0,
    )
    final = wait_for_job(stub, job.name)
    assert final.state == Job.STATE_FAILED
    assert job_error_reason(final) == "QUALITY_GATE_FAILED"
    assert "could not be checked" in final.error.message and "Q8_0" in final.error.message
    assert_kept_and_registered(final)
    assert reason_of(final.outputs[0].quality.error) == "INVALID_ARGUMENT"


def test_a_gate_that_fails_still_registers_the_outputs(stub, models: Models) -> None:
    job = create(stub, models.f16, ["Q4_0"], output_dir=str(models.root / "gate-fails"), max_kl_divergence=1e-12)
    final = wait_for_job(stub, job.name)
    assert final.state == Job.STATE_FAILED and job_error_reason(final) == "QUALITY_GATE_FAILED"
    assert "mean KL divergence above" in final.error.message
    assert_kept_and_registered(final)
    assert final.outputs[0].quality.mean_kl_divergence > 1e-12
