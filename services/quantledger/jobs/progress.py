"""A running job's progress: each stage's own share and ETA from its real work, and the job's overall.

Every stage counts its work in a unit of its own (``Progress.stage_unit``): bytes fetched, converted,
quantized or hashed; chunks (causal models) or texts (embedding models) evaluated over all outputs;
steps of registration (one provenance JSON per output, then the registry transaction). Its ETA comes from
its own rate since it began, or an estimate before any work is counted.

The job's overall ``fraction`` is the share of its time spent so far, elapsed / (elapsed + eta), where
``eta`` is what the current stage still needs plus estimates of the stages after it: rates measured on
this server where there are some (quantization by type, evaluation), defaults otherwise. The fraction
never decreases and stays below MAX_RUNNING_FRACTION while the job runs; the engine sets 1.0 when it
succeeds.
"""

from __future__ import annotations

import time

from quantledger.jobs.model import Job, Stage
from quantledger.jobs.store import JobStore
from quantledger.quantize.estimate import (
    WORKER_STARTUP_SECONDS,
    calibrate_seconds,
    evaluate_rate,
    throughput_for,
)
from quantledger.quantize.plan import gains_from_imatrix, requested_types

# Estimates of stages before this server measured them.
FETCH_BYTES_PER_SECOND = 100e6  # hashing a local folder; a download is slower and shows its own rate
CONVERT_BYTES_PER_SECOND = 100e6
HASH_BYTES_PER_SECOND = 500e6  # OpenSSL SHA-256 reaches about 1 GB/s per core; the disk read halves it
REGISTER_SECONDS = 2.0
MAX_RUNNING_FRACTION = 0.99
ORDER = (
    Stage.FETCHING,
    Stage.CONVERTING,
    Stage.CALIBRATING,
    Stage.QUANTIZING,
    Stage.HASHING,
    Stage.EVALUATING,
    Stage.REGISTERING,
)


class JobTimeline:
    """The stages of one running job: which one runs, how far it is, and what the others will take."""

    def __init__(self, job: Job, store: JobStore, *, since: float | None = None) -> None:
        """``since``: when the job started (epoch seconds), for a timeline taken up by another process (a
        distributed job's next step); by default now."""
        self._job = job
        self._store = store
        self._started = time.monotonic() - (max(0.0, time.time() - since) if since is not None else 0.0)
        self._stage_started = self._started
        self._stage_done_at_begin = 0
        self._stage_prior = 0.0
        self._begun: set[Stage] = set()
        self._later: dict[Stage, float] = {}
        self.hash_total = 0  # bytes of the written outputs, counted as each output is handed to hashing
        self.hashed = 0
        self.replan()

    def replan(self) -> None:
        """Estimate the stages not begun from what the job knows now (its source's size, its types)."""
        job = self._job
        info = job.source_info
        converted = info is not None and (info.kind == "gguf" or info.tensor_bytes > 0)
        per_output = (info.tensor_bytes or info.size_bytes) if info is not None else 0
        count = len(job.spec.quant_types)
        later: dict[Stage, float] = {}
        if not converted and info is not None:
            later[Stage.FETCHING] = info.size_bytes / FETCH_BYTES_PER_SECOND
            later[Stage.CONVERTING] = info.size_bytes / CONVERT_BYTES_PER_SECOND
        try:
            types = requested_types(job.spec)
        except Exception:  # a type this llama.cpp lost since the job was made: the job fails on its own
            types = []
        if job.spec.options.imatrix_auto and job.imatrix is None and any(gains_from_imatrix(t) for t in types):
            later[Stage.CALIBRATING] = calibrate_seconds(per_output, self._store)
        later[Stage.QUANTIZING] = sum(
            WORKER_STARTUP_SECONDS + per_output / throughput_for(t, self._store)[0] for t in types
        )
        later[Stage.HASHING] = count * per_output / 2 / HASH_BYTES_PER_SECOND  # outputs: at most ~half an F16
        if not job.spec.options.skip_quality:
            later[Stage.EVALUATING] = count * (WORKER_STARTUP_SECONDS + per_output / evaluate_rate(self._store))
        later[Stage.REGISTERING] = REGISTER_SECONDS
        self._later = {stage: seconds for stage, seconds in later.items() if stage not in self._begun}

    def begin(self, stage: Stage, total: int = 0, unit: str = "", *, done: int = 0, prior: float | None = None) -> None:
        """``stage`` starts now (a no-op when it already runs) with ``total`` work in ``unit``."""
        job = self._job
        if job.stage == stage and stage in self._begun:
            return
        job.stage = stage
        self._begun.add(stage)
        estimate = self._later.pop(stage, 0.0)
        for earlier in ORDER[: ORDER.index(stage)] if stage in ORDER else ():
            self._later.pop(earlier, None)  # stages a job skipped (a cached conversion) take no time
        self._stage_started = time.monotonic()
        self._stage_done_at_begin = done
        self._stage_prior = estimate if prior is None else prior
        progress = job.progress
        progress.stage_unit = unit
        progress.stage_eta_seconds = self._stage_prior
        self._set(done, total)
        self._refresh()

    def advance(self, done: int, total: int | None = None, *, eta: float | None = None) -> None:
        """The current stage has done ``done`` of its work (of ``total``, when that changed)."""
        progress = self._job.progress
        self._set(done, progress.stage_total if total is None else total)
        if eta is not None:
            progress.stage_eta_seconds = eta
        else:
            elapsed = time.monotonic() - self._stage_started
            counted = done - self._stage_done_at_begin
            if counted > 0 and elapsed > 0 and progress.stage_total:
                progress.stage_eta_seconds = max(0, progress.stage_total - done) * elapsed / counted
        self._refresh()

    def _set(self, done: int, total: int) -> None:
        progress = self._job.progress
        progress.stage_done = done
        progress.stage_total = total
        progress.stage_fraction = min(1.0, done / total) if total > 0 else 0.0

    def _refresh(self) -> None:
        progress = self._job.progress
        stage_left = progress.stage_eta_seconds if progress.stage_eta_seconds is not None else self._stage_prior
        remaining = stage_left + sum(self._later.values())
        elapsed = time.monotonic() - self._started
        share = elapsed / (elapsed + remaining) if elapsed + remaining > 0 else 0.0
        progress.eta_seconds = remaining
        progress.fraction = max(progress.fraction, min(share, MAX_RUNNING_FRACTION))
