"""A principal's quotas (security/principal.py ``Quotas``) applied to its jobs.

At create: ``max_queued_jobs`` counts the principal's QUEUED and RUNNING jobs, ``max_kept_bytes`` the
bytes of its outputs still on disk plus the new job's predicted outputs; over either, the job is refused
with QUOTA_EXCEEDED and nothing is created. At scheduling: ``max_running_jobs`` (recorded on each job,
``Job.scope``) keeps a principal's further jobs QUEUED while that many of its jobs run; other principals'
jobs are not held up by them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from quantledger.errors import QuotaExceeded
from quantledger.jobs.model import Job, JobState
from quantledger.security.principal import Principal

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def check_create(principal: Principal, jobs_of: Callable[[str], Iterable[Job]], requested_bytes: int) -> None:
    """QUOTA_EXCEEDED when one more job of ``requested_bytes`` predicted outputs exceeds a quota of
    ``principal``; ``jobs_of(owner)`` gives an owner's jobs (asked only when there is a quota to check)."""
    quotas = principal.quotas
    if quotas.max_queued_jobs is None and quotas.max_kept_bytes is None:
        return
    jobs = list(jobs_of(principal.name))
    if quotas.max_queued_jobs is not None:
        active = sum(1 for job in jobs if job.state in ACTIVE)
        if active + 1 > quotas.max_queued_jobs:
            raise _exceeded(
                "max_queued_jobs",
                quotas.max_queued_jobs,
                active,
                1,
                f"{principal.name} has {active} jobs queued or running, the most it may have is "
                f"{quotas.max_queued_jobs}; wait for one to end or cancel one",
            )
    if quotas.max_kept_bytes is not None:
        kept = sum(job.kept_bytes for job in jobs)
        if kept + requested_bytes > quotas.max_kept_bytes:
            raise _exceeded(
                "max_kept_bytes",
                quotas.max_kept_bytes,
                kept,
                requested_bytes,
                f"{principal.name} keeps {kept} bytes of outputs and this job would add about {requested_bytes}, "
                f"over the {quotas.max_kept_bytes} allowed; delete outputs of earlier jobs "
                "(quantledger jobs delete NAME)",
            )


def startable(queued: Iterable[Job], running: Iterable[Job], free_slots: int) -> list[Job]:
    """The queued jobs to start now, oldest first: at most ``free_slots``, skipping a job whose owner
    already runs its ``max_running_jobs``."""
    counts = Counter(job.owner for job in running)
    chosen: list[Job] = []
    for job in queued:
        if len(chosen) >= free_slots:
            break
        limit = job.scope.max_running_jobs
        if limit is not None and counts[job.owner] >= limit:
            continue
        counts[job.owner] += 1
        chosen.append(job)
    return chosen


def _exceeded(quota: str, limit: int, used: int, requested: int, message: str) -> QuotaExceeded:
    return QuotaExceeded(message, quota=quota, limit=str(limit), used=str(used), requested=str(requested))
