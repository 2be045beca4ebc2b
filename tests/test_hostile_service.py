"""Issue 10: hostile requests and faults against a real server — page tokens, absurd sizes, time
bounds, a full data disk, cancel during registration and conversion. Each case runs with a health
probe: the server must keep answering other clients while one misbehaves."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from conftest import Models, RunningServer, error_reason, job_error_reason, start_server, wait_for_job
from hf_models import write_causal_folder
from hostile import fill, health_probe, small_file_system
from test_registry_service import Up

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import registry_service_pb2 as registry_pb

Job = pb.QuantizeJob
Record = pb.RegistryRecord
pytestmark = [pytest.mark.slow]


def refused(call, request) -> tuple[grpc.StatusCode, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value.code(), error_reason(caught.value), caught.value.details() or ""


def create(stub, source, types=("Q4_K_M",), **options) -> Job:  # type: ignore[no-untyped-def]
    job = pb.QuantizeJob(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), timeout=120)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[Up]:
    """`quantledger up`: its server has web3 (and py_ecc, which raises the recursion limit) loaded."""
    home = tmp_path_factory.mktemp("hostile-up")
    running = Up(home, [models.root, home])
    yield running
    running.stop()


def deep_json_token() -> str:
    body = '{"before":' + "[" * 100_000 + "]" * 100_000 + "}"
    return base64.urlsafe_b64encode(body.encode()).decode()


def test_deep_json_page_tokens_do_not_kill_the_server(up: Up) -> None:
    token = deep_json_token()
    channel = grpc.insecure_channel(up.address)
    from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc
    from quantledger.v1 import registry_service_pb2_grpc as registry_grpc

    stub, registry = pb_grpc.QuantizeServiceStub(channel), registry_grpc.RegistryServiceStub(channel)
    calls = [
        (stub.ListQuantizeJobs, pb.ListQuantizeJobsRequest(page_token=token)),
        (stub.ListQuantTypes, pb.ListQuantTypesRequest(page_token=token)),
        (registry.ListRecords, registry_pb.ListRecordsRequest(parent="files/" + "ab" * 32, page_token=token)),
    ]
    with health_probe(up.address) as probe:
        for call, request in calls:
            code, reason, details = refused(call, request)
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
            assert "page_token" in details
    probe.assert_answered()
    assert up.process.poll() is None, "the server died"


def test_page_tokens_cannot_be_forged_or_moved_between_listings(up: Up, models: Models) -> None:
    from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

    stub = pb_grpc.QuantizeServiceStub(grpc.insecure_channel(up.address))
    first = stub.ListQuantTypes(pb.ListQuantTypesRequest(page_size=3))
    second = stub.ListQuantTypes(pb.ListQuantTypesRequest(page_size=3, page_token=first.next_page_token))
    assert [t.name for t in second.quant_types] != [t.name for t in first.quant_types]
    # the old token format (base64 JSON) and a token with one character changed are both refused
    forged = base64.urlsafe_b64encode(json.dumps({"before": 3}).encode()).decode()
    tampered = (
        first.next_page_token[:-2] + ("A" if first.next_page_token[-2] != "A" else "B") + first.next_page_token[-1]
    )
    for token in (forged, tampered, "x" * 100_000):
        assert refused(stub.ListQuantTypes, pb.ListQuantTypesRequest(page_token=token))[1] == "INVALID_ARGUMENT"
    # a valid token of one listing is no token of another
    code, reason, _ = refused(stub.ListQuantizeJobs, pb.ListQuantizeJobsRequest(page_token=first.next_page_token))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "field",
    ["long_path", "many_types", "long_type", "long_output_dir", "many_overrides", "nul_in_path"],
)
def test_absurd_requests_are_refused_by_size_before_any_file_work(server: RunningServer, models: Models, field) -> None:  # type: ignore[no-untyped-def]
    stub = server.stub()
    source, types, options = str(models.f16), ["Q4_K_M"], {}
    if field == "long_path":
        source = str(models.root) + "/a" * 1_500_000  # 3 MB of path components
    elif field == "many_types":
        types = [f"Q{i}_K" for i in range(100_000)]  # distinct: not refused as duplicates
    elif field == "long_type":
        types = ["Q" * 1_000_000]
    elif field == "long_output_dir":
        options = {"output_dir": "/tmp/" + "d" * 100_000}
    elif field == "many_overrides":
        options = {
            "tensor_type_overrides": [
                pb.TensorTypeOverride(pattern=f"blk\\.{i}\\.", type="Q8_0") for i in range(10_000)
            ]
        }
    elif field == "nul_in_path":
        source = str(models.f16) + "\0.gguf"
    job = pb.QuantizeJob(source=source, quant_types=types, options=pb.QuantizeOptions(**options))
    with health_probe(server.address) as probe:
        started = time.monotonic()
        for call, request in (
            (stub.CreateQuantizeJob, pb.CreateQuantizeJobRequest(job=job)),
            (stub.EstimateQuantizeJob, pb.EstimateQuantizeJobRequest(job=job)),
        ):
            code, reason, details = refused(call, request)
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), details
            assert len(details) < 500, "the error echoes the hostile value"
        elapsed = time.monotonic() - started
    probe.assert_answered()
    assert elapsed < 30, f"refusing by size took {elapsed:.1f} s: the request was worked on first"


def test_a_stage_past_its_time_bound_is_stopped_with_a_typed_reason(tmp_path: pathlib.Path, models: Models) -> None:
    server = start_server(
        tmp_path / "home", [models.root, tmp_path], extra_env={"QUANTLEDGER_STAGE_TIMEOUT_SECONDS": "1"}
    )
    try:
        stub = server.stub()
        job = create(stub, models.large, ["Q4_K_M"], skip_quality=True, output_dir=str(tmp_path / "out"))
        final = wait_for_job(stub, job.name)
        assert final.state == Job.STATE_FAILED
        assert job_error_reason(final) == "STAGE_TIMEOUT"
        assert final.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert not list((tmp_path / "out").glob(".*partial*")), "the stopped worker's partial file was left"
        # the server goes on: the next job on a small model succeeds
        small = wait_for_job(
            stub, create(stub, models.f16, ["Q8_0"], skip_quality=True, output_dir=str(tmp_path / "o2")).name
        )
        assert small.state == Job.STATE_SUCCEEDED, small.error
    finally:
        server.stop()


def test_a_job_past_its_time_bound_is_stopped_and_keeps_finished_outputs(
    tmp_path: pathlib.Path, models: Models
) -> None:
    server = start_server(
        tmp_path / "home", [models.root, tmp_path], extra_env={"QUANTLEDGER_JOB_TIMEOUT_SECONDS": "3"}
    )
    try:
        stub = server.stub()
        job = create(
            stub,
            models.large,
            ["Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K"],
            skip_quality=True,
            output_dir=str(tmp_path / "out"),
        )
        final = wait_for_job(stub, job.name)
        assert final.state == Job.STATE_FAILED
        assert job_error_reason(final) == "JOB_TIMEOUT"
        for output in final.outputs:  # what finished before the bound stays, complete and listed
            assert pathlib.Path(output.path).stat().st_size == output.size_bytes
        assert len(final.outputs) < 4
    finally:
        server.stop()


def stored_state(database: pathlib.Path, job_name: str) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job_name.split("/")[1],)).fetchone()
    return str(state)


def test_a_full_data_disk_strands_no_job(tmp_path: pathlib.Path, models: Models) -> None:
    with small_file_system(tmp_path / "home", "48m") as home:
        server = start_server(home, [models.root, tmp_path])
        try:
            stub = server.stub()
            out = tmp_path / "out"  # the outputs go to another disk: only the job database fills up
            job = create(stub, models.large, ["Q8_0", "Q4_0"], skip_quality=True, output_dir=str(out))
            for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120):
                if snapshot.state == Job.STATE_RUNNING:
                    break
            ballast = fill(home)
            final = wait_for_job(stub, job.name, timeout=180)
            assert final.state == Job.STATE_SUCCEEDED, final.error
            assert stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name)).state == Job.STATE_SUCCEEDED
            assert len(final.outputs) == 2
            # a create now cannot be recorded: refused as INSUFFICIENT_DISK, and no job half-made
            with health_probe(server.address) as probe:
                code, reason, _ = refused(
                    stub.CreateQuantizeJob,
                    pb.CreateQuantizeJobRequest(
                        job=pb.QuantizeJob(
                            source=str(models.f16),
                            quant_types=["Q8_0"],
                            options=pb.QuantizeOptions(output_dir=str(tmp_path / "o2")),
                        )
                    ),
                )
            probe.assert_answered()
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_DISK")
            ballast.unlink()  # space again: the server writes the job's end without a restart
            deadline = time.monotonic() + 60
            while stored_state(server.home / "jobs.sqlite3", job.name) != "SUCCEEDED":
                assert time.monotonic() < deadline, "the job's end never reached the database"
                time.sleep(0.5)
            listed = stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest())
            assert [j.name for j in listed.jobs] == [job.name]
        finally:
            server.stop()


def test_cancel_during_registration_keeps_what_was_registered(up: Up, models: Models) -> None:
    from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

    stub = pb_grpc.QuantizeServiceStub(grpc.insecure_channel(up.address))
    caught = None
    for attempt in range(5):  # REGISTERING lasts a fraction of a second: catch it
        out = up.outputs / f"cancel-registering-{attempt}"
        job = create(stub, models.f16, ["Q8_0", "Q4_0"], skip_quality=True, output_dir=str(out))
        for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120):
            if snapshot.stage == Job.STAGE_REGISTERING:
                with contextlib.suppress(grpc.RpcError):  # it may have finished meanwhile
                    stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))
                caught = job.name
                break
        if caught:
            break
    assert caught, "never saw the REGISTERING stage"
    deadline = time.monotonic() + 60
    while True:
        final = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=caught))
        states = [o.registry.state for o in final.outputs]
        if final.state in (Job.STATE_CANCELLED, Job.STATE_SUCCEEDED) and states == [Record.STATE_REGISTERED] * 2:
            break
        assert time.monotonic() < deadline, f"outputs stuck in {states} ({Job.State.Name(final.state)})"
        time.sleep(0.5)
    for output in final.outputs:
        assert up.client.verify(output.sha256, output.registry.attester).name == "VALID"


def test_cancel_during_conversion_leaves_nothing_in_the_conversion_cache(tmp_path: pathlib.Path) -> None:
    folder = write_causal_folder(
        tmp_path / "models" / "llama-convert",
        "LlamaForCausalLM",
        dtype="F16",
        hidden=1024,
        ffn=2816,
        layers=4,
        heads=8,
        kv_heads=4,
    )
    server = start_server(tmp_path / "home", [tmp_path])
    try:
        stub = server.stub()
        cancelled_mid_conversion = False
        for attempt in range(3):
            job = create(stub, folder, ["Q8_0"], skip_quality=True, output_dir=str(tmp_path / f"out{attempt}"))
            for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120):
                progress = snapshot.progress
                if snapshot.stage == Job.STAGE_CONVERTING and 0 < progress.bytes_done < progress.bytes_total:
                    stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))
                    cancelled_mid_conversion = True
                    break
            assert wait_for_job(stub, job.name).state in (Job.STATE_CANCELLED, Job.STATE_SUCCEEDED)
            if cancelled_mid_conversion:
                break
            for entry in (server.home / "conversion-cache").glob("[!.]*"):  # converted before the cancel: again
                entry.unlink()
        assert cancelled_mid_conversion, "the conversion was always over before the cancel"
        cache = server.home / "conversion-cache"
        assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []
    finally:
        server.stop()


def test_the_chain_libraries_leave_the_recursion_limit_where_it_was() -> None:
    """py_ecc raises it to 100,000 at import, past the depth where the C stack overflows (a SIGSEGV
    instead of a RecursionError); every module of ours that imports web3 or eth-account puts it back."""

    script = (
        "import sys; before = sys.getrecursionlimit(); "
        "import quantledger.grpc_api.server, quantledger.registry.wiring, registry_client.client, registry_client.keys; "
        "import web3, eth_account; print(before, sys.getrecursionlimit())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    before, after = done.stdout.split()
    assert after == before


def test_a_second_server_on_a_busy_port_refuses_to_start(server: RunningServer, tmp_path: pathlib.Path) -> None:
    """gRPC's default SO_REUSEPORT let two servers share one port (jobs list alternated between them)."""

    port = server.address.rsplit(":", 1)[1]
    argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", port]
    env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path / "other-home")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr


