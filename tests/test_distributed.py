"""The distributed backend on real servers: Temporal's dev server, SeaweedFS's S3, an embedded chain, two
frontends (`serve quantize --backend temporal`) and two workers (`quantledger worker`), all on loopback.

Clients cannot tell the modes apart: the same RPCs, the same outputs (byte for byte those of an embedded
run), one registry record per output. Faults: a worker killed with kill -9 mid-quantize (the step is
retried on the other worker; the type finished before is not redone), a cancel mid-quantize (no object
of the job left in the bucket), Temporal itself restarted mid-job, Temporal or S3 away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cluster import PREFIX, Cluster, running_cluster
from conftest import Models, RunningServer, error_reason, free_port, job_error_reason, wait_for_job
from servers import S3Server, TemporalServer

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.chain, pytest.mark.distributed]
TYPES = ["Q8_0", "Q4_K_M"]  # Q8_0 of the ~200 MB model takes a second, Q4_K_M several: the kill lands in it


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, models: Models, temporal_server: TemporalServer, s3_server: S3Server
) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("distributed"), models, temporal_server, s3_server) as made:
        made.start_frontend("frontend-a", ("quantize", "registry"))  # A also answers the registry's reads
        made.start_frontend("frontend-b")
        for name in ("worker-1", "worker-2"):
            made.start_worker(name)
        yield made


def _stub(server: RunningServer) -> Iterator[pb_grpc.QuantizeServiceStub]:
    with server.channel() as channel:
        yield pb_grpc.QuantizeServiceStub(channel)


@contextlib.contextmanager
def _stubs(cluster: Cluster) -> Iterator[tuple[pb_grpc.QuantizeServiceStub, pb_grpc.QuantizeServiceStub]]:
    with cluster.frontends[0].channel() as a, cluster.frontends[1].channel() as b:
        yield pb_grpc.QuantizeServiceStub(a), pb_grpc.QuantizeServiceStub(b)


def _create(
    stub: pb_grpc.QuantizeServiceStub, source: str, types: list[str], request_id: str = "", **options: object
) -> pb.QuantizeJob:
    job = pb.QuantizeJob(source=source, quant_types=types, options=pb.QuantizeOptions(**options))  # type: ignore[arg-type]
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job, request_id=request_id), timeout=120)


def _ended(job: pb.QuantizeJob) -> bool:
    return job.state not in (pb.QuantizeJob.STATE_QUEUED, pb.QuantizeJob.STATE_RUNNING)


def _watch_until(stub: pb_grpc.QuantizeServiceStub, name: str, predicate, timeout: float = 300) -> pb.QuantizeJob:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name), timeout=30)
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"{name} did not get there: {job}")


def test_a_job_made_through_one_frontend_is_watched_through_the_other(
    cluster: Cluster, server: RunningServer, models: Models
) -> None:
    """Watch on frontend B streams a job created on A to SUCCEEDED; its outputs are byte-identical to an
    embedded-mode run of the same job, in the bucket, each with one registry record."""
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.f16), ["Q8_0", "Q4_0"])
        assert not _ended(job)
        seen = list(b.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=300))
    done = seen[-1]
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    assert [o.quant_type for o in done.outputs] == ["Q8_0", "Q4_0"]
    fractions = [s.progress.fraction for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    with server.channel() as channel:  # the same job in embedded mode
        embedded_stub = pb_grpc.QuantizeServiceStub(channel)
        embedded = embedded_stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q8_0", "Q4_0"]))
        )
        embedded = wait_for_job(embedded_stub, embedded.name)
    assert [o.sha256 for o in done.outputs] == [o.sha256 for o in embedded.outputs]
    for output in done.outputs:
        assert output.path.startswith(f"{cluster.artifacts}/jobs/{done.name.split('/')[1]}/")
        assert hashlib.sha256(cluster.read_object(output.path)).hexdigest() == output.sha256
        assert output.registry.state == pb.RegistryRecord.STATE_REGISTERED and output.registry.tx_hash
        provenance = cluster.read_object(output.registry.provenance_path)
        assert hashlib.sha256(provenance).hexdigest() == output.registry.provenance_sha256
        assert json.loads(provenance)["subject"][0]["digest"]["sha256"] == output.sha256
    from registry_client.client import RegistryClient

    client = RegistryClient.connect(cluster.chain_url, address=cluster.registry_address)
    for output in done.outputs:
        assert len(client.records_of(output.sha256)) == 1
    verify = [sys.executable, "-m", "quantledger.cli.main", "registry", "verify", done.outputs[1].path, "--json"]
    verify += ["--server", cluster.frontends[0].address]
    checked = subprocess.run(verify, env=cluster.env(cluster.tmp), capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["verdict"] == "VERDICT_VALID"


def test_a_worker_killed_mid_quantize_is_replaced_without_the_user(
    cluster: Cluster, models: Models, server: RunningServer
) -> None:
    """kill -9 of the worker running a quantize: the step times out on heartbeats, runs on the other
    worker, the job SUCCEEDS; the type finished before the kill is not redone."""
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.large), TYPES, skip_quality=True)
        running = _watch_until(
            b, job.name, lambda j: j.progress.current_quant_type == "Q4_K_M" and j.progress.tensors_done >= 3
        )
        assert [o.quant_type for o in running.outputs] == ["Q8_0"]
        first = cluster.objects(f"jobs/{job.name.split('/')[1]}/")
        victim = _worker_running(cluster, job.name)
        victim.kill()  # kill -9 of the worker process; its llama.cpp child dies with it (PR_SET_PDEATHSIG)
        victim.wait(timeout=10)
        cluster.workers.remove(victim)
        done = _watch_until(b, job.name, _ended)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    assert [o.quant_type for o in done.outputs] == TYPES
    after = cluster.objects(f"jobs/{job.name.split('/')[1]}/")
    q8_key = next(k for k in first if k.endswith("Q8_0.gguf"))
    assert after[q8_key]["LastModified"] == first[q8_key]["LastModified"]  # not uploaded again
    assert done.outputs[0].sha256 == running.outputs[0].sha256
    cluster.start_worker(f"worker-{len(cluster.workers) + 10}")  # back to two for the next tests
    with server.channel() as channel:  # the same job in embedded mode: the same bytes
        stub = pb_grpc.QuantizeServiceStub(channel)
        spec = pb.QuantizeJob(
            source=str(models.large), quant_types=TYPES, options=pb.QuantizeOptions(skip_quality=True)
        )
        embedded = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=spec)).name)
    assert [o.sha256 for o in done.outputs] == [o.sha256 for o in embedded.outputs]
    from registry_client.client import RegistryClient

    client = RegistryClient.connect(cluster.chain_url, address=cluster.registry_address)
    assert [len(client.records_of(o.sha256)) for o in done.outputs] == [1, 1]  # the retried step registered once


def _worker_running(cluster: Cluster, name: str) -> subprocess.Popen[bytes]:
    """The worker process whose identity Temporal shows on the job's running step."""
    import asyncio

    from temporalio.client import Client

    async def identity() -> str:
        client = await Client.connect(cluster.temporal.address)
        description = await client.get_workflow_handle(name.split("/")[1]).describe()
        return description.raw_description.pending_activities[0].last_worker_identity

    pid = int(asyncio.run(identity()).split("@")[0])
    return next(w for w in cluster.workers if w.pid == pid)


