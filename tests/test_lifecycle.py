"""Cancel, parallel slots, kill -9 and restart, SIGTERM: nothing half-written, and a job that was running\nresumes after the restart."""

from __future__ import annotations

import os
import pathlib
import signal
import time

import grpc
import psutil
import pytest
from conftest import Models, RunningServer, job_error_reason, start_server, wait_for_job
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quantledger.v1 import quantize_service_pb2 as pb

Job = pb.QuantizeJob
SLOW = ["IQ4_XS", "IQ3_S"]  # i-quants of the ~200 MB model take several seconds each
NOT_HUNG = 60  # a bound on "stuck", far above any real figure: speed is measured in bench/, not here


def create(stub, source, types, **options):
    job = pb.QuantizeJob(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def wait_running_with_progress(stub, name: str, timeout: float = 60) -> pb.QuantizeJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name))
        if job.state == Job.STATE_RUNNING and job.progress.tensors_done >= 2:
            return job
        assert job.state in (Job.STATE_QUEUED, Job.STATE_RUNNING), job
        time.sleep(0.05)
    raise TimeoutError(f"{name} never made progress")


def partial_files(directory: str | pathlib.Path) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    return [p for p in directory.iterdir() if ".partial" in p.name] if directory.is_dir() else []


def workers_of(server: RunningServer) -> list[psutil.Process]:
    procs = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if "quantledger.quantize.worker" in cmd and env.get("QUANTLEDGER_HOME") == str(server.home):
            procs.append(proc)
    return procs


@pytest.mark.slow
def test_cancel_stops_the_worker_mid_job_and_removes_its_partial_file(
    stub, server: RunningServer, models: Models
) -> None:
    """CANCELLED is reported while the work was unfinished, with its partial file already gone and the
    worker's process group killed (how fast: bench/fail_fast.py)."""
    job = create(stub, models.large, SLOW, output_dir=str(models.root / "cancel-me"))
    running = wait_running_with_progress(stub, job.name)
    assert partial_files(running.output_dir), "llama.cpp should be writing a partial file"
    (worker,) = workers_of(server)
    cancelled = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))
    # what the caller sees at the moment it hears CANCELLED
    assert cancelled.state == Job.STATE_CANCELLED
    assert job_error_reason(cancelled) == "JOB_CANCELLED"
    assert cancelled.progress.outputs_done == 0 and len(cancelled.outputs) == 0  # stopped before the first output
    assert partial_files(running.output_dir) == []
    assert list(pathlib.Path(running.output_dir).glob("*.gguf")) == []
    # the worker was killed as a group (it runs in a session of its own), and the server reaps it
    gone, alive = psutil.wait_procs([worker], timeout=NOT_HUNG)
    assert alive == [] and gone == [worker]
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)
    # the service still works
    ok = wait_for_job(stub, create(stub, models.f16, ["Q4_0"], output_dir=str(models.root / "after-cancel")).name)
    assert ok.state == Job.STATE_SUCCEEDED


def test_cancel_queued_job(models: Models, tmp_path) -> None:
    home = tmp_path / "home"
    server = start_server(home, [models.root, home, tmp_path])
    try:
        stub = server.stub()
        first = create(stub, models.large, ["IQ4_XS"], output_dir=str(tmp_path / "a"))
        second = create(stub, models.f16, ["Q4_0"], output_dir=str(tmp_path / "b"))
        assert stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=second.name)).state == Job.STATE_QUEUED
        cancelled = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=second.name))
        assert cancelled.state == Job.STATE_CANCELLED
        stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=first.name))
        assert stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=first.name)).state == Job.STATE_CANCELLED
    finally:
        server.stop()


