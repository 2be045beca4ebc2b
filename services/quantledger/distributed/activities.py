"""The steps of a distributed job, run by ``quantledger worker`` as Temporal activities.

Each step stages what it needs from the artifact store into the worker's scratch directory (verifying
every SHA-256 on the way), runs the same stage code as embedded mode (jobs/output_stage.py,
jobs/stages.py: the same llama.cpp worker processes, so outputs are byte-identical), uploads what it made
(hashing while the bytes flow) and removes its scratch files. Sources (and a HF source's converted
intermediate) stay cached in scratch by digest for the next step on this worker, evicted when a step
needs the room.

Progress reaches Temporal as heartbeats (``contract.Heartbeat``) at least every ``BEAT_SECONDS``;
a cancel arrives with the next heartbeat, kills the step's llama.cpp process group, aborts an upload
in flight (no partial object is left in the store) and removes the scratch files. A typed error leaves as
an ``ApplicationError`` whose type is its reason and whose first detail is the JobError.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from quantledger.artifacts.store import ArtifactStore
from quantledger.config import Settings
from quantledger.distributed import contract
from quantledger.distributed.contract import Prepared, StepInput, StoredFile
from quantledger.errors import ArtifactDigestMismatch, InsufficientDisk, Interrupted, QuantledgerError
from quantledger.hf.cache import ConversionCache
from quantledger.hf.pipeline import classify
from quantledger.jobs.calibration import calibrate
from quantledger.jobs.model import Job, JobSpec, OutputFile, RegistryEntry, Scope
from quantledger.jobs.output_stage import complete_output, quantize_output
from quantledger.jobs.progress import JobTimeline
from quantledger.jobs.registration import registration_pending
from quantledger.jobs.stages import check_quality_gate, evaluate_outputs, prepare_intermediate
from quantledger.jobs.store import SqliteJobStore
from quantledger.quantize.estimate import free_bytes
from quantledger.quantize.plan import QuantizePlan, make_plan
from quantledger.quantize.runner import WorkerProcess
from quantledger.quantize.sources import GgufSource, open_source
from quantledger.registry.provenance import SUFFIX, build_statement, canonical_bytes
from quantledger.registry.registrar import PENDING, UNREGISTERED, Registrar

log = logging.getLogger(__name__)
T = TypeVar("T")

BEAT_SECONDS = 0.5  # a heartbeat at least this often: how soon a cancel reaches a step


class WorkerContext:
    """What every step of this worker shares: settings, the store, scratch space and the registrar."""

    def __init__(self, settings: Settings, store: ArtifactStore, registrar: Registrar | None, threads: int = 0) -> None:
        self.settings = settings
        self.store = store
        self.registrar = registrar
        self.threads = threads
        self.scratch = (
            pathlib.Path(settings.scratch_dir).resolve() if settings.scratch_dir else settings.home / "scratch"
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        (settings.home / "logs").mkdir(parents=True, exist_ok=True)
        # measured rates (ETAs) of this worker, and the HF conversions it made (also in the store's cache/)
        self.job_store = SqliteJobStore(str(settings.home / "worker.sqlite3"))
        self.cache = ConversionCache(self.scratch / "conversion-cache", settings.conversion_cache_bytes)
        self._staging: dict[str, asyncio.Lock] = {}
        self._in_use: dict[pathlib.Path, int] = {}

    def step_settings(self) -> Settings:
        """The settings a step runs under: every path it is given lies in scratch."""
        return dataclasses.replace(self.settings, allowed_roots=(self.scratch,), output_roots=(self.scratch,))

    # ------------------------------------------------------------ scratch space

    def make_room(self, needed: int) -> None:
        """INSUFFICIENT_DISK unless ``needed`` bytes fit in scratch, after evicting cached inputs no step uses."""
        reserve = self.settings.disk_reserve_bytes
        if free_bytes(self.scratch, reserve) >= needed:
            return
        cached = sorted(
            (p for p in (self.scratch / "inputs").glob("*") if p.is_dir() and not self._in_use.get(p)),
            key=lambda p: p.stat().st_mtime,
        )
        for folder in cached:
            shutil.rmtree(folder, ignore_errors=True)
            if free_bytes(self.scratch, reserve) >= needed:
                return
        free = free_bytes(self.scratch, reserve)
        raise InsufficientDisk(
            f"this step needs {needed} bytes of scratch space but {self.scratch} has {free} free "
            f"(after a reserve of {reserve}) on worker {_worker_name()}",
            needed=str(needed),
            free=str(free),
        )

    @contextlib.asynccontextmanager
    async def inputs(self, group: str, files: list[StoredFile], host: ActivityHost) -> AsyncIterator[pathlib.Path]:
        """The folder holding ``files`` (downloaded and verified once per worker), kept while in use."""
        folder = self.scratch / "inputs" / group
        lock = self._staging.setdefault(group, asyncio.Lock())
        self._in_use[folder] = self._in_use.get(folder, 0) + 1
        try:
            async with lock:
                marker = folder / ".complete"
                if not marker.is_file():
                    self.make_room(sum(f.size_bytes for f in files))
                    folder.mkdir(parents=True, exist_ok=True)
                    for stored in files:
                        target = folder / stored.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        await host.stoppable(
                            partial(self.store.get_file, stored.key, target, expected_sha256=stored.sha256)
                        )
                    marker.touch()
                else:
                    marker.touch()  # most recently used: evicted last
            yield folder
        finally:
            self._in_use[folder] -= 1


def _worker_name() -> str:
    import socket

    return socket.gethostname()


class ActivityHost:
    """The engine's side of the stage code (jobs/stages.py ``StageHost``) for one step: settings of the
    step, the worker's caches, progress as heartbeats, and the worker processes a cancel must kill."""

    def __init__(self, context: WorkerContext, job: Job) -> None:
        self.context = context
        self.settings = context.step_settings()
        self.cache = context.cache
        self._job = job
        self._timeline: JobTimeline | None = None
        self._workers: list[WorkerProcess] = []
        self._seq = 0
        self.stop = threading.Event()

    @property
    def store(self) -> SqliteJobStore:
        return self.context.job_store

    def settings_for(self, job: Job) -> Settings:
        return self.settings

    def timeline(self, job: Job) -> JobTimeline:
        if self._timeline is None:
            self._timeline = JobTimeline(job, self.context.job_store, since=job.start_time)
        return self._timeline

    def touch(self, job: Job, *, save: bool = True) -> None:
        self._job = job  # the stage code's copy of the job (its stage, as CALIBRATING sets it) is what beats
        self.beat()

    def beat(self) -> None:
        self._seq += 1
        job = self._job
        activity.heartbeat(contract.Heartbeat(job.stage.value, dataclasses.asdict(job.progress), self._seq))

    def worker_for(self, job: Job, request: dict[str, Any]) -> WorkerProcess:
        log_path = str(self.context.settings.home / "logs" / f"{job.id}.log")
        worker = WorkerProcess(request, log_path, timeout=self.settings.stage_timeout_seconds)
        self._workers.append(worker)
        return worker

    def kill(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.kill()

    async def stoppable(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread; a cancel sets ``stop`` (uploads and downloads abort on it) and waits for the
        thread to finish cleaning up before the cancel goes on."""
        future = asyncio.get_running_loop().run_in_executor(None, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.set()
            with contextlib.suppress(BaseException):
                await future
            raise


@contextlib.asynccontextmanager
async def _step(context: WorkerContext, step: StepInput) -> AsyncIterator[tuple[ActivityHost, Job, pathlib.Path]]:
    """The host, the job and a scratch folder of one step; typed errors leave as ApplicationErrors, a cancel
    kills what the step started, and the scratch folder goes whatever happens."""
    job = Job.from_dict(step.job)
    host = ActivityHost(context, job)
    work = context.scratch / "steps" / f"{job.id}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)

    async def beat_forever() -> None:
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            host.beat()

    beating = asyncio.create_task(beat_forever())
    try:
        yield host, job, work
    except asyncio.CancelledError:
        host.kill()
        raise
    except QuantledgerError as exc:
        host.kill()
        raise _application_error(exc) from None
    finally:
        beating.cancel()
        shutil.rmtree(work, ignore_errors=True)


def _application_error(exc: QuantledgerError) -> ApplicationError:
    details = contract.error_details(exc.code, exc.reason, exc.message, exc.metadata)
    # a digest that does not match is retried once (another download), then fails the step for good
    retry_once = isinstance(exc, ArtifactDigestMismatch) and activity.info().attempt < 2
    non_retryable = isinstance(exc, ArtifactDigestMismatch) and not retry_once
    return ApplicationError(exc.message, details, type=exc.reason, non_retryable=non_retryable)


class JobActivities:
    """The activities of one worker (``quantledger worker``), bound to its context."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    def all(self) -> list[Callable[..., Any]]:
        return [self.prepare_source, self.quantize_output, self.evaluate_output, self.register_outputs, self.delete]

    # ---------------------------------------------------------------- prepare

    @activity.defn(name=contract.PREPARE)
    async def prepare_source(self, step: StepInput) -> Prepared:
        """Check the source is in the store; a HF source is converted (or found in the cache) here."""
        started = time.time()
        context = self.context
        async with _step(context, step) as (host, job, work):
            for stored in step.start.source:
                if await asyncio.to_thread(context.store.stat, stored.key) is None:
                    raise Interrupted(
                        f"the job's source file {stored.name} is no longer in the artifact store "
                        f"({context.store.uri_for(stored.key)}); resubmit the job"
                    )
            if step.start.source_kind != "hf":
                prepared = Prepared(job=step.job, started=started)
            else:
                prepared = await self._convert(host, job, step, started)
            if job.spec.options.imatrix_auto:
                prepared = await self._calibrate(host, step, prepared, work)
            return prepared

    async def _calibrate(self, host: ActivityHost, step: StepInput, prepared: Prepared, work: pathlib.Path) -> Prepared:
        """imatrix_path "auto": stage CALIBRATING on this worker (through its own matrix cache, as embedded
        mode computes it: jobs/calibration.py) when a requested type gains from a matrix; the matrix goes to
        the store's ``imatrix/<sha256>/`` and every later step stages it from there."""
        job = Job.from_dict(prepared.job)
        planning = dataclasses.replace(step, job=prepared.job, intermediate=prepared.intermediate)
        async with self._planned(host, job, planning, work) as (local, plan):
            if not plan.calibrate:
                return prepared
            info = local.source_info
            if info is not None and not info.root_digest:  # the matrix cache is keyed by the source's digest
                digest = await asyncio.to_thread(_sha256, plan.source.path)
                local.source_info = dataclasses.replace(info, root_digest=digest)
            computed = await calibrate(host, local, plan, _nothing())
        path = pathlib.Path(computed.path)
        files = [(path.name, path, computed.sha256)]
        stored = await host.stoppable(
            partial(self.context.store.put_tree_if_absent, f"imatrix/{computed.sha256}/", files)
        )
        imatrix = StoredFile(stored[0].key, path.name, path.stat().st_size, computed.sha256)
        job.imatrix = dataclasses.replace(computed, path=stored[0].uri)
        job.progress = local.progress
        return dataclasses.replace(prepared, job=job.to_dict(), imatrix=imatrix)

    async def _convert(self, host: ActivityHost, job: Job, step: StepInput, started: float) -> Prepared:
        """The HF source (staged from the store, or fetched from the hub by this worker) converted to GGUF,
        through this worker's conversion cache; the intermediate goes to the store's ``cache/``."""
        context = self.context
        start = step.start
        original_info = job.source_info
        async with contextlib.AsyncExitStack() as stack:
            entry = job.spec.source  # a hub id: the worker fetches it (docs/SCALE_OUT.md)
            if start.source:
                folder = await stack.enter_async_context(
                    context.inputs(_source_group(start.source_prefix), start.source, host)
                )
                entry = str(folder / _top_folder(start.source[0].name))
            local = await self._localized(job, step, entry, None, stack, host)
            hf = await asyncio.to_thread(classify, entry, (context.scratch,))
            assert hf is not None, "a HF source staged in scratch is a HF folder or a hub id"
            pins = stack.enter_context(contextlib.ExitStack())
            source, stem = await prepare_intermediate(host, local, hf, pins)
            digest = await asyncio.to_thread(_sha256, source.path)
            key = f"cache/{digest}.gguf"
            if await asyncio.to_thread(context.store.stat, key) is None:
                await host.stoppable(partial(context.store.put_file, key, source.path))
            intermediate = StoredFile(key=key, name=stem, size_bytes=source.path.stat().st_size, sha256=digest)
        info = local.source_info
        assert info is not None and original_info is not None
        job.source_info = dataclasses.replace(info, path=original_info.path)  # the client's path, not scratch
        job.progress = local.progress
        return Prepared(job=job.to_dict(), started=started, intermediate=intermediate)

    async def _localized(
        self,
        job: Job,
        step: StepInput,
        entry: str,
        out: pathlib.Path | None,
        stack: contextlib.AsyncExitStack,
        host: ActivityHost,
    ) -> Job:
        """A copy of ``job`` whose paths lie in scratch: the source at ``entry``, the staged imatrix, LoRA and
        evaluation text (kept staged until ``stack`` closes)."""
        start = step.start
        context = self.context
        paths: dict[str, str] = {"imatrix_path": "", "eval_text_path": "", "lora_dir": "", "calibration_path": ""}
        staged_files = (
            ("imatrix_path", step.imatrix or start.imatrix),  # the matrix prepare_source computed, or the client's
            ("eval_text_path", start.eval_text),
            ("calibration_path", start.calibration),
        )
        for field_name, stored in staged_files:
            if stored is not None:
                where = await stack.enter_async_context(context.inputs(f"file-{stored.sha256}", [stored], host))
                paths[field_name] = str(where / stored.name)
        if start.lora:
            group = "lora-" + hashlib.sha256("".join(f.sha256 for f in start.lora).encode()).hexdigest()[:32]
            where = await stack.enter_async_context(context.inputs(group, start.lora, host))
            paths["lora_dir"] = str(where / _top_folder(start.lora[0].name))
        options = dataclasses.replace(
            job.spec.options,
            output_dir="",  # make_plan puts outputs in the step folder it is given (inside the data dir)
            overwrite=True,
            threads=job.spec.options.threads or context.threads,
            imatrix_path=paths["imatrix_path"] or ("auto" if job.spec.options.imatrix_auto else ""),
            calibration_path=paths["calibration_path"],
            eval_text_path=paths["eval_text_path"],
            lora_dir=paths["lora_dir"],
        )
        if step.imatrix is not None:  # computed: the steps after CALIBRATING plan with the file (as embedded)
            options = dataclasses.replace(options, calibration_path="", calibration_chunks=0, calibration_ctx=0)
        local = dataclasses.replace(job, spec=JobSpec(entry, job.spec.quant_types, options), scope=Scope())
        local.output_dir = str(out) if out is not None else ""
        return local

    @contextlib.asynccontextmanager
    async def _planned(
        self, host: ActivityHost, job: Job, step: StepInput, work: pathlib.Path
    ) -> AsyncIterator[tuple[Job, QuantizePlan]]:
        """The localized job and its plan, with the source (or a HF job's intermediate) staged in scratch."""
        context = self.context
        start = step.start
        async with contextlib.AsyncExitStack() as stack:
            source: GgufSource | None = None
            stem: str | None = None
            if step.intermediate is not None:
                staged = context.inputs(f"file-{step.intermediate.sha256}", [step.intermediate], host)
                folder = await stack.enter_async_context(staged)
                path = folder / step.intermediate.name
                source = await asyncio.to_thread(open_source, str(path), (context.scratch,))
                stem = step.intermediate.name
                entry = job.spec.source  # the HF model as the client named it; the intermediate is ``source``
            else:
                staged = context.inputs(_source_group(start.source_prefix), start.source, host)
                folder = await stack.enter_async_context(staged)
                entry = str(folder / start.source[0].name)
            local = await self._localized(job, step, entry, work, stack, host)
            plan = await asyncio.to_thread(
                partial(make_plan, source=source, stem=stem), local.spec, host.settings, work, job.id
            )
            yield local, plan

    # ---------------------------------------------------------------- quantize

    @activity.defn(name=contract.QUANTIZE)
    async def quantize_output(self, step: StepInput) -> dict[str, Any]:
        """Quantize one type, hash it, upload it to ``jobs/<job id>/``; the artifact with its s3:// paths."""
        context = self.context
        async with _step(context, step) as (host, job, work), self._planned(host, job, step, work) as (local, plan):
            output = plan.outputs[step.index]
            context.make_room(plan.source.header.file_size)  # an output is never larger than its source
            events, seconds = await quantize_output(host, local, plan, step.index, output)
            await complete_output(host, local, plan, output, events, seconds)
            made = next(a for a in local.outputs if a.quant_type == output.quant_type.name)
            files = []
            for written in made.files or (OutputFile(made.path, made.size_bytes, made.sha256),):
                name = pathlib.Path(written.path).name
                stored = await host.stoppable(
                    partial(context.store.put_file, f"jobs/{job.id}/{name}", pathlib.Path(written.path))
                )
                if stored.sha256 != written.sha256:
                    raise ArtifactDigestMismatch(
                        f"{name} changed on this worker's disk between hashing and upload "
                        f"({written.sha256} then {stored.sha256})",
                        key=stored.key,
                    )
                files.append(OutputFile(path=stored.uri, size_bytes=written.size_bytes, sha256=written.sha256))
            artifact = dataclasses.replace(made, path=files[0].path, files=tuple(files))
            return {"artifact": dataclasses.asdict(artifact), "progress": dataclasses.asdict(local.progress)}

    # ---------------------------------------------------------------- evaluate

    @activity.defn(name=contract.EVALUATE)
    async def evaluate_output(self, step: StepInput) -> dict[str, Any]:
        """The quality report of output ``index`` against the unquantized model, and the job's progress."""
        context = self.context
        async with _step(context, step) as (host, job, work), self._planned(host, job, step, work) as (local, plan):
            artifact = job.outputs[step.index]
            downloads = [
                StoredFile(
                    key=context.store.key_of(f.path),
                    name=pathlib.Path(f.path).name,
                    size_bytes=f.size_bytes,
                    sha256=f.sha256,
                )
                for f in artifact.files
            ]
            async with context.inputs(f"output-{artifact.sha256}", downloads, host) as folder:
                files = tuple(
                    dataclasses.replace(f, path=str(folder / d.name))
                    for f, d in zip(artifact.files, downloads, strict=True)
                )
                local.outputs = [dataclasses.replace(artifact, path=files[0].path, files=files)]
                await evaluate_outputs(host, local, plan)
            quality = local.outputs[0].quality
            return {
                "quality": dataclasses.asdict(quality) if quality is not None else None,
                "progress": dataclasses.asdict(local.progress),
            }

    # ---------------------------------------------------------------- register

    @activity.defn(name=contract.REGISTER)
    async def register_outputs(self, step: StepInput) -> dict[str, Any]:
        """Provenance JSON beside every output in the store, then the on-chain records (PENDING when the
        chain is away: the workflow tries again later); and the quality gate's verdict."""
        context = self.context
        registrar = context.registrar
        async with _step(context, step) as (host, job, _work):
            info = job.source_info
            assert info is not None
            start = step.start
            matrix = step.imatrix or start.imatrix  # computed by prepare_source, or the client's
            for index, artifact in enumerate(list(job.outputs)):
                if artifact.registry is not None:
                    continue
                statement = build_statement(
                    job,
                    artifact,
                    info,
                    imatrix_sha256=matrix.sha256 if matrix is not None else "",
                    lora_sha256=start.lora_sha256,
                )
                data = canonical_bytes(statement)
                key = context.store.key_of(artifact.path) + SUFFIX
                stored = await host.stoppable(partial(context.store.put_bytes, key, data))
                entry = RegistryEntry(
                    state=PENDING if registrar is not None else UNREGISTERED,
                    provenance_path=stored.uri,
                    provenance_sha256=hashlib.sha256(data).hexdigest(),
                )
                job.outputs[index] = dataclasses.replace(artifact, registry=entry)
            if registrar is not None:
                job.outputs = await asyncio.to_thread(registrar.register, job, job.outputs)
            gate_error = None
            try:
                check_quality_gate(job)
            except QuantledgerError as exc:
                gate_error = contract.error_details(exc.code, exc.reason, exc.message, exc.metadata)
            return {
                "outputs": [dataclasses.asdict(a) for a in job.outputs],
                "pending": registration_pending(job),
                "gate_error": gate_error,
            }

    # ---------------------------------------------------------------- delete

    @activity.defn(name=contract.DELETE)
    async def delete(self, step: StepInput) -> dict[str, Any]:
        """Delete the job's objects (outputs and their provenance); the bytes freed."""
        context = self.context
        async with _step(context, step) as (host, job, _work):
            freed = await host.stoppable(partial(context.store.delete_prefix, f"jobs/{job.id}/"))
            log.info("%s: outputs deleted (%s), %s bytes freed", job.name, step.by, freed)
            return {"freed_bytes": int(freed or 0)}


async def _nothing() -> None:
    """No source manifest to wait for: a distributed job's source digest is known before its steps."""
    return None


def _top_folder(name: str) -> str:
    """The folder a staged tree's file lies in (``model/config.json`` -> ``model``)."""
    return name.split("/", 1)[0]


def _source_group(prefix: str) -> str:
    """The scratch folder of a staged source: its store prefix (``sources/<root digest>/``) as one name."""
    return prefix.strip("/").replace("/", "-")


def _sha256(path: pathlib.Path) -> str:
    from quantledger.hashing import sha256_file

    return sha256_file(path)
