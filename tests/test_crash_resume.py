"""Embedded mode survives a kill -9 of `quantledger up`: the job that was running resumes after the restart,
keeping the outputs it had finished; only a job whose source vanished meanwhile ends INTERRUPTED."""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import time

import pytest
from conftest import Models, RunningServer, free_port, job_error_reason, start_server, up_argv, wait_for_job

from quantledger.v1 import quantize_service_pb2 as pb

pytestmark = [pytest.mark.chain, pytest.mark.slow]
Job = pb.QuantizeJob
TYPES = ["Q8_0", "Q4_K_M"]  # Q8_0 is done in a second; Q4_K_M of the ~200 MB model takes several


def _up(home: pathlib.Path, roots: list[pathlib.Path], port: int, chain_port: int) -> RunningServer:
    return start_server(home, roots, port=port, command=up_argv(port, chain_port))


def _kill(server: RunningServer, chain_port: int) -> None:
    """kill -9 of `up`; its chain (PR_SET_PDEATHSIG) and workers die with it: wait until the chain's port is free."""
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", chain_port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError("the embedded chain outlived its server")


def _create(server: RunningServer, source: pathlib.Path, types: list[str], out: pathlib.Path) -> pb.QuantizeJob:
    job = pb.QuantizeJob(
        source=str(source), quant_types=types, options=pb.QuantizeOptions(output_dir=str(out), skip_quality=True)
    )
    return server.stub().CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def _until(server: RunningServer, name: str, predicate, timeout: float = 120) -> pb.QuantizeJob:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.stub().GetQuantizeJob(pb.GetQuantizeJobRequest(name=name))
        if predicate(job):
            return job
        assert job.state in (Job.STATE_QUEUED, Job.STATE_RUNNING), job
        time.sleep(0.05)
    raise AssertionError(f"{name} never got there")


def test_a_job_killed_mid_second_type_resumes_and_keeps_its_first_output(models: Models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    home, port, chain_port = tmp_path / "home", free_port(), free_port()
    roots = [models.root, home, tmp_path]
    server = _up(home, roots, port, chain_port)
    job = _create(server, models.large, TYPES, tmp_path / "out")
    running = _until(
        server, job.name, lambda j: j.progress.current_quant_type == "Q4_K_M" and j.progress.tensors_done >= 3
    )
    first = pathlib.Path(running.outputs[0].path)
    before = first.stat()
    _kill(server, chain_port)
    restarted = _up(home, roots, port, chain_port)
    try:
        done = wait_for_job(restarted.stub(), job.name)
        assert done.state == Job.STATE_SUCCEEDED, done.error
        assert [o.quant_type for o in done.outputs] == TYPES
        after = first.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not redone
        assert sorted(p.name for p in (tmp_path / "out").iterdir() if ".partial" in p.name) == []
        # the same job, uninterrupted: the same bytes (llama.cpp is deterministic)
        again = wait_for_job(restarted.stub(), _create(restarted, models.large, TYPES, tmp_path / "again").name)
        assert [o.sha256 for o in again.outputs] == [o.sha256 for o in done.outputs]
        from registry_client.address_book import AddressBook
        from registry_client.client import RegistryClient

        client = RegistryClient.connect(f"http://127.0.0.1:{chain_port}", address_book=AddressBook.in_home(home))
        for output in done.outputs:
            assert output.registry.state == pb.RegistryRecord.STATE_REGISTERED
            assert len(client.records_of(output.sha256)) == 1  # the second job's identical bytes: no second record
        audit = (home / "audit.log").read_text()
        assert '"job.resume"' in audit and job.name in audit
    finally:
        restarted.stop()


def test_a_job_whose_source_vanished_while_the_server_was_down_is_interrupted(models: Models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    home, port, chain_port = tmp_path / "home", free_port(), free_port()
    source = tmp_path / "copy-f16.gguf"
    shutil.copyfile(models.large, source)
    roots = [models.root, home, tmp_path]
    server = _up(home, roots, port, chain_port)
    job = _create(server, source, ["Q4_K_M"], tmp_path / "out")
    _until(server, job.name, lambda j: j.state == Job.STATE_RUNNING and j.progress.tensors_done >= 2)
    _kill(server, chain_port)
    source.unlink()
    restarted = _up(home, roots, port, chain_port)
    try:
        after = restarted.stub().GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name))
        assert after.state == Job.STATE_FAILED
        assert job_error_reason(after) == "INTERRUPTED"
        assert "is gone" in after.error.message
    finally:
        restarted.stop()
