"""QuantizeService on Temporal: what a stateless frontend (``serve quantize --backend temporal``) runs.

The same calls as ``JobEngine`` (create, get, list_jobs, cancel, delete, watch, estimate,
list_quant_types), with the same checks and errors, answered from Temporal and the artifact store only:
a frontend keeps nothing a client could miss on another frontend (docs/SCALE_OUT.md).

- Create validates the request exactly as embedded mode does (``make_plan``, the dry run for sizes,
  quotas), uploads the source content-addressed by its manifest's root digest (``sources/<root>/``: once,
  however many jobs use it) with the imatrix and evaluation text, then starts the job's workflow. A
  ``request_id`` names the workflow (a digest of owner and request id), so the same request sent to two
  frontends starts one workflow: Temporal refuses the second start, and the second frontend answers with
  the first job (or REQUEST_ID_CONFLICT for another body).
- Get is a describe of the workflow: the job's document from its memo, live progress from the heartbeat
  of the step running. List is a visibility query by the owner's search attribute.
- Cancel is a workflow cancellation; delete is the workflow's ``delete`` update.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import pathlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from quantledger.artifacts.store import ArtifactStore
from quantledger.client_files import allowed_path as resolve_allowed
from quantledger.config import Settings
from quantledger.distributed import contract
from quantledger.distributed.contract import JobStart, StoredFile, Timeouts
from quantledger.errors import (
    BackendUnavailable,
    FormatUnavailable,
    InvalidArgument,
    JobAlreadyFinished,
    JobNotFound,
    JobRunning,
    RequestIdConflict,
    ValidationTimeout,
)
from quantledger.hashing import sha256_file
from quantledger.hf.manifest import SourceManifest, build_manifest
from quantledger.hf.pipeline import HfSource, classify, materialize
from quantledger.hf_export.formats import is_hf_format
from quantledger.jobs import quotas
from quantledger.jobs.model import Job, JobSpec, JobState, Progress, Scope, Stage
from quantledger.jobs.stages import describe_hf_job, estimate_hf, typical_output_bytes
from quantledger.jobs.store import SqliteJobStore
from quantledger.paging import PageSize, PageTokens
from quantledger.quantize.catalogue import QuantType, output_catalogue
from quantledger.quantize.estimate import Estimate, estimate
from quantledger.quantize.plan import QuantizePlan, make_plan
from quantledger.registry.stage import apply_source_manifest, source_manifest
from quantledger.security.audit import AuditLog
from quantledger.security.principal import LOCAL, Principal

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_PAGES = PageSize(default=50, largest=1000)
MAX_REQUEST_ID_LENGTH = 128
WATCH_POLL_SECONDS = 0.5  # how often Watch looks at the workflow (progress arrives as heartbeats)
CANCEL_WAIT_SECONDS = 10.0
PAGE_TOKEN_KEY = "keys/page-tokens.key"
OWNER = SearchAttributeKey.for_keyword(contract.OWNER_ATTRIBUTE)


def job_id_for(owner: str, request_id: str) -> str:
    """The job id (and workflow id) of ``owner``'s ``request_id``: the same on every frontend."""
    digest = hashlib.sha256(f"quantledger-job\0{owner}\0{request_id}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def reaching_temporal(address: str) -> Iterator[None]:
    """Temporal's transport errors as BACKEND_UNAVAILABLE (not found is the caller's to handle)."""
    try:
        yield
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise
        raise BackendUnavailable(
            f"the job backend (Temporal at {address}) did not answer: {exc.message}; no job was changed",
            address=address,
        ) from None


def _refuse_hf_formats(spec: JobSpec) -> None:
    """The workers of the distributed backend write GGUF only (docs/HF_EXPORT.md): FORMAT_UNAVAILABLE."""
    formats = [name for name in spec.quant_types if is_hf_format(name)]
    if formats:
        raise FormatUnavailable(
            f"{', '.join(formats)}: the distributed backend's workers write GGUF types only; "
            "submit Hugging Face formats to an embedded server (quantledger up, or serve quantize)",
            format=formats[0],
        )


class TemporalBackend:
    """QuantizeService's domain calls on Temporal and an artifact store."""

    def __init__(self, settings: Settings, client: Client, store: ArtifactStore) -> None:
        self.settings = settings
        self._client = client
        self._store = store
        self._address = settings.temporal_address
        self._rates = SqliteJobStore(str(settings.home / "frontend.sqlite3"))  # dry-run rates, for ETAs
        self.audit = AuditLog(settings.audit_log)
        self.page_tokens: PageTokens | None = None

    async def start(self) -> None:
        """Check the store, and share one page-token key between frontends (kept in the store)."""
        self.settings.ensure_dirs()
        await asyncio.to_thread(self._store.check)
        self.page_tokens = PageTokens(await asyncio.to_thread(self._page_token_key))

    def _page_token_key(self) -> bytes:
        if self._store.stat(PAGE_TOKEN_KEY) is None:
            self._store.put_bytes(PAGE_TOKEN_KEY, secrets.token_bytes(32))
            time.sleep(0.2)  # two frontends starting at once: both read the write that landed last
        return bytes(self._store.get_bytes(PAGE_TOKEN_KEY, 64))

    async def shutdown(self) -> None:
        self._rates.close()

    # ---------------------------------------------------------------- create

    async def create(
        self, spec: JobSpec, request_id: str = "", deadline: float | None = None, principal: Principal = LOCAL
    ) -> Job:
        """Validate ``spec`` as embedded mode does, store its inputs, then start the job's workflow."""
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        spec.check_bounds()
        fingerprint = spec.fingerprint()
        job_id = job_id_for(principal.name, request_id) if request_id else uuid.uuid4().hex
        if request_id:
            existing = await self._existing(job_id, fingerprint, principal)
            if existing is not None:
                return existing
        if spec.options.output_dir:
            raise InvalidArgument(
                f"output_dir names a server folder; with the distributed backend outputs go to "
                f"{self._store.uri_for('jobs/')}<job id>/",
                field="output_dir",
            )
        owned = await self._owned(principal) if _has_quota(principal) else []
        quotas.check_create(principal, lambda _owner: owned, 0)
        scope = Scope.of(principal)
        settings = scope.settings(self.settings)
        hf = await self._validated(deadline, classify, spec.source, settings.allowed_roots)
        placeholder = settings.artifacts / job_id  # validation only: outputs go to the store
        if hf is not None:
            job = await self._validated(
                deadline, partial(describe_hf_job, check_disk=False), settings, spec, request_id, job_id, hf
            )
            _refuse_hf_formats(spec)
            job.output_dir = self._store.uri_for(f"jobs/{job_id}/")
            job.owner = principal.name
            job.scope = scope
            assert job.source_info is not None
            quotas.check_create(principal, lambda _owner: owned, typical_output_bytes(job.source_info, spec))
            start = await self._stage_hf_inputs(job, hf, fingerprint, settings)
            return await self._start(job, start, principal)
        plan = await self._validated(deadline, make_plan, spec, settings, placeholder, job_id)
        predicted = await self._estimate(plan)
        job = Job(
            id=job_id,
            spec=spec,
            request_id=request_id,
            create_time=time.time(),
            source_info=plan.source.info,
            output_dir=self._store.uri_for(f"jobs/{job_id}/"),
            progress=Progress(
                bytes_total=plan.source.header.tensor_bytes * len(plan.outputs),
                outputs_total=len(plan.outputs),
                eta_seconds=predicted.seconds,
            ),
            owner=principal.name,
            scope=scope,
        )
        quotas.check_create(principal, lambda _owner: owned, sum(o.size_bytes for o in predicted.outputs))
        start = await self._stage_inputs(job, fingerprint, settings)
        return await self._start(job, start, principal)

    async def _stage_inputs(self, job: Job, fingerprint: str, settings: Settings) -> JobStart:
        """Hash the GGUF source (its manifest) and put it and the other inputs in the store (each once)."""
        manifest = await asyncio.to_thread(source_manifest, job)
        apply_source_manifest(job, manifest)
        info = job.source_info
        assert info is not None and manifest is not None
        prefix = f"sources/{manifest.root_digest}/"
        source = await self._put_tree(prefix, pathlib.Path(info.path).parent, manifest, "")
        return await self._start_input(job, fingerprint, settings, source, prefix, "gguf")

    async def _stage_hf_inputs(self, job: Job, hf: HfSource, fingerprint: str, settings: Settings) -> JobStart:
        """A HF folder's files (as the converter reads them) under ``sources/<root digest>/<folder name>/``
        (the folder's name is part of the model's metadata); a hub id is fetched by the worker itself."""
        if hf.folder is None:
            return await self._start_input(job, fingerprint, settings, [], "", "hf")
        materialized = await asyncio.to_thread(materialize, hf)
        manifest = materialized.manifest
        prefix = f"sources/{manifest.root_digest}/"
        source = await self._put_tree(prefix, hf.folder, manifest, hf.folder.name + "/")
        start = await self._start_input(job, fingerprint, settings, source, prefix, "hf")
        options = job.spec.options
        if options.lora_dir:
            from quantledger.convert.lora import load_lora

            lora_dir = resolve_allowed(options.lora_dir, settings.allowed_roots, what="lora_dir")
            adapter = await asyncio.to_thread(load_lora, lora_dir)
            names = sorted(p.name for p in lora_dir.iterdir() if p.is_file() and not p.is_symlink())
            lora = await asyncio.to_thread(build_manifest, lora_dir, names)
            start.lora = await self._put_tree(f"inputs/lora-{lora.root_digest}/", lora_dir, lora, lora_dir.name + "/")
            start.lora_sha256 = adapter.sha256
        return start

    async def _put_tree(
        self, prefix: str, folder: pathlib.Path, manifest: SourceManifest, under: str
    ) -> list[StoredFile]:
        """The manifest's files of ``folder`` stored under ``prefix`` + ``under`` (once: content-addressed)."""
        files = [(under + f.path, folder / f.path, f.sha256) for f in manifest.files]
        stored = await asyncio.to_thread(self._store.put_tree_if_absent, prefix, files)
        pairs = zip(stored, manifest.files, strict=True)
        return [StoredFile(s.key, under + f.path, f.size_bytes, f.sha256) for s, f in pairs]

    async def _start_input(
        self, job: Job, fingerprint: str, settings: Settings, source: list[StoredFile], prefix: str, kind: str
    ) -> JobStart:
        options = job.spec.options
        imatrix = None if options.imatrix_auto else await self._stage_file(options.imatrix_path, settings, "imatrix")
        calibration = await self._stage_file(options.calibration_path, settings, "calibration_path")
        eval_text = await self._stage_file(options.eval_text_path, settings, "eval_text_path")
        timeouts = Timeouts(
            heartbeat_seconds=self.settings.heartbeat_timeout_seconds,
            step_seconds=self.settings.stage_timeout_seconds,
            job_seconds=self.settings.job_timeout_seconds,
            registry_retry_seconds=self.settings.registry_retry_seconds,
            retain_seconds=self.settings.retain_seconds,
        )
        return JobStart(
            job=job.to_dict(),
            fingerprint=fingerprint,
            source=source,
            source_prefix=prefix,
            source_kind=kind,
            imatrix=imatrix,
            calibration=calibration,
            eval_text=eval_text,
            timeouts=timeouts,
        )

    async def _stage_file(self, raw: str, settings: Settings, what: str) -> StoredFile | None:
        """A client file the job reads (imatrix, evaluation text), stored under ``inputs/<sha256>/``."""
        if not raw:
            return None
        path = resolve_allowed(raw, settings.allowed_roots, what=what)
        digest = await asyncio.to_thread(sha256_file, path)
        stored = await asyncio.to_thread(
            self._store.put_tree_if_absent, f"inputs/{digest}/", [(path.name, path, digest)]
        )
        return StoredFile(stored[0].key, path.name, path.stat().st_size, digest)

    async def _start(self, job: Job, start: JobStart, principal: Principal) -> Job:
        try:
            with reaching_temporal(self._address):
                await self._client.start_workflow(
                    contract.WORKFLOW_TYPE,
                    start,
                    id=job.id,
                    task_queue=contract.JOBS_QUEUE,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    execution_timeout=None,
                    memo={contract.MEMO_JOB: job.to_dict(), contract.MEMO_FINGERPRINT: start.fingerprint},
                    search_attributes=TypedSearchAttributes([SearchAttributePair(OWNER, job.owner)]),
                )
        except WorkflowAlreadyStartedError:  # the same request_id through another frontend, just now
            existing = await self._existing(job.id, start.fingerprint, principal)
            if existing is None:  # pragma: no cover - a started workflow cannot vanish
                raise
            return existing
        log.info("created %s for %s: %s -> %s", job.name, job.owner, job.spec.source, ",".join(job.spec.quant_types))
        self.audit.record("job.create", principal.name, job=job.name, source=job.spec.source)
        return copy.deepcopy(job)

    async def _existing(self, job_id: str, fingerprint: str, principal: Principal) -> Job | None:
        try:
            job, stored_fingerprint = await self._read(job_id)
        except JobNotFound:
            return None
        if stored_fingerprint != fingerprint:
            raise RequestIdConflict(
                f"request_id {job.request_id!r} was used for {job.name} with another request body", job=job.name
            )
        return job

    async def _validated(self, deadline: float | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread within the client's deadline and the server's bound (VALIDATION_TIMEOUT)."""
        limit = self.settings.validation_timeout_seconds
        if deadline is not None:
            limit = min(limit, max(0.0, deadline))
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=limit)
        except TimeoutError:
            raise ValidationTimeout(
                f"checking the request's files took longer than {limit:.1f} s", limit_seconds=f"{limit:.1f}"
            ) from None

    async def _estimate(self, plan: QuantizePlan) -> Estimate:
        log_path = self.settings.logs / f"estimate-{uuid.uuid4().hex}.log"
        try:
            return await estimate(plan, self._rates, str(log_path), self.settings.disk_reserve_bytes)
        finally:
            log_path.unlink(missing_ok=True)

    async def estimate(self, spec: JobSpec, deadline: float | None = None, principal: Principal = LOCAL) -> Estimate:
        """Predict a job of ``principal`` without making it (the disk figures are this frontend's: each
        worker checks its own scratch space before a step)."""
        spec.check_bounds()
        settings = Scope.of(principal).settings(self.settings)
        hf = await self._validated(deadline, classify, spec.source, settings.allowed_roots)
        if hf is not None:
            return await self._validated(deadline, estimate_hf, settings, spec, hf, self._rates)
        plan = await self._validated(deadline, make_plan, spec, settings, settings.artifacts / "<job id>")
        return await self._estimate(plan)

    # ---------------------------------------------------------------- read

    async def _read(self, job_id: str) -> tuple[Job, str]:
        """The job's document with the live progress of its running step, and the request's fingerprint."""
        handle: WorkflowHandle[Any, Any] = self._client.get_workflow_handle(job_id)
        try:
            with reaching_temporal(self._address):
                description = await handle.describe()
        except RPCError:  # NOT_FOUND: no such workflow
            raise JobNotFound(f"no job jobs/{job_id}", name=f"jobs/{job_id}") from None
        document = await description.memo_value(contract.MEMO_JOB, None)
        if not isinstance(document, dict):
            raise JobNotFound(f"no job jobs/{job_id}", name=f"jobs/{job_id}")
        job = Job.from_dict(document)
        await self._with_live_progress(job, description)
        return job, str(await description.memo_value(contract.MEMO_FINGERPRINT, ""))

    async def _with_live_progress(self, job: Job, description: WorkflowExecutionDescription) -> None:
        if job.state.finished:
            return
        for pending in description.raw_description.pending_activities:
            started = pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            if started and job.state == JobState.QUEUED:
                job.state = JobState.RUNNING
                job.start_time = pending.last_started_time.ToDatetime().timestamp()
            if not pending.heartbeat_details.payloads:
                continue
            beats = await self._client.data_converter.decode(pending.heartbeat_details.payloads)
            beat = beats[-1] if beats else None
            if not isinstance(beat, dict) or "progress" not in beat:
                continue
            with contextlib.suppress(TypeError, ValueError):
                job.progress = Progress(**beat["progress"])
                job.stage = Stage(beat["stage"]) if beat.get("stage") else job.stage
                job.version += pending.attempt * contract.ATTEMPT_STEP + int(beat["seq"]) % contract.ATTEMPT_STEP

    async def get(self, job_id: str, principal: Principal = LOCAL) -> Job:
        """The job, when ``principal`` owns it or is an admin; JOB_NOT_FOUND otherwise (as for no such job)."""
        job, _ = await self._read(job_id)
        if not principal.owns(job.owner):
            raise JobNotFound(f"no job jobs/{job_id}", name=f"jobs/{job_id}")
        return job

    async def _owned(self, principal: Principal, *, everyone: bool = False) -> list[Job]:
        """The jobs of ``principal`` (everyone's with ``everyone``) as visibility has them, newest first."""
        query = f"WorkflowType = '{contract.WORKFLOW_TYPE}'"
        simple = principal.name.replace("-", "").replace("_", "").replace(".", "").replace("@", "").isalnum()
        if not everyone and simple:
            query += f" AND {contract.OWNER_ATTRIBUTE} = '{principal.name}'"
        jobs = []
        with reaching_temporal(self._address):
            async for execution in self._client.list_workflows(query):
                document = await execution.memo_value(contract.MEMO_JOB, None)
                if not isinstance(document, dict):
                    continue
                job = Job.from_dict(document)
                if everyone or job.owner == principal.name:
                    jobs.append(job)
        jobs.sort(key=lambda j: (j.create_time, j.id), reverse=True)
        return jobs

    async def list_jobs(self, page_size: int, page_token: str, principal: Principal = LOCAL) -> tuple[list[Job], str]:
        """``principal``'s jobs (an admin: everyone's) newest first, one page, and the next page's token."""
        assert self.page_tokens is not None, "backend not started"
        limit = JOB_PAGES.of(page_size)
        listing = "jobs" if principal.admin else f"jobs?owner={principal.name}"
        before = self.page_tokens.decode(listing, page_token)
        jobs = await self._owned(principal, everyone=principal.admin)
        if before is not None:
            jobs = [j for j in jobs if _position(j) < before]
        page = jobs[:limit]
        more = len(jobs) > limit
        return page, (self.page_tokens.encode(listing, _position(page[-1])) if more and page else "")

    def list_quant_types(self, page_size: int, page_token: str) -> tuple[list[QuantType], str]:
        """The installed llama.cpp's types, one page (0 = all), as embedded mode lists them."""
        assert self.page_tokens is not None, "backend not started"
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        types = output_catalogue()
        begin = self.page_tokens.decode("quant-types", page_token) or 0
        end = len(types) if page_size == 0 else min(len(types), begin + page_size)
        return list(types[begin:end]), (self.page_tokens.encode("quant-types", end) if end < len(types) else "")

    async def watch(self, job_id: str, principal: Principal = LOCAL) -> AsyncIterator[Job]:
        """Yield the job now and after every change, until it has ended."""
        job = await self.get(job_id, principal)
        yield job
        while not job.state.finished:
            await asyncio.sleep(WATCH_POLL_SECONDS)
            latest = await self.get(job_id, principal)
            # versions only grow; a lower one is a stale read (a step just ended and its heartbeats left
            # the description before the workflow wrote the memo): showing it would turn progress back
            if latest.version > job.version or latest.state != job.state:
                job = latest
                yield job

    # ---------------------------------------------------------------- change

    async def cancel(self, job_id: str, principal: Principal = LOCAL) -> Job:
        job = await self.get(job_id, principal)
        if job.state.finished:
            raise JobAlreadyFinished(f"{job.name} already ended ({job.state.value}); nothing to cancel", name=job.name)
        self.audit.record("job.cancel", principal.name, job=job.name, owner=job.owner)
        with reaching_temporal(self._address):
            await self._client.get_workflow_handle(job_id).cancel()
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while not job.state.finished and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            job = await self.get(job_id, principal)
        return job

    async def delete(self, job_id: str, principal: Principal = LOCAL) -> Job:
        """Delete the outputs of an ended job (the workflow's ``delete`` update); JOB_RUNNING before it ends."""
        job = await self.get(job_id, principal)
        if not job.state.finished:
            raise JobRunning(
                f"{job.name} is {job.state.value}: cancel it first, then delete its outputs", name=job.name
            )
        if job.delete_time is not None:
            return job
        handle: WorkflowHandle[Any, Any] = self._client.get_workflow_handle(job_id)
        try:
            with reaching_temporal(self._address):
                await handle.execute_update("delete", principal.name, rpc_timeout=timedelta(minutes=5))
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == "JOB_RUNNING":
                raise JobRunning(cause.message, name=job.name) from None
            raise
        self.audit.record("job.delete", principal.name, job=job.name, owner=job.owner)
        return await self.get(job_id, principal)


def _position(job: Job) -> int:
    """A job's place in the newest-first listing, as a page token's integer (microseconds of creation)."""
    return int(job.create_time * 1_000_000)


def _has_quota(principal: Principal) -> bool:
    limits = principal.quotas
    return limits.max_queued_jobs is not None or limits.max_kept_bytes is not None
