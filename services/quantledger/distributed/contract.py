"""What the frontend, the workflow and the activities agree on: names, the start input, the error form.

The workflow runs in Temporal's sandbox and imports only this module (passed through) and temporalio, so
everything here is plain data: dataclasses of JSON types, no quantledger domain import.

A job's documents cross Temporal as JSON dicts (``Job.to_dict()``): the workflow keeps the job's document
in its memo (``MEMO_JOB``), which describe and visibility return without asking a worker, so any frontend
answers Get and List from Temporal alone. Live progress travels in activity heartbeats (``Heartbeat``),
read by the frontend from the workflow's pending activities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WORKFLOW_TYPE = "QuantizeJob"
# workflow tasks (cheap, deterministic: the job's control flow) and activities (llama.cpp, S3) have their
# own queues, so a frontend can host workflow tasks without ever being handed a quantization
JOBS_QUEUE = "quantledger-jobs"
WORK_QUEUE = "quantledger-work"
OWNER_ATTRIBUTE = "QuantledgerOwner"  # Keyword search attribute: List filters a principal's jobs by it

MEMO_JOB = "job"
MEMO_FINGERPRINT = "fingerprint"

PREPARE = "quantledger.prepare_source"
QUANTIZE = "quantledger.quantize_output"
EVALUATE = "quantledger.evaluate_output"
REGISTER = "quantledger.register_outputs"
DELETE = "quantledger.delete_outputs"

# a version of the document visible to clients moves on with every memo change (this factor) and every
# heartbeat of the step running (below it): Watch compares versions, never contents
VERSION_STEP = 1_000_000
ATTEMPT_STEP = 10_000


@dataclass
class StoredFile:
    """A file in the artifact store: its key (relative to the store's prefix), name, size and SHA-256."""

    key: str
    name: str
    size_bytes: int
    sha256: str


@dataclass
class Timeouts:
    """Bounds of each step, from the frontend's settings (so every worker applies the same ones)."""

    heartbeat_seconds: float = 30.0
    step_seconds: float = 6 * 3600.0
    job_seconds: float = 48 * 3600.0
    registry_retry_seconds: float = 10.0
    retain_seconds: float | None = None
    max_attempts: int = 5


@dataclass
class JobStart:
    """The workflow's input: the job as created, and where its inputs lie in the artifact store."""

    job: dict[str, Any]
    fingerprint: str
    source: list[StoredFile]  # a GGUF source's files (every shard), or a HF folder's files
    source_prefix: str  # sources/<root digest>/
    source_kind: str  # "gguf" or "hf"
    imatrix: StoredFile | None = None
    lora: list[StoredFile] = field(default_factory=list)
    lora_sha256: str = ""  # the adapter's digest as the provenance records it (convert/lora.py)
    eval_text: StoredFile | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    calibration: StoredFile | None = None  # imatrix_path "auto" with the client's calibration text


@dataclass
class StepInput:
    """What an activity gets: the start input, the job as the workflow knows it now, and which output."""

    start: JobStart
    job: dict[str, Any]
    index: int = 0
    intermediate: StoredFile | None = None  # a HF source's converted GGUF, in the store's cache/
    by: str = ""  # who deletes the outputs (a principal, or "retention")
    imatrix: StoredFile | None = None  # the matrix prepare_source computed (imatrix_path "auto")


@dataclass
class Prepared:
    """What ``prepare_source`` found: the job's source details, for a HF source its intermediate, and the
    importance matrix it computed for imatrix_path "auto"."""

    job: dict[str, Any]
    started: float
    intermediate: StoredFile | None = None
    imatrix: StoredFile | None = None  # imatrix_path "auto": the matrix computed, in the store's imatrix/


@dataclass
class Heartbeat:
    """An activity's progress, read by frontends from the pending activity (``seq`` counts them)."""

    stage: str
    progress: dict[str, Any]
    seq: int


def error_details(code: str, reason: str, message: str, metadata: dict[str, str]) -> dict[str, Any]:
    """The first detail of every ApplicationError an activity raises: a JobError's fields."""
    return {"code": code, "reason": reason, "message": message, "metadata": dict(metadata)}