def test_cancel_mid_quantize_leaves_no_object_of_the_job(cluster: Cluster, models: Models) -> None:
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.large), ["Q4_K_M"], skip_quality=True)
        _watch_until(b, job.name, lambda j: j.progress.tensors_done >= 2)
        cancelled = b.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name), timeout=30)
    assert cancelled.state == pb.QuantizeJob.STATE_CANCELLED
    assert job_error_reason(cancelled) == "JOB_CANCELLED"
    job_prefix = f"{PREFIX}/jobs/{job.name.split('/')[1]}/"
    assert cluster.objects(f"jobs/{job.name.split('/')[1]}/") == {}
    uploads = cluster.s3_client().list_multipart_uploads(Bucket=cluster.s3.bucket, Prefix=job_prefix)
    assert not uploads.get("Uploads")


def test_imatrix_auto_calibrates_on_a_worker_and_gives_the_embedded_bytes(
    cluster: Cluster, server: RunningServer, models: Models
) -> None:
    """imatrix_path "auto" through a distributed frontend: the matrix computed on a worker (stage
    CALIBRATING: too short on this model to be caught by Watch every time; test_calibrate sees it in
    embedded mode) and put in the bucket, the outputs byte-identical to embedded mode's with the same
    matrix, and the provenance naming it as computed."""
    options = {"imatrix_path": "auto", "calibration_chunks": 2, "skip_quality": True}
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.f16), ["Q2_K", "Q8_0"], **options)
        seen = list(b.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=300))
    done = seen[-1]
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    matrix = done.imatrix
    assert not matrix.cached and matrix.calibration_sha256
    assert matrix.path.startswith(f"{cluster.artifacts}/imatrix/{matrix.sha256}/") and matrix.chunks == 2
    assert hashlib.sha256(cluster.read_object(matrix.path)).hexdigest() == matrix.sha256
    with server.channel() as channel:  # embedded mode computes the same matrix and the same outputs
        stub = pb_grpc.QuantizeServiceStub(channel)
        request = pb.QuantizeJob(
            source=str(models.f16), quant_types=["Q2_K", "Q8_0"], options=pb.QuantizeOptions(**options)
        )
        embedded = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=request)).name)
    assert embedded.state == pb.QuantizeJob.STATE_SUCCEEDED, embedded.error
    assert embedded.imatrix.sha256 == matrix.sha256
    assert [o.sha256 for o in done.outputs] == [o.sha256 for o in embedded.outputs]
    provenance = json.loads(cluster.read_object(done.outputs[0].registry.provenance_path))
    dependencies = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    computed = next(d for d in dependencies if d.get("name", "").startswith("imatrix:"))
    assert computed["digest"]["sha256"] == matrix.sha256 and computed["annotations"]["computed"] is True


