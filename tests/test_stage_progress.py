"""Every stage shows its own progress and ETA, and the job is never 100 % done before it ends."""

from __future__ import annotations

import io

from conftest import Models

from quantledger.cli.render import ProgressBar
from quantledger.v1 import quantize_service_pb2 as pb

Job = pb.QuantizeJob


def watch(stub, job: pb.QuantizeJob) -> list[pb.QuantizeJob]:
    return list(stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=600))


def in_stage(snapshots: list[pb.QuantizeJob], stage: int) -> list[pb.QuantizeJob]:
    return [s for s in snapshots if s.state == Job.STATE_RUNNING and s.stage == stage]


def test_hashing_and_evaluation_advance_their_own_progress(stub, models: Models) -> None:
    request = Job(
        source=str(models.large), quant_types=["Q8_0"], options=pb.QuantizeOptions(output_dir=str(models.root / "sp"))
    )
    snapshots = watch(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=request)))
    final = snapshots[-1]
    assert final.state == Job.STATE_SUCCEEDED, final.error
    assert final.progress.fraction == 1.0

    running = [s for s in snapshots if s.state == Job.STATE_RUNNING]
    assert all(s.progress.fraction < 1.0 for s in running), "reported 100 % done while stages still ran"
    fractions = [s.progress.fraction for s in snapshots]
    assert fractions == sorted(fractions)

    hashing = in_stage(snapshots, Job.STAGE_HASHING)
    assert hashing, "the job never showed its HASHING stage"
    assert {s.progress.stage_unit for s in hashing} == {"bytes"}
    assert hashing[-1].progress.stage_total == final.outputs[0].size_bytes
    hashed = [s.progress.stage_done for s in hashing]
    assert hashed == sorted(hashed) and len(set(hashed)) >= 2, hashed

    evaluating = in_stage(snapshots, Job.STAGE_EVALUATING)
    assert {s.progress.stage_unit for s in evaluating} == {"tokens"}
    done = [s.progress.stage_fraction for s in evaluating]
    assert done == sorted(done) and len({f for f in done if f > 0}) >= 2, done
    counted = [s for s in evaluating if s.progress.stage_done > 0]
    assert all(s.progress.HasField("stage_eta") and s.progress.HasField("eta") for s in counted)
    assert all(s.progress.eta.ToTimedelta().total_seconds() > 0 for s in evaluating[:-1])

    registering = in_stage(snapshots, Job.STAGE_REGISTERING)
    assert {s.progress.stage_unit for s in registering} <= {"steps"}

    line = io.StringIO()
    ProgressBar(line).update(counted[0])
    assert "EVALUATING" in line.getvalue() and "tokens" in line.getvalue() and "stage" in line.getvalue()
