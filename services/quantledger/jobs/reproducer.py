"""The reproducer service (``quantledger serve reproducer``): every new ``Registered`` record of a chosen
source or quant type is reproduced and, with the same bytes, co-attested from this service's own key.

It follows the registry's events with registry/follower.py (its journal, ``<data dir>/reproducer/
journal.jsonl``, is the cursor: a restart neither repeats nor skips an event whose outcome is written) and
runs each reproduction as a job of an engine of its own (its store in the data dir): a job that a crash
interrupted is resumed by the engine at the next start, and the event, not yet journaled, finds it again
by its request id (``event-{block}-{log index}``) instead of starting a second one. A reproduction that
registers a file this key already recorded counts it as registered, so handling an event twice is harmless.

What is not reproduced is journaled with the reason (``skipped``): this key's own records, records this
key already vouches for, revoked ones, Hugging Face format folders, quant types and sources not chosen,
outputs over the disk budget, and records whose provenance JSON is not in the provenance folders (a
provenance is found by its SHA-256, the record's provenance digest). A reproduction that fails its checks
(SOURCE_MISMATCH, TOOL_VERSION_MISMATCH…) is journaled with its reason, an unexpected exception as
INTERNAL (logged with its traceback: one record's surprise must not stop the service at every restart);
one past the time budget is cancelled (``TIMED_OUT``). Reproduced files are deleted once their verdict is
journaled unless ``keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

from quantledger.client_files import allowed_path
from quantledger.errors import JobAlreadyFinished, QuantledgerError
from quantledger.hf_export.formats import is_hf_format
from quantledger.jobs.model import Job
from quantledger.registry.follower import EventFollower, Journal
from quantledger.registry.provenance import SUFFIX
from quantledger.registry.reproduce import (
    MAX_PROVENANCE_BYTES,
    ReproductionInputs,
    parse_provenance,
    plan_reproduction,
    read_provenance,
    recorded_job,
    recorded_source,
)
from registry_client.errors import RegistryUnavailable
from registry_client.events import RegisteredEvent
from registry_client.records import Flag

if TYPE_CHECKING:
    from quantledger.jobs.engine import JobEngine
    from registry_client.client import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproducerConfig:
    """What ``serve reproducer`` reproduces, and within which budgets."""

    provenance_dirs: tuple[pathlib.Path, ...]
    sources: tuple[str, ...] = ()  # source digests, hub repository ids or local paths; empty: every source
    types: tuple[str, ...] = ()  # quant types; empty: every GGUF type
    from_block: int = 0
    disk_budget_bytes: int = 0  # 0: no limit; the record's source and output sizes must fit
    time_budget_seconds: float = 0.0  # 0: no limit; a reproduction running longer is cancelled
    keep: bool = False  # keep the reproduced files (default: deleted once the verdict is journaled)
    poll_seconds: float = 2.0


class ProvenanceIndex:
    """Provenance JSONs under some folders, found by the SHA-256 of their bytes (hashed once per file
    version: a file is hashed again only when its size or mtime changed)."""

    def __init__(self, folders: tuple[pathlib.Path, ...]) -> None:
        self.folders = folders
        self._seen: dict[pathlib.Path, tuple[int, int, str]] = {}

    def find(self, sha256: str) -> pathlib.Path | None:
        for folder in self.folders:
            for directory, subdirectories, names in os.walk(folder, followlinks=False):
                subdirectories.sort()
                for name in sorted(n for n in names if n.endswith(SUFFIX)):
                    path = pathlib.Path(directory) / name
                    if self._digest(path) == sha256:
                        return path
        return None

    def _digest(self, path: pathlib.Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            return ""
        if not S_ISREG(stat.st_mode):  # a FIFO or device in a shared folder would block the read forever
            return ""
        known = self._seen.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        if stat.st_size > MAX_PROVENANCE_BYTES:
            digest = ""
        else:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                return ""
        self._seen[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest


class Reproducer:
    """The handler of each ``Registered`` event: filters, budgets, then one reproduction job."""

    def __init__(
        self, engine: JobEngine, client_factory: Callable[[], RegistryClient], config: ReproducerConfig
    ) -> None:
        assert engine.registrar is not None, "a reproducer registers from its own key"
        self.engine = engine
        self.config = config
        self.client_factory = client_factory
        self.attester = engine.registrar.attester
        self.index = ProvenanceIndex(config.provenance_dirs)
        self.journal = Journal(engine.settings.home / "reproducer" / "journal.jsonl")

    async def run(self, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
        follower = EventFollower(
            self.client_factory, self.journal, from_block=self.config.from_block, poll_seconds=self.config.poll_seconds
        )
        await follower.follow(self.handle, stop=stop, until_idle=until_idle)

    async def handle(self, event: RegisteredEvent) -> dict[str, Any]:
        """The outcome of one event, journaled by the follower; typed errors of a reproduction are outcomes."""
        try:
            return await self._handle(event)
        except RegistryUnavailable:
            raise  # the follower retries the event when the chain answers again
        except QuantledgerError as exc:
            log.warning("reproducer: %s by %s: %s", event.file_sha256, event.attester, exc.message)
            return {"error": exc.reason, "message": exc.message}
        except Exception as exc:  # one record's surprise is journaled, not a crash that repeats on every restart
            log.exception("reproducer: %s by %s failed unexpectedly", event.file_sha256, event.attester)
            return {"error": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"[:1000]}

    async def _handle(self, event: RegisteredEvent) -> dict[str, Any]:
        if event.attester == self.attester:
            return {"skipped": "this key's own record"}
        client = await asyncio.to_thread(self.client_factory)
        records = await asyncio.to_thread(client.records_of, event.file_sha256)  # the file's, revoked included
        by_attester = {r.attester.lower(): r for r in records}
        record = by_attester.get(event.attester.lower())
        if record is None or record.revoked_at:
            return {"skipped": "revoked"}
        if self.attester.lower() in by_attester:
            return {"skipped": "this key already vouches for the file"}
        if record.flags & Flag.REPRODUCED:
            return {"skipped": "a reproduction (reproduce the original record)"}
        if is_hf_format(record.quant_type):
            return {"skipped": f"{record.quant_type} folders are not reproduced"}
        if self.config.types and record.quant_type not in self.config.types:
            return {"skipped": f"quant type {record.quant_type} not chosen"}
        budget = self.config.disk_budget_bytes
        if budget and record.original_size + record.quantized_size > budget:
            return {"skipped": f"{record.original_size + record.quantized_size} bytes exceed the disk budget {budget}"}
        found = await asyncio.to_thread(self.index.find, record.provenance_sha256)
        if found is None:
            return {"skipped": f"no provenance JSON with SHA-256 {record.provenance_sha256} in the provenance folders"}
        provenance = await asyncio.to_thread(read_provenance, found)
        if self.config.sources and not self._source_chosen(record.source_digest, provenance):
            return {"skipped": "source not chosen"}
        original = found.with_name(found.name.removesuffix(SUFFIX))
        inputs = ReproductionInputs(original_path=str(original) if original.is_file() else "")
        roots = tuple(self.engine.settings.allowed_roots)

        def allow(raw: str | pathlib.Path, what: str) -> pathlib.Path:  # paths a provenance names: only ours
            return allowed_path(str(raw), roots, what=what)

        spec = await asyncio.to_thread(plan_reproduction, provenance, records, inputs, allow)
        job = await self.engine.create(spec, request_id=f"event-{event.block_number}-{event.log_index}")
        return await self._conclude(await self._finished(job))

    def _source_chosen(self, source_digest: str, provenance: bytes) -> bool:
        recorded = recorded_job(parse_provenance(provenance)[1])
        names = {source_digest, recorded_source(recorded), recorded.source_uri}
        repo = recorded_source(recorded).split("@")[0]
        return any(choice in names or choice == repo for choice in self.config.sources)

    async def _finished(self, job: Job) -> Job:
        """The job once ended; cancelled when it runs past the time budget. The watch is never cancelled
        itself (asyncio.wait, not wait_for: a cancellation racing the engine's frequent change notices could
        be lost inside the watch, which then followed the job to its end), the job is."""

        async def last() -> Job:
            latest = job
            async for snapshot in self.engine.watch(job.id):
                latest = snapshot
            return latest

        watching = asyncio.ensure_future(last())
        done, _ = await asyncio.wait({watching}, timeout=self.config.time_budget_seconds or None)
        if not done:
            log.warning(
                "reproducer: %s ran past the time budget (%s s): cancelled", job.name, self.config.time_budget_seconds
            )
            with contextlib.suppress(JobAlreadyFinished):  # it ended meanwhile: keep its verdict
                await self.engine.cancel(job.id)
        return await watching

    async def _conclude(self, job: Job) -> dict[str, Any]:
        outcome: dict[str, Any] = {"job": job.name, "state": job.state.value}
        if job.state.value == "CANCELLED":
            outcome["verdict"] = "TIMED_OUT"
        elif job.error is not None:
            outcome.update(error=job.error.reason, message=job.error.message)
        if job.reproduced is not None:
            outcome.update(verdict=job.reproduced.verdict, reproducedSha256=job.reproduced.reproduced_sha256)
            if job.reproduced.first_difference:
                outcome["firstDifference"] = job.reproduced.first_difference
        entry = job.outputs[0].registry if job.outputs else None
        if entry is not None and entry.tx_hash:
            outcome["transaction"] = entry.tx_hash
        if entry is not None and entry.provenance_path and pathlib.Path(entry.provenance_path).is_file():
            # the provenance this key's record names: kept (and published from here) whatever happens to the file
            kept = self.engine.settings.home / "reproducer" / "provenance" / f"{entry.provenance_sha256}{SUFFIX}"
            kept.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, entry.provenance_path, kept)
            outcome["provenance"] = str(kept)
        if not self.config.keep and job.state.finished:
            self.engine.delete(job.id)
        log.info("reproducer: %s", outcome)
        return outcome