def test_twenty_jobs_across_both_frontends_all_succeed_once(cluster: Cluster, models: Models) -> None:
    """20 small jobs submitted concurrently through both frontends end SUCCEEDED, none lost or duplicated;
    the same request_id sent to the two frontends is one job."""
    with _stubs(cluster) as (a, b):
        stubs = [a, b]

        def submit(i: int) -> str:
            stub = stubs[i % 2]
            return _create(stub, str(models.f16), ["Q8_0"], skip_quality=True, request_id=f"batch-{i}").name

        def resubmit(i: int) -> str:  # the same request through the other frontend
            stub = stubs[(i + 1) % 2]
            return _create(stub, str(models.f16), ["Q8_0"], skip_quality=True, request_id=f"batch-{i}").name

        with ThreadPoolExecutor(8) as pool:
            names = list(pool.map(submit, range(20)))
            again = list(pool.map(resubmit, range(20)))
        assert again == names and len(set(names)) == 20
        ended = [_watch_until(b, n, _ended) for n in names]
        assert all(j.state == pb.QuantizeJob.STATE_SUCCEEDED for j in ended), [j.error for j in ended]
        listed = set()
        token = ""
        while True:
            page = a.ListQuantizeJobs(pb.ListQuantizeJobsRequest(page_size=7, page_token=token), timeout=30)
            listed.update(j.name for j in page.jobs)
            token = page.next_page_token
            if not token:
                break
        assert set(names) <= listed


