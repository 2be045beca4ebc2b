"""Authorization, quotas, deleting outputs and retention (docs/SECURITY.md "Authorization and quotas").

The engine is driven in-process with real workers and a real SQLite store, as each principal. One test
goes over gRPC: an interceptor of the test's own sets the call's principal from a metadata key (the
authentication layer does that for real), showing the servicers hand ``current_principal()`` through.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from conftest import Models, error_reason

from quantledger.config import Settings, parse_duration
from quantledger.errors import (
    ConfigInvalid,
    InvalidArgument,
    JobNotFound,
    JobRunning,
    PathNotAllowed,
    QuotaExceeded,
    RequestIdConflict,
)
from quantledger.grpc_api.auth import set_principal
from quantledger.grpc_api.quantize_servicer import QuantizeServicer
from quantledger.jobs.engine import JobEngine
from quantledger.jobs.model import Job, JobSpec, JobState, Options
from quantledger.jobs.store import SqliteJobStore
from quantledger.security.principal import Principal, Quotas
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

ALICE = Principal("alice")
BOB = Principal("bob")
ADMIN = Principal("root", admin=True)


def settings_for(tmp_path: pathlib.Path, models: Models, **changes: Any) -> Settings:
    home = (tmp_path / "home").resolve()
    return Settings(home=home, allowed_roots=(models.root.resolve(), home, tmp_path.resolve()), **changes)


@asynccontextmanager
async def running_engine(settings: Settings, *, start: bool = True) -> AsyncIterator[JobEngine]:
    """A real engine; without ``start`` no job leaves QUEUED (no scheduler)."""
    settings.ensure_dirs()
    engine = JobEngine(settings, SqliteJobStore(str(settings.database)))
    if start:
        await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=240))


def spec(source: pathlib.Path, *types: str, **options: Any) -> JobSpec:
    return JobSpec(source=str(source), quant_types=types or ("Q8_0",), options=Options(**options))


async def until(engine: JobEngine, job_id: str, condition: Callable[[Job], bool], timeout: float = 120) -> Job:
    """The job once ``condition`` holds, following its changes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.get(job_id, ADMIN)
        if condition(job):
            return job
        async for snapshot in engine.watch(job_id, ADMIN):
            if condition(snapshot):
                return snapshot
        await asyncio.sleep(0.05)  # ended without the condition: re-read (a delete comes after the end)
    raise TimeoutError(f"jobs/{job_id} never reached the condition")


async def finished(engine: JobEngine, job_id: str) -> Job:
    job = await until(engine, job_id, lambda j: j.state.finished)
    assert job.state == JobState.SUCCEEDED, job.error
    return job


