"""Durable job state in SQLite.

``JobStore`` is the one small interface the engine uses for persistence and queueing; ``SqliteJobStore``
is the embedded implementation (a file in the data dir, or ``:memory:`` for the serverless CLI). A
distributed backend for multi-machine worker pools implements the same protocol.

A write that fails (a full disk, an I/O error) loses nothing: the job's latest document is kept in
memory, every read sees it, and ``flush`` (called on every later write and periodically by the
engine) writes it as soon as the database accepts writes again. Only ``insert`` fails outright, as
INSUFFICIENT_DISK, so a job that could not be recorded is never created.

Every job has an ``owner`` (the principal that created it); ``request_id`` is unique per owner. A
database written before owners existed is migrated when it is opened: its jobs belong to "local".
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Protocol

from quantledger.errors import InsufficientDisk
from quantledger.jobs.model import Job, JobState

log = logging.getLogger(__name__)


class DuplicateRequestId(Exception):
    """Another job already holds this request_id."""


class JobStore(Protocol):
    def insert(self, job: Job, fingerprint: str) -> None: ...
    def save(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def find_by_request_id(self, owner: str, request_id: str) -> tuple[Job, str] | None: ...
    def page(self, limit: int, before_seq: int | None, owner: str | None = None) -> tuple[list[Job], int | None]: ...
    def with_state(self, state: JobState) -> list[Job]: ...
    def owned_by(self, owner: str) -> list[Job]: ...
    def state_marker(self, state: JobState) -> tuple[int, int]: ...
    def record_throughput(self, quant_type: str, source_bytes: int, seconds: float) -> None: ...
    def throughputs(self, quant_type: str, limit: int = 20) -> list[float]: ...
    def flush(self) -> int: ...


_JOBS_COLUMNS = """(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL DEFAULT 'local',
    request_id TEXT,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    doc TEXT NOT NULL
)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs {_JOBS_COLUMNS};
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_request_id ON jobs(owner, request_id);
CREATE TABLE IF NOT EXISTS throughput (
    quant_type TEXT NOT NULL,
    source_bytes INTEGER NOT NULL,
    seconds REAL NOT NULL,
    recorded REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS throughput_type ON throughput(quant_type, recorded);
"""


class SqliteJobStore:
    """JobStore on one SQLite database (WAL: a committed write survives a kill -9)."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        _migrate_to_owners(self._db)
        self._db.executescript(_SCHEMA)
        # job id -> (state, document) of saves the database refused; written by the next flush
        self._unsaved: dict[str, tuple[str, str]] = {}

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def insert(self, job: Job, fingerprint: str) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, owner, request_id, fingerprint, state, doc) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job.id,
                        job.owner,
                        job.request_id or None,
                        fingerprint,
                        job.state.value,
                        json.dumps(job.to_dict()),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateRequestId(job.request_id) from exc
            except sqlite3.OperationalError as exc:
                raise InsufficientDisk(f"the job database cannot be written ({exc}); no job was created") from exc

    def save(self, job: Job) -> None:
        """Record ``job``; when the database refuses the write, keep it for ``flush`` (never raises for that)."""
        with self._lock:
            self._unsaved[job.id] = (job.state.value, json.dumps(job.to_dict()))
            self._flush_locked()

    def flush(self) -> int:
        """Write the saves the database refused before; the number still unwritten."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        for job_id, (state, doc) in list(self._unsaved.items()):
            try:
                self._db.execute("UPDATE jobs SET state = ?, doc = ? WHERE id = ?", (state, doc, job_id))
            except sqlite3.OperationalError as exc:
                log.warning("job %s not saved yet (%s); kept in memory, retried", job_id, exc)
                break
            if self._unsaved.get(job_id) == (state, doc):
                del self._unsaved[job_id]
        return len(self._unsaved)

    def _latest(self, job_id: str, doc: str) -> Job:
        unsaved = self._unsaved.get(job_id)
        return Job.from_dict(json.loads(unsaved[1] if unsaved else doc))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._latest(job_id, row[0]) if row else None

    def find_by_request_id(self, owner: str, request_id: str) -> tuple[Job, str] | None:
        """The job ``owner`` created with ``request_id`` (another owner's request ids are not seen)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, doc, fingerprint FROM jobs WHERE owner = ? AND request_id = ?", (owner, request_id)
            ).fetchone()
            return (self._latest(row[0], row[1]), row[2]) if row else None

    def page(self, limit: int, before_seq: int | None, owner: str | None = None) -> tuple[list[Job], int | None]:
        """Up to ``limit`` jobs (of ``owner``; None: of everyone), newest first, older than ``before_seq``;
        and the seq to continue from."""
        before = before_seq if before_seq is not None else 2**62
        with self._lock:
            if owner is None:
                rows = self._db.execute(
                    "SELECT seq, id, doc FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, limit + 1)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT seq, id, doc FROM jobs WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (owner, before, limit + 1),
                ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = [self._latest(job_id, doc) for _, job_id, doc in rows]
        return jobs, (rows[-1][0] if more and rows else None)

    def with_state(self, state: JobState) -> list[Job]:
        """Jobs in ``state``, oldest first (saves not yet written count with their new state)."""
        with self._lock:
            unsaved = set(self._unsaved)
            rows = self._db.execute(
                "SELECT id, doc FROM jobs WHERE state = ? OR id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                (state.value, json.dumps(sorted(unsaved))),
            ).fetchall()
            jobs = [self._latest(job_id, doc) for job_id, doc in rows]
        return [job for job in jobs if job.state == state]

    def owned_by(self, owner: str) -> list[Job]:
        """Every job of ``owner``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, doc FROM jobs WHERE owner = ? ORDER BY seq", (owner,)).fetchall()
            return [self._latest(job_id, doc) for job_id, doc in rows]

    def state_marker(self, state: JobState) -> tuple[int, int]:
        """(count, newest seq) of the jobs in ``state``: changes when a job enters or leaves it."""
        with self._lock:
            count, newest = self._db.execute(
                "SELECT COUNT(*), MAX(seq) FROM jobs WHERE state = ?", (state.value,)
            ).fetchone()
        return int(count), int(newest or 0)

    def record_throughput(self, quant_type: str, source_bytes: int, seconds: float) -> None:
        """Remember a measured rate; a database that refuses the write only loses this sample."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO throughput (quant_type, source_bytes, seconds, recorded) VALUES (?, ?, ?, ?)",
                    (quant_type, source_bytes, seconds, time.time()),
                )
            except sqlite3.OperationalError as exc:
                log.warning("throughput sample not recorded: %s", exc)

    def throughputs(self, quant_type: str, limit: int = 20) -> list[float]:
        """Source bytes per second of the latest runs of this type."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source_bytes, seconds FROM throughput WHERE quant_type = ? AND seconds > 0 "
                "ORDER BY recorded DESC LIMIT ?",
                (quant_type, limit),
            ).fetchall()
        return [b / s for b, s in rows]


def _migrate_to_owners(db: sqlite3.Connection) -> None:
    """A jobs table of before owners (request_id unique over all jobs) becomes one with an owner column
    ("local" for every old job) and request_id unique per owner; one transaction, so a kill leaves
    either the old table or the new one."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    if not columns or "owner" in columns:
        return
    db.executescript(
        f"""
        BEGIN IMMEDIATE;
        CREATE TABLE jobs_with_owners {_JOBS_COLUMNS};
        INSERT INTO jobs_with_owners (seq, id, owner, request_id, fingerprint, state, doc)
            SELECT seq, id, 'local', request_id, fingerprint, state, doc FROM jobs;
        DROP TABLE jobs;
        ALTER TABLE jobs_with_owners RENAME TO jobs;
        COMMIT;
        """
    )
    log.info("job database migrated: every job has an owner (earlier jobs: local)")