def test_a_temporal_restart_mid_job_does_not_stop_it(cluster: Cluster, models: Models) -> None:
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.large), ["Q8_0"], skip_quality=True)
        _watch_until(b, job.name, lambda j: j.progress.tensors_done >= 2)
        cluster.temporal.stop()
        with pytest.raises(grpc.RpcError) as refused:
            _create(a, str(models.f16), ["Q8_0"])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(refused.value) == "BACKEND_UNAVAILABLE"
        cluster.temporal.start()
        done = _watch_until(b, job.name, _ended)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error


def test_bad_store_credentials_stop_a_frontend_at_start(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = cluster.env(tmp_path)
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    argv = [
        sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(free_port()),
        "--http-port", "0", "--backend", "temporal", "--temporal", cluster.temporal.address,
        "--artifacts", cluster.artifacts,
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "ARTIFACT_STORE_DENIED" in done.stderr


def test_a_source_object_changed_in_the_store_fails_the_job_and_is_never_an_output(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """The bucket holds a source under the right digest but with other bytes: the download is refused
    (ARTIFACT_DIGEST_MISMATCH), retried once, and the job fails without outputs."""
    from quantledger.hf.manifest import build_manifest
    from quantledger.testing.synthetic_model import write_llama_gguf

    source = cluster.models.root / "tampered-f16.gguf"
    write_llama_gguf(source, n_embd=256, n_ff=512, n_layer=1, seed=77)
    manifest = build_manifest(source.parent, [source.name])
    key = f"{PREFIX}/sources/{manifest.root_digest}/{source.name}"
    marker = {source.name: manifest.files[0].sha256}
    client = cluster.s3_client()
    client.put_object(Bucket=cluster.s3.bucket, Key=key, Body=b"GGUF" + b"\0" * 1000)
    client.put_object(
        Bucket=cluster.s3.bucket,
        Key=f"{PREFIX}/sources/{manifest.root_digest}/.complete.json",
        Body=json.dumps(marker).encode(),
    )
    with _stubs(cluster) as (a, _b):
        job = _create(a, str(source), ["Q8_0"], skip_quality=True)
        done = _watch_until(a, job.name, _ended)
    assert done.state == pb.QuantizeJob.STATE_FAILED
    assert job_error_reason(done) == "ARTIFACT_DIGEST_MISMATCH"
    assert list(done.outputs) == []
    assert cluster.objects(f"jobs/{job.name.split('/')[1]}/") == {}
    assert _attempts(cluster, job.name) == 2  # the download was tried again once


def _attempts(cluster: Cluster, name: str) -> int:
    """How many times Temporal started the job's quantize step."""
    import asyncio

    from temporalio.client import Client

    async def count() -> int:
        client = await Client.connect(cluster.temporal.address)
        history = await client.get_workflow_handle(name.split("/")[1]).fetch_history()
        for event in history.events:
            if event.HasField("activity_task_failed_event_attributes"):
                started = event.activity_task_failed_event_attributes.started_event_id
                return next(
                    e.activity_task_started_event_attributes.attempt for e in history.events if e.event_id == started
                )
        return 0

    return asyncio.run(count())


def test_a_worker_says_insufficient_disk_before_a_step(tmp_path: pathlib.Path) -> None:
    from quantledger.artifacts.store import ArtifactStore
    from quantledger.config import Settings
    from quantledger.distributed.activities import WorkerContext
    from quantledger.errors import InsufficientDisk

    settings = Settings.from_env(home=tmp_path, disk_reserve_bytes=1 << 60)
    context = WorkerContext(settings, ArtifactStore.from_uri("s3://unused-bucket/x"), None)
    with pytest.raises(InsufficientDisk) as refused:
        context.make_room(1 << 20)
    assert refused.value.metadata["needed"] == str(1 << 20)
    assert int(refused.value.metadata["free"]) == 0


def test_a_hugging_face_folder_is_converted_by_a_worker_into_the_same_bytes(
    cluster: Cluster, server: RunningServer
) -> None:
    """A HF folder the frontend can read is stored once by its manifest's root digest, converted on a worker
    (the intermediate kept in the bucket's cache/), and quantized to the bytes embedded mode makes."""
    from hf_models import write_causal_folder

    folder = write_causal_folder(cluster.models.root / "hf-llama", "LlamaForCausalLM")
    with _stubs(cluster) as (a, b):
        job = _create(a, str(folder), ["Q8_0"], skip_quality=True)
        done = _watch_until(b, job.name, _ended)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    assert done.source_info.root_digest and done.source_info.kind == "hf_folder"
    assert cluster.objects(f"sources/{done.source_info.root_digest}/hf-llama/config.json")
    assert any(k.endswith(".gguf") for k in cluster.objects("cache/"))
    with server.channel() as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        embedded = stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(
                job=pb.QuantizeJob(
                    source=str(folder), quant_types=["Q8_0"], options=pb.QuantizeOptions(skip_quality=True)
                )
            )
        )
        embedded = wait_for_job(stub, embedded.name)
    assert embedded.source_info.root_digest == done.source_info.root_digest
    assert [o.sha256 for o in done.outputs] == [o.sha256 for o in embedded.outputs]
    assert pathlib.PurePosixPath(done.outputs[0].path).name == pathlib.Path(embedded.outputs[0].path).name


def test_a_frontend_stopped_mid_watch_loses_nothing(cluster: Cluster, models: Models) -> None:
    """Watch through frontend B, B is killed: the client watches on through A to the end; B comes back."""
    victim = cluster.frontends[1]
    with _stubs(cluster) as (a, b):
        job = _create(a, str(models.large), ["Q8_0"], skip_quality=True)
        stream = b.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=300)
        first = next(stream)
        assert first.name == job.name
        victim.stop(signal.SIGKILL)
        with pytest.raises(grpc.RpcError):
            list(stream)
        rest = list(a.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=300))
    assert rest[-1].state == pb.QuantizeJob.STATE_SUCCEEDED
    assert rest[0].progress.fraction >= first.progress.fraction
    cluster.frontends.remove(victim)
    cluster.start_frontend("frontend-b2")