def audit_events(settings: Settings) -> list[dict[str, Any]]:
    path = settings.home / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_another_principals_job_is_not_found_and_an_admin_sees_it(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            job = await engine.create(spec(models.f16), principal=ALICE)
            assert job.owner == "alice"
            missing = "0" * 32
            with pytest.raises(JobNotFound) as absent:
                engine.get(missing, BOB)
            for attempt in (
                lambda: engine.get(job.id, BOB),
                lambda: engine.delete(job.id, BOB),
            ):
                with pytest.raises(JobNotFound) as refused:
                    attempt()
                # word for word what a job that does not exist answers, the id aside
                assert refused.value.message.replace(job.id, missing) == absent.value.message
            with pytest.raises(JobNotFound):
                await engine.cancel(job.id, BOB)
            with pytest.raises(JobNotFound):
                async for _ in engine.watch(job.id, BOB):
                    pass
            assert engine.list_jobs(0, "", BOB) == ([], "")
            assert [j.id for j in engine.list_jobs(0, "", ALICE)[0]] == [job.id]
            assert engine.get(job.id, ADMIN).owner == "alice"
            assert job.id in [j.id for j in engine.list_jobs(0, "", ADMIN)[0]]
            done = await finished(engine, job.id)
            assert os.path.exists(done.outputs[0].path)  # nothing bob tried touched it
            assert engine.delete(job.id, ADMIN).delete_time is not None  # an admin may delete anyone's
        events = audit_events(settings)
        assert {"event": "job.create", "principal": "alice", "job": job.name} in [
            {k: e[k] for k in ("event", "principal", "job")} for e in events
        ]
        assert [e["principal"] for e in events if e["event"] == "job.delete"] == ["root"]
        assert not [e for e in events if e["event"] == "job.cancel"]  # bob's refused cancel is no event

    run(scenario)


def test_page_tokens_belong_to_one_principals_listing(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings, start=False) as engine:
            first = await engine.create(spec(models.f16), principal=ALICE)
            second = await engine.create(spec(models.f16, "Q4_0"), principal=ALICE)
            await engine.create(spec(models.f16), principal=BOB)
            page, token = engine.list_jobs(1, "", ALICE)
            assert [j.id for j in page] == [second.id] and token
            assert [j.id for j in engine.list_jobs(1, token, ALICE)[0]] == [first.id]
            with pytest.raises(InvalidArgument):
                engine.list_jobs(1, token, BOB)
            with pytest.raises(InvalidArgument):
                engine.list_jobs(1, token, ADMIN)

    run(scenario)


def test_request_id_is_per_principal(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings, start=False) as engine:
            alices = await engine.create(spec(models.f16), "retry-1", principal=ALICE)
            bobs = await engine.create(spec(models.f16), "retry-1", principal=BOB)
            assert bobs.id != alices.id and bobs.owner == "bob"
            assert (await engine.create(spec(models.f16), "retry-1", principal=ALICE)).id == alices.id
            assert (await engine.create(spec(models.f16), "retry-1", principal=BOB)).id == bobs.id
            with pytest.raises(RequestIdConflict):
                await engine.create(spec(models.f16, "Q4_0"), "retry-1", principal=ALICE)
            # bob's other body is no conflict with alice's key: it conflicts with bob's own job only
            with pytest.raises(RequestIdConflict) as conflict:
                await engine.create(spec(models.f16, "Q4_0"), "retry-1", principal=BOB)
            assert conflict.value.metadata["job"] == bobs.name

    run(scenario)


def test_max_queued_jobs_refuses_with_its_figures(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)
    limited = Principal("alice", quotas=Quotas(max_queued_jobs=2))

    async def scenario() -> None:
        async with running_engine(settings, start=False) as engine:
            for types in (("Q8_0",), ("Q4_0",)):
                await engine.create(spec(models.f16, *types), principal=limited)
            with pytest.raises(QuotaExceeded) as refused:
                await engine.create(spec(models.f16, "Q5_0"), principal=limited)
            assert refused.value.code == "RESOURCE_EXHAUSTED"
            assert refused.value.metadata == {"quota": "max_queued_jobs", "limit": "2", "used": "2", "requested": "1"}
            assert len(engine.store.owned_by("alice")) == 2  # nothing was created
            await engine.create(spec(models.f16, "Q5_0"), principal=BOB)  # bob has no such quota

    run(scenario)


def test_max_kept_bytes_counts_kept_outputs_and_delete_frees_them(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            first = await finished(engine, (await engine.create(spec(models.f16), principal=ALICE)).id)
            kept = first.outputs[0].total_size_bytes
            predicted = (await engine.estimate(spec(models.f16, "Q4_0"), principal=ALICE)).outputs[0].size_bytes
            limited = Principal("alice", quotas=Quotas(max_kept_bytes=kept + predicted - 1))
            with pytest.raises(QuotaExceeded) as refused:
                await engine.create(spec(models.f16, "Q4_0"), principal=limited)
            assert refused.value.metadata == {
                "quota": "max_kept_bytes",
                "limit": str(kept + predicted - 1),
                "used": str(kept),
                "requested": str(predicted),
            }
            assert len(engine.store.owned_by("alice")) == 1
            engine.delete(first.id, limited)  # the freed bytes count back
            second = await engine.create(spec(models.f16, "Q4_0"), principal=limited)
            assert second.owner == "alice"

    run(scenario)


def test_max_running_jobs_holds_a_principals_next_job_not_others(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models, max_parallel_jobs=2)
    one_at_a_time = Principal("alice", quotas=Quotas(max_running_jobs=1))

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            first = await engine.create(spec(models.large), principal=one_at_a_time)
            second = await engine.create(spec(models.large, "Q4_0"), principal=one_at_a_time)
            bobs = await engine.create(spec(models.large), principal=BOB)
            await until(engine, first.id, lambda j: j.state == JobState.RUNNING)
            await until(engine, bobs.id, lambda j: j.state != JobState.QUEUED)  # the free slot went to bob
            assert engine.get(second.id, ADMIN).state == JobState.QUEUED
            await engine.cancel(first.id, one_at_a_time)
            await until(engine, second.id, lambda j: j.state != JobState.QUEUED)  # its turn once the first ended
            for job in (second, bobs):
                if not engine.get(job.id, ADMIN).state.finished:
                    await engine.cancel(job.id, ADMIN)

    run(scenario)


def test_per_principal_roots_and_output_dirs_replace_the_servers(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)
    own_models = tmp_path / "alice-models"
    own_out = tmp_path / "alice-out"
    own_models.mkdir()
    own_out.mkdir()
    shutil.copy(models.f16, own_models / "mine.gguf")
    alice = Principal("alice", allowed_roots=(own_models, own_out), output_dirs=(own_out,))

    async def scenario() -> None:
        async with running_engine(settings, start=False) as engine:
            with pytest.raises(PathNotAllowed):  # in the server's roots, not in hers
                await engine.create(spec(models.f16), principal=alice)
            with pytest.raises(PathNotAllowed):  # an output_dir in her roots but not in her output dirs
                await engine.create(spec(own_models / "mine.gguf", output_dir=str(own_models)), principal=alice)
            job = await engine.create(spec(own_models / "mine.gguf", output_dir=str(own_out)), principal=alice)
            assert job.output_dir == str(own_out.resolve())
            assert job.scope.allowed_roots == (str(own_models), str(own_out))
            await engine.create(spec(models.f16), principal=BOB)  # bob keeps the server's roots

    run(scenario)


def test_delete_removes_exactly_the_jobs_files(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            job = await engine.create(spec(models.f16, "Q8_0", "Q4_0", output_dir=str(out)), principal=ALICE)
            done = await finished(engine, job.id)
            q8, q4 = (pathlib.Path(a.path) for a in done.outputs)
            provenance = [pathlib.Path(a.path + ".provenance.json") for a in done.outputs]
            assert all(p.is_file() for p in provenance)
            planted = elsewhere / q8.name  # same name, another directory
            planted.write_bytes(q8.read_bytes())
            (elsewhere / provenance[0].name).write_text("{}")
            unrelated = out / "notes.txt"
            unrelated.write_text("mine")
            q4.unlink()  # replaced by the user with another file: not the job's output any more
            q4.write_bytes(b"not the output")
            deleted = engine.delete(job.id, ALICE)
            assert deleted.delete_time is not None
            assert [a.quant_type for a in deleted.outputs] == ["Q8_0", "Q4_0"]  # history stays
            assert not q8.exists() and not provenance[0].exists() and not provenance[1].exists()
            assert q4.read_bytes() == b"not the output"
            assert planted.exists() and (elsewhere / provenance[0].name).exists() and unrelated.exists()
            assert engine.delete(job.id, ALICE).delete_time == deleted.delete_time  # idempotent
            listed = engine.list_jobs(0, "", ALICE)[0]
            assert listed[0].delete_time == deleted.delete_time
        events = [e for e in audit_events(settings) if e["event"] == "job.delete"]
        assert len(events) == 1
        assert events[0]["principal"] == "alice" and events[0]["job"] == job.name
        assert events[0]["left_in_place"] == [str(q4)]
        assert events[0]["freed_bytes"] == done.outputs[0].size_bytes

    run(scenario)


def test_delete_refuses_a_job_that_has_not_ended(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            job = await engine.create(spec(models.large), principal=ALICE)
            await until(engine, job.id, lambda j: j.state == JobState.RUNNING)
            with pytest.raises(JobRunning) as refused:
                engine.delete(job.id, ALICE)
            assert refused.value.code == "FAILED_PRECONDITION"
            await engine.cancel(job.id, ALICE)
            assert engine.delete(job.id, ALICE).delete_time is not None
            leftovers = list(pathlib.Path(job.output_dir).glob(".*.partial*")) if os.path.isdir(job.output_dir) else []
            assert leftovers == []
        assert [e["event"] for e in audit_events(settings)] == ["job.create", "job.cancel", "job.delete"]

    run(scenario)


def test_retention_expires_outputs_of_jobs_that_ended_long_enough_ago(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models, retain_seconds=1.0)

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            job = await engine.create(spec(models.f16), principal=ALICE)
            done = await finished(engine, job.id)
            output = pathlib.Path(done.outputs[0].path)
            expired = await until(engine, job.id, lambda j: j.delete_time is not None, timeout=30)
            assert not output.exists()
            assert expired.delete_time is not None and done.end_time is not None
            assert expired.delete_time - done.end_time >= 1.0
            assert not (settings.artifacts / job.id).exists()  # the service's own folder for it went too
        events = [e for e in audit_events(settings) if e["event"] == "job.expire"]
        assert [(e["principal"], e["job"], e["owner"]) for e in events] == [("retention", job.name, "alice")]

    run(scenario)


def test_retain_durations() -> None:
    assert parse_duration("30d", "X") == 30 * 86400
    assert parse_duration("12h", "X") == 12 * 3600
    assert parse_duration("90", "X") == 90
    assert parse_duration("", "X") is None and parse_duration("off", "X") is None
    for bad in ("-1d", "soon", "1y", "nan"):
        with pytest.raises(ConfigInvalid):
            parse_duration(bad, "X")


def test_a_database_from_before_owners_is_migrated(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, request_id TEXT UNIQUE,"
        " fingerprint TEXT NOT NULL, state TEXT NOT NULL, doc TEXT NOT NULL);"
    )
    doc = {
        "id": "a" * 32,
        "spec": {"source": "/m.gguf", "quant_types": ["Q8_0"]},
        "request_id": "r",
        "create_time": 1.0,
    }
    doc["state"] = "SUCCEEDED"
    old.execute("INSERT INTO jobs (id, request_id, fingerprint, state, doc) VALUES (?, 'r', 'f', 'SUCCEEDED', ?)",
                ("a" * 32, json.dumps(doc)))  # fmt: skip
    old.commit()
    old.close()
    store = SqliteJobStore(str(path))
    job = store.get("a" * 32)
    assert job is not None and job.owner == "local"
    found = store.find_by_request_id("local", "r")
    assert found is not None and found[0].id == job.id
    assert store.find_by_request_id("bob", "r") is None
    bobs = Job(id="b" * 32, spec=job.spec, request_id="r", create_time=2.0, owner="bob")
    store.insert(bobs, "f")  # the same request_id under another owner
    assert [j.id for j in store.owned_by("bob")] == [bobs.id]
    store.close()


# ---------------------------------------------------------------- over gRPC

PRINCIPAL_KEY = "x-test-principal"


class PrincipalFromMetadata(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Test stand-in for the authentication layer: the principal named by a metadata key."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._principals = principals

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        name = dict(details.invocation_metadata or ()).get(PRINCIPAL_KEY)
        if handler is None or name is None:
            return handler
        principal = self._principals[name]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                set_principal(principal)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: Any) -> Any:
            set_principal(principal)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)


def test_servicers_pass_the_calls_principal_through(models: Models, tmp_path: pathlib.Path) -> None:
    settings = settings_for(tmp_path, models)

    async def scenario() -> None:
        async with running_engine(settings) as engine:
            server = grpc.aio.server(interceptors=[PrincipalFromMetadata({"alice": ALICE, "bob": BOB})])
            pb_grpc.add_QuantizeServiceServicer_to_server(QuantizeServicer(engine), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb_grpc.QuantizeServiceStub(channel)
                    as_alice = ((PRINCIPAL_KEY, "alice"),)
                    as_bob = ((PRINCIPAL_KEY, "bob"),)
                    request = pb.CreateQuantizeJobRequest(
                        job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q8_0"])
                    )
                    job = await stub.CreateQuantizeJob(request, metadata=as_alice)
                    assert job.owner == "alice"
                    for call in (
                        stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name), metadata=as_bob),
                        stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name), metadata=as_bob),
                        stub.DeleteQuantizeJob(pb.DeleteQuantizeJobRequest(name=job.name), metadata=as_bob),
                    ):
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await call
                        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
                        assert error_reason(refused.value) == "JOB_NOT_FOUND"
                    with pytest.raises(grpc.aio.AioRpcError) as watched:
                        async for _ in stub.WatchQuantizeJob(
                            pb.WatchQuantizeJobRequest(name=job.name), metadata=as_bob
                        ):
                            pass
                    assert watched.value.code() == grpc.StatusCode.NOT_FOUND
                    listed = await stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest(), metadata=as_bob)
                    assert list(listed.jobs) == []
                    last = None
                    async for snapshot in stub.WatchQuantizeJob(
                        pb.WatchQuantizeJobRequest(name=job.name), metadata=as_alice
                    ):
                        last = snapshot
                    assert last is not None and last.state == pb.QuantizeJob.STATE_SUCCEEDED
                    deleted = await stub.DeleteQuantizeJob(
                        pb.DeleteQuantizeJobRequest(name=job.name), metadata=as_alice
                    )
                    assert deleted.HasField("delete_time") and len(deleted.outputs) == 1
                    assert not os.path.exists(deleted.outputs[0].path)
                    unowned = await stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name))  # LOCAL: an admin
                    assert unowned.owner == "alice"
            finally:
                await server.stop(None)

    run(scenario)