@pytest.mark.slow
def test_kill_9_and_restart(models: Models, tmp_path) -> None:
    home = tmp_path / "home"
    roots = [models.root, home, tmp_path]
    server = start_server(home, roots)
    stub = server.stub()
    done = wait_for_job(stub, create(stub, models.f16, ["Q8_0"], output_dir=str(tmp_path / "done")).name)
    assert done.state == Job.STATE_SUCCEEDED
    victim = create(stub, models.large, SLOW, output_dir=str(tmp_path / "victim"))
    queued = create(stub, models.f16, ["Q4_0"], output_dir=str(tmp_path / "queued"))
    running = wait_running_with_progress(stub, victim.name)
    assert workers_of(server)
    server.stop(signal.SIGKILL)
    # the worker dies with its server (PR_SET_PDEATHSIG): nothing keeps writing
    deadline = time.monotonic() + 5
    while workers_of(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers_of(server) == []

    restarted = start_server(home, roots, port=int(server.address.rsplit(":", 1)[1]))
    try:
        stub = restarted.stub()
        kept = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=done.name))
        assert kept.state == Job.STATE_SUCCEEDED and kept.outputs[0].sha256 == done.outputs[0].sha256
        assert pathlib.Path(kept.outputs[0].path).is_file()
        # the job that was running resumes, and the queued one was not lost: both run after the restart
        resumed = wait_for_job(stub, victim.name)
        assert resumed.state == Job.STATE_SUCCEEDED and [o.quant_type for o in resumed.outputs] == SLOW
        assert partial_files(running.output_dir) == []
        assert wait_for_job(stub, queued.name).state == Job.STATE_SUCCEEDED
        listed = {j.name: j.state for j in stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest()).jobs}
        assert listed[done.name] == Job.STATE_SUCCEEDED and listed[victim.name] == Job.STATE_SUCCEEDED
        assert Job.STATE_RUNNING not in listed.values()
    finally:
        restarted.stop()


@pytest.mark.slow
def test_sigterm_stops_running_jobs_cleanly(models: Models, tmp_path) -> None:
    home = tmp_path / "home"
    roots = [models.root, home, tmp_path]
    server = start_server(home, roots)
    stub = server.stub()
    victim = create(stub, models.large, SLOW, output_dir=str(tmp_path / "victim"))
    running = wait_running_with_progress(stub, victim.name)
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        statuses = []
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert server.process.wait(timeout=30) == 0
    assert workers_of(server) == []
    assert partial_files(running.output_dir) == []
    restarted = start_server(home, roots)
    try:  # a restart does not cost the job: it resumes
        after = wait_for_job(restarted.stub(), victim.name)
        assert after.state == Job.STATE_SUCCEEDED and [o.quant_type for o in after.outputs] == SLOW
    finally:
        restarted.stop()


def test_parallel_slots_run_jobs_side_by_side(models: Models, tmp_path) -> None:
    home = tmp_path / "home"
    server = start_server(home, [models.root, home, tmp_path], extra_env={"QUANTLEDGER_MAX_PARALLEL_JOBS": "2"})
    try:
        stub = server.stub()
        names = [create(stub, models.large, ["IQ4_XS"], output_dir=str(tmp_path / f"p{i}")).name for i in range(3)]
        deadline = time.monotonic() + 30
        states: list[int] = []
        while time.monotonic() < deadline:
            states = [stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=n)).state for n in names]
            if states.count(Job.STATE_RUNNING) == 2:
                break
            time.sleep(0.05)
        assert states.count(Job.STATE_RUNNING) == 2 and states[2] == Job.STATE_QUEUED
        for name in names:
            stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name))
    finally:
        server.stop()


def test_worker_crash_fails_one_job_not_the_service(stub, server: RunningServer, models: Models) -> None:
    job = create(stub, models.large, ["IQ4_XS"], output_dir=str(models.root / "crash"))
    running = wait_running_with_progress(stub, job.name)
    (worker,) = workers_of(server)
    worker.kill()  # what the OOM killer or a segfault in llama.cpp looks like from outside
    final = wait_for_job(stub, job.name)
    assert final.state == Job.STATE_FAILED
    assert job_error_reason(final) == "WORKER_CRASHED"
    assert partial_files(running.output_dir) == []
    after = wait_for_job(stub, create(stub, models.f16, ["Q4_0"], output_dir=str(models.root / "after-crash")).name)
    assert after.state == Job.STATE_SUCCEEDED