def test_an_output_disk_that_fills_during_quantization_is_insufficient_disk(
    tmp_path: pathlib.Path, models: Models
) -> None:
    """llama.cpp says only "basic_ios::clear: iostream error" when its write fails; the job says INSUFFICIENT_DISK."""
    with small_file_system(tmp_path / "out", "200m") as out:
        server = start_server(
            tmp_path / "home", [models.root, tmp_path], extra_env={"QUANTLEDGER_DISK_RESERVE_BYTES": "0"}
        )
        try:
            stub = server.stub()
            job = create(stub, models.large, ["Q8_0"], skip_quality=True, output_dir=str(out))
            for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120):
                if snapshot.stage == Job.STAGE_QUANTIZING:
                    break
            fill(out)
            final = wait_for_job(stub, job.name)
            assert final.state == Job.STATE_FAILED
            assert job_error_reason(final) == "INSUFFICIENT_DISK", final.error.message
            assert "full" in final.error.message
            assert not [p.name for p in out.iterdir() if "partial" in p.name], "a partial output was left"
        finally:
            server.stop()


def test_up_on_a_busy_chain_port_refuses_to_start(tmp_path: pathlib.Path) -> None:
    """Another program (another home's chain, say) on the chain port: up must not start and talk to it."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as other:
        chain_port = other.getsockname()[1]
        argv = [sys.executable, "-m", "quantledger.cli.main", "up", "--port", "0", "--chain-port", str(chain_port)]
        env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path / "home")}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    assert "PORT_IN_USE" in done.stderr and f"127.0.0.1:{chain_port}" in done.stderr
    assert "--chain-port" in done.stderr
