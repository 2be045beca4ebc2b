"""The job engine: validate, queue, run, watch and cancel quantization jobs.

Runs inside an asyncio loop. Jobs wait in the store as QUEUED; up to ``max_parallel_jobs`` run at
once, each output in its own worker process (see quantize/runner.py). A running job's progress
lives in memory and reaches the store every couple of seconds; state changes reach it at once.
Cancel kills the worker's process group and removes partial files; shutdown does the same to every
running job and marks it INTERRUPTED; a restart after a kill -9 marks jobs left RUNNING the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import logging
import os
import pathlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

from quantledger.config import Settings
from quantledger.errors import (
    InsufficientDisk,
    Interrupted,
    InvalidArgument,
    JobAlreadyFinished,
    JobNotFound,
    JobTimeout,
    QuantizeFailed,
    QuantledgerError,
    RequestIdConflict,
    ValidationTimeout,
)
from quantledger.gguf.reader import read_gguf_header
from quantledger.hashing import sha256_file
from quantledger.hf.cache import ConversionCache
from quantledger.hf.pipeline import (
    classify,
)
from quantledger.jobs.model import (
    Artifact,
    Job,
    JobError,
    JobSpec,
    JobState,
    OutputFile,
    Progress,
    Stage,
)
from quantledger.jobs.stages import describe_hf_job, estimate_hf, evaluate_outputs, prepare_intermediate
from quantledger.jobs.store import DuplicateRequestId, JobStore
from quantledger.paging import PageSize, PageTokens
from quantledger.quantize.catalogue import QuantType, catalogue
from quantledger.quantize.estimate import Estimate, estimate, throughput_for
from quantledger.quantize.llama_log import fallback_count
from quantledger.quantize.plan import (
    PARTIAL_SUFFIX,
    PlannedOutput,
    QuantizePlan,
    make_plan,
    refuse_another_jobs_output,
)
from quantledger.quantize.runner import WorkerProcess
from quantledger.quantize.sources import GgufSource
from quantledger.registry.registrar import PENDING, Registrar
from quantledger.registry.stage import HashingStopped, apply_source_manifest, attach_provenance, source_manifest

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_PAGES = PageSize(default=50, largest=1000)
MAX_REQUEST_ID_LENGTH = 128
PROGRESS_SAVE_SECONDS = 2.0
STORE_FLUSH_SECONDS = 2.0
VALIDATION_THREADS = 4
# Runs shorter than this say more about process start-up than about throughput.
MIN_BYTES_FOR_THROUGHPUT = 16 << 20


class JobEngine:
    """Owns every job of one data dir."""

    def __init__(self, settings: Settings, store: JobStore, registrar: Registrar | None = None) -> None:
        self._settings = settings
        self._store = store
        self.settings = settings
        self.registrar = registrar
        self._pending_registration: set[str] = set()
        self._retrier: asyncio.Task[None] | None = None
        self.page_tokens = PageTokens.in_home(settings.home)
        self.cache = ConversionCache(settings.home / "conversion-cache", settings.conversion_cache_bytes)
        self._live: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._workers: dict[str, WorkerProcess] = {}
        self._stop_reason: dict[str, str] = {}
        self._changed: asyncio.Event | None = None  # set (and replaced) on every job change
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # checking a request's files (paths, headers, model folders) runs here, never on the shared
        # default executor: a client whose files are slow to read cannot starve other RPCs
        self._validation = concurrent.futures.ThreadPoolExecutor(VALIDATION_THREADS, thread_name_prefix="validate")
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def store(self) -> JobStore:
        return self._store

    async def start(self) -> None:
        """Recover from an unclean stop and start taking queued jobs."""
        self._settings.ensure_dirs()
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.recover_interrupted()
        self.cache.remove_partials()  # conversions a dead server left half-written (no job runs yet)
        self._scheduler = asyncio.create_task(self._schedule(), name="quantledger-scheduler")
        self._flusher = asyncio.create_task(self._flush_store(), name="quantledger-store-flush")
        if self.registrar is not None:
            self._pending_registration.update(
                job.id
                for state in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.FAILED)
                for job in self._store.with_state(state)
                if _registration_pending(job)
            )
            self._retrier = asyncio.create_task(self._retry_registrations(), name="quantledger-registrar")

    def recover_interrupted(self) -> list[str]:
        """Jobs a dead server left RUNNING become FAILED (INTERRUPTED); their partial files go."""
        recovered = []
        for job in self._store.with_state(JobState.RUNNING):
            self._remove_partials(job)
            self._finish(
                job,
                JobState.FAILED,
                JobError.of(
                    Interrupted(
                        "the server stopped while this job was running; outputs finished before "
                        "that are kept, resubmit for the rest"
                    )
                ),
            )
            recovered.append(job.id)
        return recovered

    async def shutdown(self) -> None:
        """Stop every running job cleanly (worker killed, partial files removed, job INTERRUPTED)."""
        self._stopping = True
        for background in (self._scheduler, self._retrier, self._flusher):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        tasks = list(self._tasks.items())
        for job_id, task in tasks:
            self._stop_reason[job_id] = "shutdown"
            worker = self._workers.get(job_id)
            if worker is not None:
                worker.kill()
            task.cancel()
        if tasks:
            await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        self._validation.shutdown(wait=False, cancel_futures=True)
        self._store.flush()

    # ---------------------------------------------------------------- API

    async def _validated(self, deadline: float | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the validation pool, within the client's deadline (seconds left; None = none
        given) and the server's own bound, whichever is shorter."""
        limit = self._settings.validation_timeout_seconds
        if deadline is not None:
            limit = min(limit, max(0.0, deadline))
        future = asyncio.get_running_loop().run_in_executor(self._validation, fn, *args)
        try:
            return await asyncio.wait_for(future, timeout=limit)
        except TimeoutError:
            raise ValidationTimeout(
                f"checking the request's files took longer than {limit:.1f} s; the files may be on a slow or "
                "blocking file system, or the server is busy checking other requests",
                limit_seconds=f"{limit:.1f}",
            ) from None

    async def create(self, spec: JobSpec, request_id: str = "", deadline: float | None = None) -> Job:
        """Validate ``spec`` completely, then queue a job (or return the one ``request_id`` made).

        ``deadline`` is the time the client gives the call, in seconds from now (None: no deadline)."""
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        spec.check_bounds()
        fingerprint = spec.fingerprint()
        if request_id:
            existing = self._existing_for(request_id, fingerprint)
            if existing is not None:
                return existing
        job_id = uuid.uuid4().hex
        hf = await self._validated(deadline, classify, spec.source, self._settings.allowed_roots)
        if hf is not None:
            job = await self._validated(deadline, describe_hf_job, self._settings, spec, request_id, job_id, hf)
            return await self._queue(job, fingerprint)
        if spec.options.lora_dir:
            raise InvalidArgument("lora_dir needs a Hugging Face source (a model folder or repo id), not a GGUF")
        plan = await self._validated(
            deadline, make_plan, spec, self._settings, self._settings.artifacts / job_id, job_id
        )
        predicted = await self._estimate(plan)
        if not predicted.fits_on_disk:
            raise InsufficientDisk(
                f"outputs need {predicted.disk_bytes_needed} bytes but {predicted.output_dir} has "
                f"{predicted.disk_bytes_free} free (after a reserve of {self._settings.disk_reserve_bytes})",
                needed=str(predicted.disk_bytes_needed),
                free=str(predicted.disk_bytes_free),
            )
        job = Job(
            id=job_id,
            spec=spec,
            request_id=request_id,
            create_time=time.time(),
            source_info=plan.source.info,
            output_dir=str(plan.output_dir),
            progress=Progress(
                bytes_total=plan.source.header.tensor_bytes * len(plan.outputs),
                outputs_total=len(plan.outputs),
                eta_seconds=predicted.seconds,
            ),
        )
        return await self._queue(job, fingerprint)

    async def _queue(self, job: Job, fingerprint: str) -> Job:
        try:
            self._store.insert(job, fingerprint)
        except DuplicateRequestId:
            existing = self._existing_for(job.request_id, fingerprint)
            if existing is None:  # pragma: no cover - the row that clashed cannot vanish
                raise
            return existing
        log.info("created %s: %s -> %s", job.name, job.spec.source, ",".join(job.spec.quant_types))
        self._notify()
        return copy.deepcopy(job)

    def _existing_for(self, request_id: str, fingerprint: str) -> Job | None:
        found = self._store.find_by_request_id(request_id)
        if found is None:
            return None
        job, stored_fingerprint = found
        if stored_fingerprint != fingerprint:
            raise RequestIdConflict(
                f"request_id {request_id!r} was used for {job.name} with another request body",
                job=job.name,
            )
        return self.get(job.id)

    def get(self, job_id: str) -> Job:
        live = self._live.get(job_id)
        if live is not None:
            return copy.deepcopy(live)
        job = self._store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job jobs/{job_id}", name=f"jobs/{job_id}")
        return job

    def list_jobs(self, page_size: int, page_token: str) -> tuple[list[Job], str]:
        """Jobs newest first, one page, and the token of the next page ("" after the last)."""
        limit = JOB_PAGES.of(page_size)
        jobs, next_seq = self._store.page(limit, self.page_tokens.decode("jobs", page_token))
        jobs = [copy.deepcopy(self._live[j.id]) if j.id in self._live else j for j in jobs]
        return jobs, (self.page_tokens.encode("jobs", next_seq) if next_seq is not None else "")

    def list_quant_types(self, page_size: int, page_token: str) -> tuple[list[QuantType], str]:
        """The installed llama.cpp's types, one page (0 = all of them), and the next page's token."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        types = catalogue()
        start = self.page_tokens.decode("quant-types", page_token) or 0
        end = len(types) if page_size == 0 else min(len(types), start + page_size)
        return list(types[start:end]), (self.page_tokens.encode("quant-types", end) if end < len(types) else "")

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state.finished:
            raise JobAlreadyFinished(f"{job.name} already ended ({job.state.value}); nothing to cancel", name=job.name)
        task = self._tasks.get(job_id)
        if task is None:
            self._finish(job, JobState.CANCELLED, _cancelled())
            self._notify()
            return self.get(job_id)
        self._stop_reason[job_id] = "cancel"
        worker = self._workers.get(job_id)
        if worker is not None:
            worker.kill()
        task.cancel()
        await asyncio.wait([task], timeout=10)
        return self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """Yield the job now and after every change, until it has ended."""
        assert self._changed is not None, "engine not started"
        job = self.get(job_id)
        yield job
        while not job.state.finished:
            changed = self._changed
            if self._version(job_id) == job.version:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=5)
            latest = self.get(job_id)
            if latest.version != job.version:
                job = latest
                yield job

    async def estimate(self, spec: JobSpec, deadline: float | None = None) -> Estimate:
        spec.check_bounds()
        hf = await self._validated(deadline, classify, spec.source, self._settings.allowed_roots)
        if hf is not None:
            return await self._validated(deadline, estimate_hf, self._settings, spec, hf, self._store)
        plan = await self._validated(deadline, make_plan, spec, self._settings, self._settings.artifacts / "<job id>")
        return await self._estimate(plan)

    # ---------------------------------------------------------------- internals

    async def _estimate(self, plan: QuantizePlan) -> Estimate:
        log_path = self._settings.logs / f"estimate-{uuid.uuid4().hex}.log"
        result = await estimate(plan, self._store, str(log_path), self._settings.disk_reserve_bytes)
        log_path.unlink(missing_ok=True)
        return result

    def _version(self, job_id: str) -> int:
        live = self._live.get(job_id)
        if live is not None:
            return live.version
        stored = self._store.get(job_id)
        return stored.version if stored is not None else -1

    def _notify(self) -> None:
        """Wake the scheduler and every watcher."""
        if self._wakeup is not None:
            self._wakeup.set()
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def worker_for(self, job: Job, request: dict[str, Any]) -> WorkerProcess:
        """A worker for ``job`` that cancel and shutdown can kill, stopped after the stage time bound."""
        log_path = str(self._settings.logs / f"{job.id}.log")
        worker = WorkerProcess(request, log_path, timeout=self._settings.stage_timeout_seconds)
        self._workers[job.id] = worker
        return worker

    def touch(self, job: Job, *, save: bool = True) -> None:
        """Record a change of ``job`` (saved unless ``save`` is false) and wake its watchers."""
        self._touch(job, save=save)

    def _touch(self, job: Job, *, save: bool = True) -> None:
        job.version += 1
        if save:
            self._store.save(job)
        self._notify()

    def _finish(self, job: Job, state: JobState, error: JobError | None) -> None:
        job.state = state
        job.stage = Stage.NONE
        job.error = error
        job.end_time = time.time()
        job.progress.current_tensor = ""
        job.progress.eta_seconds = None
        job.version += 1
        self._store.save(job)

    async def _schedule(self) -> None:
        assert self._wakeup is not None
        while not self._stopping:
            self._wakeup.clear()
            free = self._settings.max_parallel_jobs - len(self._tasks)
            if free > 0:
                for job in self._store.with_state(JobState.QUEUED)[:free]:
                    if job.id not in self._tasks:
                        self._start(job)
            await self._wakeup.wait()

    def _start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        job.stage = Stage.QUANTIZING
        job.start_time = time.time()
        self._live[job.id] = job
        self._touch(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    async def _run(self, job: Job) -> None:
        hashing: list[asyncio.Task[None]] = []
        stop_hashing = threading.Event()
        identity: list[asyncio.Task[Any]] = []  # the source's digest, computed beside the quantization
        pins = contextlib.ExitStack()
        deadline = asyncio.timeout(self._settings.job_timeout_seconds)
        try:
            async with deadline:
                await self._run_stages(job, hashing, stop_hashing, identity, pins)
            job.progress.fraction = 1.0
            job.progress.bytes_done = job.progress.bytes_total
            self._finish(job, JobState.SUCCEEDED, None)
            log.info("%s succeeded: %d outputs", job.name, len(job.outputs))
        except asyncio.CancelledError:
            await self._abandon(hashing)
            if self._stop_reason.get(job.id) == "cancel":
                self._finish(job, JobState.CANCELLED, _cancelled())
            else:
                self._finish(
                    job,
                    JobState.FAILED,
                    JobError.of(Interrupted("the server shut down while this job ran; resubmit it")),
                )
        except QuantledgerError as exc:
            await self._abandon(hashing)
            log.warning("%s failed: %s", job.name, exc.message)
            self._finish(job, JobState.FAILED, JobError.of(exc))
        except Exception as exc:
            await self._abandon(hashing)
            if isinstance(exc, TimeoutError) and deadline.expired():
                limit = self._settings.job_timeout_seconds
                timeout = JobTimeout(
                    f"the job ran longer than {limit:.0f} s and was stopped (QUANTLEDGER_JOB_TIMEOUT_SECONDS); "
                    "outputs finished before that are kept",
                    limit_seconds=f"{limit:.0f}",
                )
                log.warning("%s failed: %s", job.name, timeout.message)
                self._finish(job, JobState.FAILED, JobError.of(timeout))
            else:
                log.exception("%s failed unexpectedly", job.name)
                self._finish(job, JobState.FAILED, JobError("INTERNAL", "INTERNAL", f"internal error: {exc}"))
        finally:
            stop_hashing.set()
            for task in identity:
                if not task.done():
                    with contextlib.suppress(HashingStopped, asyncio.CancelledError):
                        await task
            pins.close()
            self._remove_partials(job)
            if job.state.finished and _registration_pending(job):
                self._pending_registration.add(job.id)
            self._live.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self._workers.pop(job.id, None)
            self._stop_reason.pop(job.id, None)
            self._notify()

    async def _run_stages(
        self,
        job: Job,
        hashing: list[asyncio.Task[None]],
        stop_hashing: threading.Event,
        identity: list[asyncio.Task[Any]],
        pins: contextlib.ExitStack,
    ) -> None:
        """Every stage of ``job``, from its source to registered outputs."""
        source: GgufSource | None = None
        stem: str | None = None
        hf = await asyncio.to_thread(classify, job.spec.source, self._settings.allowed_roots)
        if hf is not None:
            source, stem = await prepare_intermediate(self, job, hf, pins)
        plan = await asyncio.to_thread(
            partial(make_plan, source=source, stem=stem),
            job.spec,
            self._settings,
            pathlib.Path(job.output_dir),
            job.id,
        )
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        identity.append(asyncio.create_task(asyncio.to_thread(source_manifest, job, stop_hashing)))
        for index, output in enumerate(plan.outputs):
            result_events, seconds = await self._quantize_one(job, plan, index, output)
            hashing.append(asyncio.create_task(self._complete_output(job, plan, output, result_events, seconds)))
        if any(not t.done() for t in hashing):
            job.stage = Stage.HASHING
            self._touch(job)
        await asyncio.gather(*hashing)
        if not job.spec.options.skip_quality:
            await evaluate_outputs(self, job, plan)
        apply_source_manifest(job, await identity[0])
        # registration, once begun, completes and is recorded even when the job is cancelled meanwhile
        registering = asyncio.ensure_future(self._register_outputs(job))
        try:
            await asyncio.shield(registering)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await registering
            raise

    async def _register_outputs(self, job: Job) -> None:
        """Provenance JSON next to every output, then one registry transaction (PENDING if the chain is down)."""
        job.stage = Stage.REGISTERING
        self._touch(job)
        registering = self.registrar is not None
        roots = self._settings.allowed_roots
        job.outputs = [
            await asyncio.to_thread(partial(attach_provenance, registering=registering, roots=roots), job, a)
            for a in job.outputs
        ]
        self._touch(job)
        if self.registrar is not None:
            job.outputs = await asyncio.to_thread(self.registrar.register, job, job.outputs)

    async def _retry_registrations(self) -> None:
        """Every few seconds, try again to register outputs of finished jobs that are still PENDING."""
        assert self.registrar is not None
        while True:
            await asyncio.sleep(self._settings.registry_retry_seconds)
            try:
                await self._retry_round()
            except Exception:  # keep retrying in later rounds whatever one round hit
                log.exception("retrying pending registrations failed")

    async def _flush_store(self) -> None:
        """Write job states the database refused (a full disk) as soon as it accepts writes again."""
        while True:
            await asyncio.sleep(STORE_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self._store.flush)
            except Exception:  # keep trying in later rounds
                log.exception("writing unsaved job states failed")

    async def _retry_round(self) -> None:
        assert self.registrar is not None
        for job_id in sorted(self._pending_registration):
            job = self._store.get(job_id)
            if job is None or not _registration_pending(job):
                self._pending_registration.discard(job_id)
                continue
            job.outputs = await asyncio.to_thread(self.registrar.register, job, job.outputs)
            self._store.save(job)
            self._notify()
            if not _registration_pending(job):
                self._pending_registration.discard(job_id)
                log.info("%s: pending registrations recorded", job.name)
            else:
                break  # the chain is still away; try the rest next round

    async def _abandon(self, hashing: list[asyncio.Task[None]]) -> None:
        for task in hashing:
            task.cancel()
        await asyncio.gather(*hashing, return_exceptions=True)

    async def _quantize_one(
        self, job: Job, plan: QuantizePlan, index: int, output: PlannedOutput
    ) -> tuple[list[dict[str, Any]], float]:
        header = plan.source.header
        bytes_of = {t.name: t.n_bytes for t in header.tensors}
        per_output = header.tensor_bytes
        before = per_output * index
        progress = job.progress
        progress.current_quant_type = output.quant_type.name
        progress.tensors_done = 0
        progress.tensors_total = len(header.tensors)
        progress.outputs_done = index
        job.stage = Stage.QUANTIZING
        self._touch(job)
        default_rate, _ = throughput_for(output.quant_type, self._store)
        started = time.monotonic()
        done_here = 0
        last_save = started

        def on_event(event: dict[str, Any]) -> None:
            nonlocal done_here, last_save
            kind = event.get("event")
            if kind == "tensor_start":
                progress.current_tensor = event["name"]
            elif kind == "tensor_done":
                done_here += bytes_of.get(event["name"], int(event.get("mib_before", 0) * (1 << 20)))
                progress.tensors_done = int(event["index"])
            else:
                return
            now = time.monotonic()
            elapsed = now - started
            rate = done_here / elapsed if done_here and elapsed > 0 else 0.0
            progress.bytes_done = before + done_here
            progress.fraction = min(1.0, progress.bytes_done / progress.bytes_total) if progress.bytes_total else 0.0
            progress.bytes_per_second = rate
            remaining = progress.bytes_total - progress.bytes_done
            progress.eta_seconds = remaining / (rate or default_rate)
            save = now - last_save >= PROGRESS_SAVE_SECONDS
            if save:
                last_save = now
            self._touch(job, save=save)

        worker = self.worker_for(job, plan.worker_request(output))
        result = await worker.run(on_event)
        seconds = time.monotonic() - started
        if per_output >= MIN_BYTES_FOR_THROUGHPUT:
            self._store.record_throughput(output.quant_type.name, per_output, seconds)
        progress.bytes_done = before + per_output
        progress.outputs_done = index + 1
        self._touch(job)
        return result.events, seconds

    async def _complete_output(
        self,
        job: Job,
        plan: QuantizePlan,
        output: PlannedOutput,
        events: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        missing = [p.name for p in output.partial_paths if not p.is_file()]
        if missing:
            raise QuantizeFailed(f"llama.cpp reported success but did not write {', '.join(missing)}")
        files = []
        headers = []
        for written in output.partial_paths:
            digest = await asyncio.to_thread(sha256_file, written)
            header = await asyncio.to_thread(read_gguf_header, written)
            files.append(OutputFile(path="", size_bytes=header.file_size, sha256=digest))
            headers.append(header)
        for final in output.paths:  # another job may have finished into the same place meanwhile
            refuse_another_jobs_output(final)
        for written, final in zip(output.partial_paths, output.paths, strict=True):
            os.replace(written, final)
        files = [dataclasses.replace(f, path=str(final)) for f, final in zip(files, output.paths, strict=True)]
        elements = sum(t.n_elements for h in headers for t in h.tensors)
        tensor_bytes = sum(h.tensor_bytes for h in headers)
        artifact = Artifact(
            quant_type=output.quant_type.name,
            path=files[0].path,
            size_bytes=files[0].size_bytes,
            sha256=files[0].sha256,
            bits_per_weight=8 * tensor_bytes / elements if elements else 0.0,
            fallback_tensor_count=fallback_count(events),
            tensor_count=sum(len(h.tensors) for h in headers),
            source_size_bytes=plan.source.header.file_size,
            quantize_seconds=seconds,
            file_type=output.quant_type.file_type,
            files=tuple(files),
        )
        order = {name: i for i, name in enumerate(job.spec.quant_types)}
        job.outputs = sorted([*job.outputs, artifact], key=lambda a: order.get(a.quant_type, len(order)))
        self._touch(job)

    def _remove_partials(self, job: Job) -> None:
        if not job.output_dir:
            return
        directory = pathlib.Path(job.output_dir)
        if not directory.is_dir():
            return
        for leftover in directory.glob(f".*.{job.id}{PARTIAL_SUFFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _registration_pending(job: Job) -> bool:
    return any(a.registry is not None and a.registry.state == PENDING for a in job.outputs)


def _cancelled() -> JobError:
    return JobError(code="CANCELLED", reason="JOB_CANCELLED", message="cancelled by a client")
