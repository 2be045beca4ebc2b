"""The REGISTERING stage of a job and the retry of registrations a chain that was away left PENDING.

``register_outputs`` writes a provenance JSON next to every output and records all of them in one
registry transaction. Outputs whose registration stays PENDING (the chain did not answer) are retried by
``RegistrationRetrier`` every ``QUANTLEDGER_REGISTRY_RETRY_SECONDS``, and at start for jobs an earlier
run of the server left pending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from functools import partial

from quantledger.errors import QuantledgerError
from quantledger.jobs.model import Job, JobError, JobState, RegistryEntry, Stage
from quantledger.jobs.stages import StageHost
from quantledger.jobs.store import JobStore
from quantledger.registry.registrar import FAILED, PENDING, Registrar
from quantledger.registry.reproduce import conclude
from quantledger.registry.stage import attach_provenance

log = logging.getLogger(__name__)


def registration_pending(job: Job) -> bool:
    """Whether any output of ``job`` still waits for its on-chain record."""
    return any(a.registry is not None and a.registry.state == PENDING for a in job.outputs)


async def register_outputs(host: StageHost, registrar: Registrar | None, job: Job) -> None:
    """Provenance JSON next to every output, then one registry transaction (PENDING if the chain is down).

    An output whose provenance cannot be written (its imatrix or LoRA gone, a full disk) gets a FAILED
    registry entry saying why; the other outputs are still registered."""
    steps = len(job.outputs) + (1 if registrar is not None else 0)
    timeline = host.timeline(job)
    timeline.begin(Stage.REGISTERING, steps, "steps")
    host.touch(job)
    attach = partial(attach_provenance, registering=registrar is not None, roots=host.settings_for(job).allowed_roots)
    for index, artifact in enumerate(list(job.outputs)):
        try:
            job.outputs[index] = await asyncio.to_thread(attach, job, artifact)
        except (QuantledgerError, OSError) as exc:
            error = (
                JobError.of(exc)
                if isinstance(exc, QuantledgerError)
                else JobError("INTERNAL", "INTERNAL", f"the provenance JSON could not be written: {exc}")
            )
            log.warning("%s: no provenance for %s: %s", job.name, artifact.quant_type, error.message)
            entry = RegistryEntry(state=FAILED, provenance_path="", provenance_sha256="", error=error)
            job.outputs[index] = dataclasses.replace(artifact, registry=entry)
        timeline.advance(index + 1)
        host.touch(job, save=index + 1 == len(job.outputs))
    reproduction = job.spec.reproduction
    if reproduction is not None and job.outputs and job.reproduced is None:
        account = registrar.account if registrar is not None else None
        job.reproduced = await asyncio.to_thread(conclude, reproduction, job.outputs[0], account)
        host.touch(job)
    if registrar is not None:
        job.outputs = await asyncio.to_thread(registrar.register, job, job.outputs)
        timeline.advance(steps)
        host.touch(job)


class RegistrationRetrier:
    """Finished jobs with PENDING outputs, and the loop that registers them once the chain answers."""

    def __init__(self, store: JobStore, registrar: Registrar, retry_seconds: float, notify: Callable[[], None]) -> None:
        self._store = store
        self._registrar = registrar
        self._retry_seconds = retry_seconds
        self._notify = notify
        self._pending: set[str] = set()

    def collect_pending(self) -> None:
        """Take up the finished jobs an earlier run of the server left with PENDING outputs."""
        self._pending.update(
            job.id
            for state in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.FAILED)
            for job in self._store.with_state(state)
            if registration_pending(job)
        )

    def add(self, job: Job) -> None:
        """Retry ``job``'s PENDING outputs in the next rounds (no-op when none is pending)."""
        if registration_pending(job):
            self._pending.add(job.id)

    async def run(self) -> None:
        """Every few seconds, try again to register outputs of finished jobs that are still PENDING."""
        while True:
            await asyncio.sleep(self._retry_seconds)
            try:
                await self.retry_round()
            except Exception:  # keep retrying in later rounds whatever one round hit
                log.exception("retrying pending registrations failed")

    async def retry_round(self) -> None:
        for job_id in sorted(self._pending):
            job = self._store.get(job_id)
            if job is None or not registration_pending(job):
                self._pending.discard(job_id)
                continue
            job.outputs = await asyncio.to_thread(self._registrar.register, job, job.outputs)
            latest = self._store.get(job_id)  # its outputs may have been deleted meanwhile: keep that
            job.delete_time = latest.delete_time if latest is not None else job.delete_time
            self._store.save(job)
            self._notify()
            if not registration_pending(job):
                self._pending.discard(job_id)
                log.info("%s: pending registrations recorded", job.name)
            else:
                break  # the chain is still away; try the rest next round
