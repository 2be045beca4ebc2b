"""Several users on one server, end to end: real API tokens (``--auth tokens``) carry each call's
principal to the job engine, so one user cannot see or cancel another's job, an admin sees all, a
token's quota refuses with its figures, and no secret (API token or Hugging Face token) is written to
any file the server or its jobs made."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from conftest import Models, RunningServer, error_reason, free_port, start_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

Job = pb.QuantizeJob
HF_TOKEN = "hf_" + "Q7xRk2" * 6  # a made-up Hugging Face token the server has in its environment


def create_token(home: pathlib.Path, name: str, *flags: str) -> str:
    argv = [sys.executable, "-m", "quantledger.cli.main", "tokens", "create", name, *flags]
    env = {key: value for key, value in os.environ.items() if key not in ("QUANTLEDGER_TOKEN", "HF_TOKEN")}
    made = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**env, "QUANTLEDGER_HOME": str(home)})
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def error_metadata(exc: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    return {}


class User:
    def __init__(self, server: RunningServer, token: str) -> None:
        self.token = token
        self._channel = grpc.insecure_channel(server.address)
        self.stub = pb_grpc.QuantizeServiceStub(self._channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def create(self, source: pathlib.Path, out: pathlib.Path, quant: str = "Q4_0") -> pb.QuantizeJob:
        job = Job(
            source=str(source), quant_types=[quant], options=pb.QuantizeOptions(output_dir=str(out), skip_quality=True)
        )
        return self.stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), metadata=self.metadata, timeout=120)

    def get(self, name: str) -> pb.QuantizeJob:
        return self.stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name), metadata=self.metadata, timeout=30)

    def names(self) -> set[str]:
        listed = self.stub.ListQuantizeJobs(
            pb.ListQuantizeJobsRequest(page_size=100), metadata=self.metadata, timeout=30
        )
        return {job.name for job in listed.jobs}

    def wait(self, name: str) -> pb.QuantizeJob:
        request = pb.WatchQuantizeJobRequest(name=name)
        snapshots = list(self.stub.WatchQuantizeJob(request, metadata=self.metadata, timeout=300))
        assert snapshots
        return snapshots[-1]

    def refusal(self, call) -> tuple[grpc.StatusCode, str, grpc.RpcError]:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as caught:
            call()
        return caught.value.code(), error_reason(caught.value), caught.value

    def close(self) -> None:
        self._channel.close()


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory, models: Models
) -> Iterator[tuple[RunningServer, dict[str, User], pathlib.Path]]:
    home = tmp_path_factory.mktemp("team-home")
    outputs = tmp_path_factory.mktemp("team-out")
    (outputs / "carol-root").mkdir()
    tokens = {
        "alice": create_token(home, "alice", "--max-queued", "1"),
        "bob": create_token(home, "bob"),
        "carol": create_token(home, "carol", "--root", str(outputs / "carol-root")),
        "root": create_token(home, "root", "--admin"),
    }
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    env = {"QUANTLEDGER_AUTH": "tokens", "HF_TOKEN": HF_TOKEN, "QUANTLEDGER_MAX_PARALLEL_JOBS": "1"}
    server = start_server(home, [models.root, outputs], port=port, command=command, extra_env=env)
    users = {name: User(server, token) for name, token in tokens.items()}
    try:
        yield server, users, outputs
    finally:
        for user in users.values():
            user.close()
        server.stop()


def test_one_user_cannot_see_or_cancel_anothers_job(team, models: Models) -> None:
    _server, users, outputs = team
    alice, bob, root = users["alice"], users["bob"], users["root"]
    job = alice.create(models.f16, outputs / "alice")
    assert job.owner == "alice"
    for call in (
        lambda: bob.get(job.name),
        lambda: bob.stub.CancelQuantizeJob(
            pb.CancelQuantizeJobRequest(name=job.name), metadata=bob.metadata, timeout=30
        ),
        lambda: list(
            bob.stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), metadata=bob.metadata, timeout=30)
        ),
    ):
        code, reason, _ = bob.refusal(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")  # as for a job that does not exist
    assert job.name not in bob.names()
    assert job.name in alice.names() and job.name in root.names()  # the admin sees every job
    assert root.get(job.name).owner == "alice"
    assert alice.wait(job.name).state == Job.STATE_SUCCEEDED


def test_a_tokens_quota_refuses_with_its_figures(team, models: Models) -> None:
    _server, users, outputs = team
    alice = users["alice"]
    first = alice.create(models.large, outputs / "alice-quota", quant="Q8_0")  # ~200 MB: still queued or running
    try:
        code, reason, error = alice.refusal(lambda: alice.create(models.f16, outputs / "alice-quota-2"))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        figures = error_metadata(error)
        assert (figures["quota"], figures["limit"], figures["used"]) == ("max_queued_jobs", "1", "1"), figures
        users["bob"].create(models.f16, outputs / "bob")  # another principal is not held by alice's quota
    finally:
        alice.stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=first.name), metadata=alice.metadata, timeout=30)


def test_a_principals_own_roots_replace_the_servers(team, models: Models) -> None:
    _server, users, outputs = team
    carol = users["carol"]
    code, reason, _ = carol.refusal(lambda: carol.create(models.f16, outputs / "carol-root" / "out"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PATH_NOT_ALLOWED")  # the server's root, not hers
    own = outputs / "carol-root" / "tiny.gguf"
    own.write_bytes(models.f16.read_bytes())
    assert carol.wait(carol.create(own, outputs / "carol-root" / "out").name).state == Job.STATE_SUCCEEDED


def test_no_secret_is_written_to_any_file(team, models: Models) -> None:
    server, users, outputs = team
    bob = users["bob"]
    bob.wait(bob.create(models.f16, outputs / "bob-secrets", quant="Q8_0").name)
    secrets = [HF_TOKEN.encode(), *(user.token.encode() for user in users.values())]
    written = [p for base in (server.home, outputs) for p in base.rglob("*") if p.is_file()]
    assert any(p.name == "audit.log" for p in written) and any(p.suffix == ".gguf" for p in written)
    leaks = [(str(p), s[:8]) for p in written for s in secrets if s in p.read_bytes()]
    assert leaks == []
