"""The job engine: validate, queue, run, watch and cancel quantization jobs.

Runs inside an asyncio loop. Jobs wait in the store as QUEUED; up to ``max_parallel_jobs`` run at
once, each output in its own worker process (see quantize/runner.py). What a running job does is in
jobs/pipeline.py (its stages in order), jobs/output_stage.py (one output: quantize, hash, rename) and
jobs/registration.py (REGISTERING, and the retry of PENDING registrations); this module owns the
jobs' states: the scheduler, the API the servicers call, and how a job ends. A running job's progress
lives in memory and reaches the store every couple of seconds; state changes reach it at once.
Cancel kills the worker's process group and removes partial files; shutdown does the same to every
running job and leaves it RUNNING in the store; the next start (after a shutdown or a kill -9) queues
such jobs again and they resume, keeping the outputs they finished (``recover_interrupted``).

Every call names the ``Principal`` it runs as. A job belongs to the principal that created it: others
see no such job (JOB_NOT_FOUND, the answer for a name that does not exist), an admin sees every job.
Quotas are applied at create and by the scheduler (jobs/quotas.py); deleting outputs, by a client or
by retention (``QUANTLEDGER_RETAIN``), is jobs/deletion.py. Create, cancel, delete and expiry are
written to the audit log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import pathlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from quantledger.config import Settings
from quantledger.errors import (
    InsufficientDisk,
    Interrupted,
    InvalidArgument,
    JobAlreadyFinished,
    JobNotFound,
    JobRunning,
    JobTimeout,
    QuantledgerError,
    RequestIdConflict,
    ValidationTimeout,
)
from quantledger.hf.cache import ConversionCache
from quantledger.hf.pipeline import classify
from quantledger.jobs import quotas
from quantledger.jobs.deletion import delete_outputs
from quantledger.jobs.model import Artifact, Job, JobError, JobSpec, JobState, OutputFile, Progress, Scope, Stage
from quantledger.jobs.pipeline import JobRun, run_stages
from quantledger.jobs.progress import JobTimeline
from quantledger.jobs.registration import RegistrationRetrier
from quantledger.jobs.reproduction import ReproduceRequest, plan_request
from quantledger.jobs.stages import describe_hf_job, estimate_hf, typical_output_bytes
from quantledger.jobs.store import DuplicateRequestId, JobStore
from quantledger.paging import PageSize, PageTokens
from quantledger.quantize.catalogue import QuantType, output_catalogue
from quantledger.quantize.estimate import Estimate, estimate
from quantledger.quantize.plan import PARTIAL_SUFFIX, QuantizePlan, make_plan
from quantledger.quantize.runner import WorkerProcess
from quantledger.registry.registrar import Registrar
from quantledger.registry.stage import HashingStopped
from quantledger.security.audit import AuditLog
from quantledger.security.principal import LOCAL, Principal

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_PAGES = PageSize(default=50, largest=1000)
MAX_REQUEST_ID_LENGTH = 128
STORE_FLUSH_SECONDS = 2.0
VALIDATION_THREADS = 4
RETENTION_CHECK_SECONDS = 3600.0  # at most; a short retention is checked more often (a tenth of it)


class JobEngine:
    """Owns every job of one data dir."""

    def __init__(self, settings: Settings, store: JobStore, registrar: Registrar | None = None) -> None:
        self._settings = settings
        self._store = store
        self.settings = settings
        self.registrar = registrar
        self._registrations = (
            RegistrationRetrier(store, registrar, settings.registry_retry_seconds, self._notify)
            if registrar is not None
            else None
        )
        self._retrier: asyncio.Task[None] | None = None
        self.page_tokens = PageTokens.in_home(settings.home)
        self.cache = ConversionCache(settings.home / "conversion-cache", settings.conversion_cache_bytes)
        self._live: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._workers: dict[str, WorkerProcess] = {}
        self._timelines: dict[str, JobTimeline] = {}
        self._stop_reason: dict[str, str] = {}
        self._changed: asyncio.Event | None = None  # set (and replaced) on every job change
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self.audit = AuditLog(settings.audit_log)
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
        if self._settings.retain_seconds is not None:
            self.expire_outputs()
            self._expirer = asyncio.create_task(self._expire_periodically(), name="quantledger-retention")
        if self._registrations is not None:
            self._registrations.collect_pending()
            self._retrier = asyncio.create_task(self._registrations.run(), name="quantledger-registrar")

    def recover_interrupted(self) -> list[str]:
        """Jobs a stopped or killed server left RUNNING are queued again to resume: outputs they finished
        are kept (each file still there with its recorded size) and not redone, partial files go. A job
        whose source vanished or changed meanwhile ends FAILED (INTERRUPTED) instead. The resumed ids."""
        resumed = []
        for job in self._store.with_state(JobState.RUNNING):
            self._remove_partials(job)
            vanished = _source_vanished(job)
            if vanished:
                self._finish(
                    job,
                    JobState.FAILED,
                    JobError.of(
                        Interrupted(
                            f"the server stopped while this job was running and its source {vanished} "
                            "meanwhile, so it cannot resume; outputs finished before are kept, resubmit for the rest"
                        )
                    ),
                )
                continue
            kept = [a for a in job.outputs if _output_intact(a)]
            redo = [a.quant_type for a in job.outputs if a not in kept]
            job.outputs = kept
            job.state = JobState.QUEUED
            job.stage = Stage.NONE
            job.progress.current_tensor = ""
            job.version += 1
            self._store.save(job)
            log.info("%s resumes after a restart: %d outputs kept, redoing the rest", job.name, len(kept))
            self.audit.record(
                "job.resume", "server", job=job.name, owner=job.owner, kept=len(kept), changed=",".join(redo)
            )
            resumed.append(job.id)
        return resumed

    async def shutdown(self) -> None:
        """Stop every running job cleanly (worker killed, partial files removed); each stays RUNNING in the
        store and resumes, its finished outputs kept, when the server starts again."""
        self._stopping = True
        for background in (self._scheduler, self._retrier, self._flusher, self._expirer):
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

    async def create(
        self, spec: JobSpec, request_id: str = "", deadline: float | None = None, principal: Principal = LOCAL
    ) -> Job:
        """Validate ``spec`` completely, then queue a job of ``principal`` (or return the one its
        ``request_id`` made). Its roots replace the server's; its quotas are checked last (QUOTA_EXCEEDED).

        ``deadline`` is the time the client gives the call, in seconds from now (None: no deadline)."""
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        spec.check_bounds()
        fingerprint = spec.fingerprint()
        if request_id:
            existing = self._existing_for(principal, request_id, fingerprint)
            if existing is not None:
                return existing
        quotas.check_create(principal, self._store.owned_by, 0)  # before any file is read
        scope = Scope.of(principal)
        settings = scope.settings(self._settings)
        job_id = uuid.uuid4().hex
        hf = await self._validated(deadline, classify, spec.source, settings.allowed_roots)
        if hf is not None:
            job = await self._validated(deadline, describe_hf_job, settings, spec, request_id, job_id, hf)
            assert job.source_info is not None
            return await self._queue(job, fingerprint, principal, scope, typical_output_bytes(job.source_info, spec))
        if spec.options.lora_dir:
            raise InvalidArgument("lora_dir needs a Hugging Face source (a model folder or repo id), not a GGUF")
        plan = await self._validated(deadline, make_plan, spec, settings, settings.artifacts / job_id, job_id)
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
        return await self._queue(job, fingerprint, principal, scope, sum(o.size_bytes for o in predicted.outputs))

    async def reproduce(
        self,
        request: ReproduceRequest,
        request_id: str = "",
        deadline: float | None = None,
        principal: Principal = LOCAL,
    ) -> Job:
        """ReproduceArtifact: the checks of a reproduction under ``principal``'s roots, then its job."""
        settings = Scope.of(principal).settings(self._settings)
        spec = await plan_request(request, settings, self.registrar)
        return await self.create(spec, request_id, deadline, principal)

    async def _queue(self, job: Job, fingerprint: str, principal: Principal, scope: Scope, predicted_bytes: int) -> Job:
        job.owner = principal.name
        job.scope = scope
        if job.request_id:  # a retry that raced this one past the first check
            existing = self._existing_for(principal, job.request_id, fingerprint)
            if existing is not None:
                return existing
        # no await from the quota check to the insert: concurrent creates cannot both pass a full quota
        quotas.check_create(principal, self._owned_now, predicted_bytes)
        try:
            self._store.insert(job, fingerprint)
        except DuplicateRequestId:
            existing = self._existing_for(principal, job.request_id, fingerprint)
            if existing is None:  # pragma: no cover - the row that clashed cannot vanish
                raise
            return existing
        log.info("created %s for %s: %s -> %s", job.name, job.owner, job.spec.source, ",".join(job.spec.quant_types))
        self.audit.record("job.create", principal.name, job=job.name, source=job.spec.source)
        self._notify()
        return copy.deepcopy(job)

    def _owned_now(self, owner: str) -> list[Job]:
        """The jobs of ``owner``, running ones as they are now (their finished outputs count)."""
        return [copy.deepcopy(self._live[j.id]) if j.id in self._live else j for j in self._store.owned_by(owner)]

    def _existing_for(self, principal: Principal, request_id: str, fingerprint: str) -> Job | None:
        found = self._store.find_by_request_id(principal.name, request_id)
        if found is None:
            return None
        job, stored_fingerprint = found
        if stored_fingerprint != fingerprint:
            raise RequestIdConflict(
                f"request_id {request_id!r} was used for {job.name} with another request body",
                job=job.name,
            )
        return self.get(job.id, principal)

    def get(self, job_id: str, principal: Principal = LOCAL) -> Job:
        """The job, when ``principal`` owns it or is an admin; JOB_NOT_FOUND otherwise, word for word what a
        name that does not exist gets (so another principal's job ids tell nothing)."""
        live = self._live.get(job_id)
        job = copy.deepcopy(live) if live is not None else self._store.get(job_id)
        if job is None or not principal.owns(job.owner):
            raise JobNotFound(f"no job jobs/{job_id}", name=f"jobs/{job_id}")
        return job

    def list_jobs(self, page_size: int, page_token: str, principal: Principal = LOCAL) -> tuple[list[Job], str]:
        """``principal``'s jobs (an admin: everyone's) newest first, one page, and the token of the next
        page ("" after the last). A token continues only the listing it came from: one principal's token
        is INVALID_ARGUMENT for another."""
        limit = JOB_PAGES.of(page_size)
        listing = "jobs" if principal.admin else f"jobs?owner={principal.name}"
        owner = None if principal.admin else principal.name
        jobs, next_seq = self._store.page(limit, self.page_tokens.decode(listing, page_token), owner)
        jobs = [copy.deepcopy(self._live[j.id]) if j.id in self._live else j for j in jobs]
        return jobs, (self.page_tokens.encode(listing, next_seq) if next_seq is not None else "")

    def list_quant_types(self, page_size: int, page_token: str) -> tuple[list[QuantType], str]:
        """The installed llama.cpp's types, one page (0 = all of them), and the next page's token."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        types = output_catalogue()
        start = self.page_tokens.decode("quant-types", page_token) or 0
        end = len(types) if page_size == 0 else min(len(types), start + page_size)
        return list(types[start:end]), (self.page_tokens.encode("quant-types", end) if end < len(types) else "")

    async def cancel(self, job_id: str, principal: Principal = LOCAL) -> Job:
        job = self.get(job_id, principal)
        if job.state.finished:
            raise JobAlreadyFinished(f"{job.name} already ended ({job.state.value}); nothing to cancel", name=job.name)
        self.audit.record("job.cancel", principal.name, job=job.name, owner=job.owner)
        task = self._tasks.get(job_id)
        if task is None:
            self._finish(job, JobState.CANCELLED, _cancelled())
            self._notify()
            return self.get(job_id, principal)
        self._stop_reason[job_id] = "cancel"
        worker = self._workers.get(job_id)
        if worker is not None:
            worker.kill()
        task.cancel()
        await asyncio.wait([task], timeout=10)
        return self.get(job_id, principal)

    def delete(self, job_id: str, principal: Principal = LOCAL) -> Job:
        """Delete the output files of an ended job (jobs/deletion.py); the job stays, with ``delete_time``.

        JOB_RUNNING while it is QUEUED or RUNNING (cancel it first). A job whose outputs are deleted
        already is returned as it is (idempotent)."""
        job = self.get(job_id, principal)
        if not job.state.finished or job_id in self._tasks:  # ended, but its task still cleaning up
            raise JobRunning(
                f"{job.name} is {job.state.value}: cancel it first, then delete its outputs", name=job.name
            )
        if job.delete_time is None:
            self._delete_outputs(job, principal.name, "job.delete")
        return self.get(job_id, principal)

    def expire_outputs(self, now: float | None = None) -> list[str]:
        """Delete the outputs of jobs that ended longer than ``retain_seconds`` ago; their names."""
        retain = self._settings.retain_seconds
        if retain is None:
            return []
        cutoff = (time.time() if now is None else now) - retain
        expired = []
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            for job in self._store.with_state(state):
                if job.delete_time is None and job.end_time is not None and job.end_time < cutoff and job.outputs:
                    self._delete_outputs(job, "retention", "job.expire", retain_seconds=retain)
                    expired.append(job.name)
        return expired

    def _delete_outputs(self, job: Job, principal: str, event: str, **fields: object) -> None:
        done = delete_outputs(job)
        self._remove_partials(job)
        default_dir = self._settings.artifacts / job.id
        if pathlib.Path(job.output_dir) == default_dir:
            with contextlib.suppress(OSError):  # the service's own folder for the job, once it is empty
                default_dir.rmdir()
        job.delete_time = time.time()
        job.version += 1
        self._store.save(job)
        log.info("%s: outputs deleted (%s), %d bytes freed", job.name, event, done.freed_bytes)
        self.audit.record(
            event,
            principal,
            job=job.name,
            owner=job.owner,
            files=len(done.removed),
            freed_bytes=done.freed_bytes,
            left_in_place=done.kept,
            **fields,
        )
        self._notify()

    async def _expire_periodically(self) -> None:
        retain = self._settings.retain_seconds
        assert retain is not None
        period = min(RETENTION_CHECK_SECONDS, max(0.5, retain / 10))
        while True:
            await asyncio.sleep(period)
            try:
                self.expire_outputs()  # on the loop: it saves jobs and wakes watchers
            except Exception:  # keep checking in later rounds
                log.exception("expiring old outputs failed")

    async def watch(self, job_id: str, principal: Principal = LOCAL) -> AsyncIterator[Job]:
        """Yield the job now and after every change, until it has ended."""
        assert self._changed is not None, "engine not started"
        job = self.get(job_id, principal)
        yield job
        while not job.state.finished:
            changed = self._changed
            if self._version(job_id) == job.version:
                # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancellation of the watcher that
                # comes as the event is set (as it is on every change of a starting job), and the cancelled
                # watch ran on to the job's end (tests/test_watch_cancel.py)
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({waiter}, timeout=5)
                finally:
                    waiter.cancel()
            latest = self.get(job_id, principal)
            if latest.version != job.version:
                job = latest
                yield job

    async def estimate(self, spec: JobSpec, deadline: float | None = None, principal: Principal = LOCAL) -> Estimate:
        """Predict a job of ``principal`` (checked against its roots) without making it."""
        spec.check_bounds()
        settings = Scope.of(principal).settings(self._settings)
        hf = await self._validated(deadline, classify, spec.source, settings.allowed_roots)
        if hf is not None:
            return await self._validated(deadline, estimate_hf, settings, spec, hf, self._store)
        plan = await self._validated(deadline, make_plan, spec, settings, settings.artifacts / "<job id>")
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

    def settings_for(self, job: Job) -> Settings:
        """The settings ``job`` runs under: the server's, with its owner's roots (``Job.scope``)."""
        return job.scope.settings(self._settings)

    def timeline(self, job: Job) -> JobTimeline:
        """The progress bookkeeping of running ``job`` (its stages' shares and ETAs)."""
        timeline = self._timelines.get(job.id)
        if timeline is None:
            timeline = self._timelines[job.id] = JobTimeline(job, self._store)
        return timeline

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
        job.progress.stage_eta_seconds = None
        job.version += 1
        self._store.save(job)

    async def _schedule(self) -> None:
        assert self._wakeup is not None
        while not self._stopping:
            self._wakeup.clear()
            free = self._settings.max_parallel_jobs - len(self._tasks)
            if free > 0:
                queued = [job for job in self._store.with_state(JobState.QUEUED) if job.id not in self._tasks]
                for job in quotas.startable(queued, self._live.values(), free):
                    self._start(job)
            await self._wakeup.wait()

    def _start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        job.stage = Stage.QUANTIZING
        job.start_time = job.start_time or time.time()  # a resumed job keeps its first start
        self._live[job.id] = job
        self._timelines[job.id] = JobTimeline(job, self._store)
        self._touch(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    async def _run(self, job: Job) -> None:
        run = JobRun()
        deadline = asyncio.timeout(self._settings.job_timeout_seconds)
        try:
            async with deadline:
                await run_stages(self, self.registrar, job, run)
            job.progress.fraction = 1.0
            job.progress.bytes_done = job.progress.bytes_total
            self._finish(job, JobState.SUCCEEDED, None)
            log.info("%s succeeded: %d outputs", job.name, len(job.outputs))
        except asyncio.CancelledError:
            await self._abandon(run.hashing)
            if self._stop_reason.get(job.id) == "cancel":
                self._finish(job, JobState.CANCELLED, _cancelled())
            else:  # shutdown: the job stays RUNNING in the store and resumes when the server starts again
                job.progress.current_tensor = ""
                self._store.save(job)
                log.info("%s stopped by the shutdown; it resumes at the next start", job.name)
        except QuantledgerError as exc:
            await self._abandon(run.hashing)
            log.warning("%s failed: %s", job.name, exc.message)
            self._finish(job, JobState.FAILED, JobError.of(exc))
        except Exception as exc:
            await self._abandon(run.hashing)
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
            run.stop_hashing.set()
            for task in run.identity:
                if not task.done():
                    with contextlib.suppress(HashingStopped, asyncio.CancelledError):
                        await task
            run.pins.close()
            self._remove_partials(job)
            if job.state.finished and self._registrations is not None:
                self._registrations.add(job)
            self._live.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self._workers.pop(job.id, None)
            self._timelines.pop(job.id, None)
            self._stop_reason.pop(job.id, None)
            self._notify()

    async def _flush_store(self) -> None:
        """Write job states the database refused (a full disk) as soon as it accepts writes again."""
        while True:
            await asyncio.sleep(STORE_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self._store.flush)
            except Exception:  # keep trying in later rounds
                log.exception("writing unsaved job states failed")

    async def _abandon(self, hashing: list[asyncio.Task[None]]) -> None:
        for task in hashing:
            task.cancel()
        await asyncio.gather(*hashing, return_exceptions=True)

    def _remove_partials(self, job: Job) -> None:
        if not job.output_dir:
            return
        directory = pathlib.Path(job.output_dir)
        if not directory.is_dir():
            return
        for leftover in directory.glob(f".*.{job.id}{PARTIAL_SUFFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.is_dir() and not leftover.is_symlink():  # a Hugging Face format's folder
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()


def _source_vanished(job: Job) -> str:
    """How a job's source changed since it was created ("" when it is still there as it was): a GGUF or a
    folder gone, or a file of its manifest gone or of another size. A hub source is fetched again."""
    info = job.source_info
    if info is None or info.kind == "hf_hub" or not info.path:
        return ""
    path = pathlib.Path(info.path)
    if not path.exists():
        return f"{info.path} is gone"
    if info.manifest:
        folder = path if path.is_dir() else path.parent
        for item in info.manifest:
            try:
                size = (folder / item.path).stat().st_size
            except OSError:
                return f"file {item.path} is gone"
            if size != item.size_bytes:
                return f"file {item.path} changed ({size} bytes, {item.size_bytes} before)"
    return ""


def _output_intact(artifact: Artifact) -> bool:
    """Whether every file of a finished output is still there with the size recorded for it."""
    for recorded in artifact.files or (OutputFile(artifact.path, artifact.size_bytes, artifact.sha256),):
        try:
            if pathlib.Path(recorded.path).stat().st_size != recorded.size_bytes:
                return False
        except OSError:
            return False
    return True


def _cancelled() -> JobError:
    return JobError(code="CANCELLED", reason="JOB_CANCELLED", message="cancelled by a client")