def test_every_catalogue_type_is_the_same_bytes_in_distributed_and_embedded_mode(
    cluster: Cluster, server: RunningServer, models: Models
) -> None:
    """Reproduction across modes (docs/REPRODUCE.md): one job of every type the installed llama.cpp writes,
    with one importance matrix, gives each type the same SHA-256 on the workers as in embedded mode."""
    import numpy as np

    from quantledger.gguf.reader import read_gguf_header
    from quantledger.quantize.catalogue import catalogue
    from quantledger.quantize.imatrix import write_imatrix_gguf

    matrix = models.root / "every-type.imatrix.gguf"
    rng = np.random.default_rng(7)
    tensors = read_gguf_header(models.f16).tensors
    write_imatrix_gguf(matrix, {t.name: np.exp(rng.standard_normal(t.shape[0])) for t in tensors if len(t.shape) == 2})
    types = [t.name for t in catalogue()]
    options = {"imatrix_path": str(matrix), "skip_quality": True}
    with _stubs(cluster) as (a, _b):
        job = _create(a, str(models.f16), types, **options)
        done = _watch_until(a, job.name, _ended, timeout=900)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    with server.channel() as channel:
        embedded_stub = pb_grpc.QuantizeServiceStub(channel)
        embedded = _create(embedded_stub, str(models.f16), types, **options)
        embedded = wait_for_job(embedded_stub, embedded.name, timeout=900)
    assert embedded.state == pb.QuantizeJob.STATE_SUCCEEDED, embedded.error
    distributed = {o.quant_type: o.sha256 for o in done.outputs}
    assert len(distributed) == len(types) >= 30
    assert distributed == {o.quant_type: o.sha256 for o in embedded.outputs}
