"""A quantization job as a Temporal workflow: its durable control flow, one activity per step.

prepare (stage the source; convert a HF one) → quantize each type → evaluate each output → register →
quality gate. Every step's result is in the workflow's history, so a worker that dies mid-step costs only
that step: Temporal times its heartbeats out and hands it to another worker; types finished before are
never redone. The job's document lives in the memo (``contract.MEMO_JOB``), updated at every change of
state, stage or outputs; live progress comes from the running activity's heartbeats.

The job ends (SUCCEEDED, FAILED, CANCELLED) as a document state, not as the workflow's end: the workflow
then waits for DeleteQuantizeJob (the ``delete`` update) or the retention period, deletes the outputs
and only then completes, so deletion and expiry are steps of the same durable history.

Deterministic code only: no I/O, no clock but ``workflow.now()``, no quantledger domain imports.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as StepTimeout

with workflow.unsafe.imports_passed_through():
    from quantledger.distributed import contract
    from quantledger.distributed.contract import JobStart, Prepared, StepInput

# reasons a retry cannot change: the step fails the job at once (anything else is retried up to max_attempts)
PERMANENT = [
    "INVALID_ARGUMENT",
    "SOURCE_INVALID",
    "SOURCE_NOT_FOUND",
    "UNKNOWN_QUANT_TYPE",
    "IMATRIX_REQUIRED",
    "IMATRIX_INVALID",
    "LORA_INVALID",
    "QUANTIZE_FAILED",
    "CONVERSION_FAILED",
    "UNSUPPORTED_ARCHITECTURE",
    "REQUANTIZE_REFUSED",
    "INSUFFICIENT_DISK",
    "ARTIFACT_STORE_DENIED",
    "STAGE_TIMEOUT",
    "QUALITY_GATE_FAILED",
]


@workflow.defn(name=contract.WORKFLOW_TYPE)
class QuantizeJobWorkflow:
    def __init__(self) -> None:
        self._job: dict[str, Any] = {}
        self._memo_version = 0
        self._delete_by: str | None = None
        self._deleted = False
        self._start: JobStart | None = None

    @workflow.run
    async def run(self, start: JobStart) -> dict[str, Any]:
        self._start = start
        self._job = start.job
        self._memo_version = int(start.job.get("version") or 0) // contract.VERSION_STEP
        limit = start.timeouts.job_seconds
        try:
            await asyncio.wait_for(self._run_steps(start), timeout=limit)
        except TimeoutError:  # the running step was cancelled (and cleaned up) by wait_for
            self._end(
                "FAILED",
                contract.error_details(
                    "DEADLINE_EXCEEDED",
                    "JOB_TIMEOUT",
                    f"the job ran longer than {limit:.0f} s and was stopped (QUANTLEDGER_JOB_TIMEOUT_SECONDS); "
                    "outputs finished before that are kept",
                    {"limit_seconds": f"{limit:.0f}"},
                ),
            )
        except ActivityError as failure:
            if isinstance(failure.cause, CancelledError):
                self._end("CANCELLED", _cancelled())
            else:
                self._end("FAILED", _job_error(failure))
        except (CancelledError, asyncio.CancelledError):
            self._end("CANCELLED", _cancelled())
        except ApplicationError as failure:  # the quality gate, decided after registration
            self._end("FAILED", _error_of(failure))
        else:
            self._end("SUCCEEDED", None)
        retain = start.timeouts.retain_seconds
        expired = False
        try:
            await workflow.wait_condition(
                lambda: self._delete_by is not None, timeout=timedelta(seconds=retain) if retain else None
            )
        except TimeoutError:  # the retention period is over
            expired = True
        if expired:
            await self._delete(start, "retention")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._job

    async def _run_steps(self, start: JobStart) -> None:
        job = self._job
        prepared: Prepared = await self._step(contract.PREPARE, StepInput(start, job), Prepared, start)
        job.update({k: prepared.job[k] for k in ("source_info", "progress", "imatrix") if k in prepared.job})
        job["state"] = "RUNNING"
        job["stage"] = "QUANTIZING"
        job["start_time"] = prepared.started
        self._publish()
        for index in range(len(job["spec"]["quant_types"])):
            done: dict[str, Any] = await self._step(
                contract.QUANTIZE,
                StepInput(start, job, index, prepared.intermediate, imatrix=prepared.imatrix),
                dict,
                start,
            )
            job["outputs"].append(done["artifact"])
            job["progress"] = done["progress"]
            self._publish()
        if not job["spec"]["options"].get("skip_quality"):
            job["stage"] = "EVALUATING"
            self._publish()
            for index in range(len(job["outputs"])):
                evaluated = await self._step(
                    contract.EVALUATE,
                    StepInput(start, job, index, prepared.intermediate, imatrix=prepared.imatrix),
                    dict,
                    start,
                )
                job["outputs"][index]["quality"] = evaluated["quality"]
                job["progress"] = evaluated["progress"]
                self._publish()
        job["stage"] = "REGISTERING"
        self._publish()
        registering = StepInput(start, job, imatrix=prepared.imatrix)
        registered: dict[str, Any] = await self._step(contract.REGISTER, registering, dict, start)
        job["outputs"] = registered["outputs"]
        self._publish()
        while registered.get("pending"):  # the chain is away: try again later (a durable timer)
            await workflow.sleep(timedelta(seconds=start.timeouts.registry_retry_seconds))
            registered = await self._step(contract.REGISTER, registering, dict, start)
            job["outputs"] = registered["outputs"]
            self._publish()
        if registered.get("gate_error"):
            error = registered["gate_error"]
            raise ApplicationError(error["message"], error, type=error["reason"], non_retryable=True)

    async def _step(self, name: str, arg: StepInput, result_type: type, start: JobStart) -> Any:
        timeouts = start.timeouts
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            task_queue=contract.WORK_QUEUE,
            start_to_close_timeout=timedelta(seconds=timeouts.step_seconds),
            heartbeat_timeout=timedelta(seconds=timeouts.heartbeat_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                maximum_attempts=timeouts.max_attempts,
                non_retryable_error_types=PERMANENT,
            ),
            # a cancel reaches the activity (its llama.cpp process group is killed, its uploads aborted)
            # and the workflow goes on only once the activity has cleaned up
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    def _publish(self) -> None:
        self._memo_version += 1
        self._job["version"] = self._memo_version * contract.VERSION_STEP
        workflow.upsert_memo({contract.MEMO_JOB: self._job})

    def _end(self, state: str, error: dict[str, Any] | None) -> None:
        job = self._job
        job["state"] = state
        job["stage"] = "NONE"
        job["error"] = error
        job["end_time"] = workflow.now().timestamp()
        progress = job.setdefault("progress", {})
        progress.update(current_tensor="", eta_seconds=None, stage_eta_seconds=None)
        if state == "SUCCEEDED":
            progress.update(fraction=1.0, bytes_done=progress.get("bytes_total", 0))
        self._publish()

    async def _delete(self, start: JobStart, by: str) -> None:
        """Delete the outputs (``by``: the principal, or "retention"); the document keeps ``delete_time``."""
        if self._deleted:
            return
        if self._job.get("outputs"):
            await self._step(contract.DELETE, StepInput(start, self._job, by=by), dict, start)
        self._job["delete_time"] = workflow.now().timestamp()
        self._deleted = True
        self._publish()

    @workflow.query(name="job")
    def current(self) -> dict[str, Any]:
        return self._job

    @workflow.update(name="delete")
    async def delete(self, principal: str) -> dict[str, Any]:
        """Delete the ended job's outputs (idempotent: a second delete returns the job as it is)."""
        assert self._start is not None
        await self._delete(self._start, principal)
        self._delete_by = principal
        return self._job

    @delete.validator
    def _may_delete(self, principal: str) -> None:
        if self._job.get("state") not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise ApplicationError(
                f"jobs/{self._job.get('id')} is {self._job.get('state')}: cancel it first, then delete its outputs",
                type="JOB_RUNNING",
            )


def _cancelled() -> dict[str, Any]:
    return contract.error_details("CANCELLED", "JOB_CANCELLED", "cancelled by a client", {})


def _error_of(failure: ApplicationError) -> dict[str, Any]:
    if failure.details and isinstance(failure.details[0], dict) and "reason" in failure.details[0]:
        return dict(failure.details[0])
    return contract.error_details("INTERNAL", failure.type or "INTERNAL", failure.message, {})


def _job_error(failure: ActivityError) -> dict[str, Any]:
    """The JobError of a step that failed for good: its typed error, or why Temporal gave up on it."""
    cause = failure.cause
    if isinstance(cause, ApplicationError):
        return _error_of(cause)
    if isinstance(cause, StepTimeout):
        return contract.error_details(
            "UNAVAILABLE",
            "WORKER_LOST",
            f"the {failure.activity_type} step stopped answering ({cause.type.name if cause.type else 'timeout'}) "
            f"on every worker that took it (attempts exhausted); the outputs finished before are kept",
            {"step": failure.activity_type or ""},
        )
    return contract.error_details("INTERNAL", "INTERNAL", f"the {failure.activity_type} step failed: {failure}", {})
