"""Registrar: records finished outputs on the QuantizedModelRegistry, exactly once each.

A job's outputs are registered in one ``registerBatch`` transaction, or in several when they are more
than the contract's ``MAX_BATCH`` (read from the contract); each output carries the hash of the
transaction that registered it. Before sending, each file is looked up by contract view: a record this
attester already holds (an acknowledgement lost in a crash, or the same bytes made by an earlier job)
counts as registered, so a retry never registers anything twice.
A chain that does not answer leaves the outputs PENDING for the engine to retry; a refusal by the
contract (not an attester, invalid record) is FAILED with its reason and is not retried.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from quantledger.jobs.model import Artifact, Job, JobError, OutputFile, SourceInfo
from quantledger.registry.provenance import tool_version
from registry_client import errors as registry_errors
from registry_client.address_book import AddressBook
from registry_client.records import Flag, Registration, Status

if TYPE_CHECKING:  # web3 and eth-account load only when a chain is configured
    from eth_account.signers.local import LocalAccount

    from registry_client.client import RegistryClient, TransactionResult

log = logging.getLogger(__name__)

PENDING = "PENDING"
REGISTERED = "REGISTERED"
FAILED = "FAILED"
UNREGISTERED = "UNREGISTERED"

#: errors worth retrying: the chain may come back (or be redeployed)
_TRANSIENT = (
    registry_errors.RegistryUnavailable,
    registry_errors.TransactionFailed,
    registry_errors.ContractNotDeployed,
)


def flags_for(job: Job) -> int:
    options = job.spec.options
    flags = Flag(0)
    if job.imatrix_file:  # a client's matrix, or the one imatrix_path "auto" computed
        flags |= Flag.IMATRIX
    if options.pure:
        flags |= Flag.PURE
    if options.lora_dir:
        flags |= Flag.LORA_MERGED
    if options.allow_requantize:
        flags |= Flag.REQUANTIZED
    if options.leave_output_tensor:
        flags |= Flag.OUTPUT_TENSOR_KEPT
    if job.spec.reproduction is not None:
        flags |= Flag.REPRODUCED
    return int(flags)


def registrations_for(job: Job, artifact: Artifact, info: SourceInfo) -> list[Registration]:
    """One registration per file of the output; a split output's original size is shared out by file size."""
    entry = artifact.registry
    assert entry is not None
    total = artifact.total_size_bytes
    # a folder is one record of its root digest and its total size; a file (or each shard) its own
    files = (OutputFile("", total, artifact.sha256),) if artifact.folder else artifact.files or ()
    if job.spec.reproduction is not None:  # a reproduction co-attests the recorded file, not its other shards
        files = tuple(f for f in files if f.sha256 == job.spec.reproduction.file_sha256)
    result = []
    for file in files:
        share = artifact.source_size_bytes * file.size_bytes // total if total else 0
        result.append(
            Registration(
                file_sha256=file.sha256,
                source_digest=info.root_digest,
                provenance_sha256=entry.provenance_sha256,
                quant_type=artifact.quant_type,
                tool_version=tool_version(),
                file_type=max(artifact.file_type, 0),
                original_size=max(share, file.size_bytes),
                quantized_size=file.size_bytes,
                source_revision=info.commit_sha,
                flags=flags_for(job),
            )
        )
    return result


class Registrar:
    """Registers outputs under one key on one chain; connects lazily and reconnects after failures."""

    def __init__(self, url: str, account: LocalAccount, address_book: AddressBook, *, address: str | None = None):
        self.url = url
        self.account = account
        self.address_book = address_book
        self.address = address
        self._client: RegistryClient | None = None
        self._lock = threading.Lock()

    @property
    def attester(self) -> str:
        return str(self.account.address)

    def client(self) -> RegistryClient:
        """The registry at the configured address, else the one recorded for this chain (deployed if missing)."""
        from registry_client.client import RegistryClient

        if self._client is None:
            if self.address:
                self._client = RegistryClient.connect(self.url, address=self.address, account=self.account)
            else:
                self._client = RegistryClient.ensure_deployed(self.url, self.account, self.address_book)
        return self._client

    def register(self, job: Job, artifacts: Sequence[Artifact]) -> list[Artifact]:
        """Register every PENDING output of ``job``; returns the outputs with their entries updated."""
        with self._lock:
            pending = [a for a in artifacts if a.registry is not None and a.registry.state == PENDING]
            if not pending:
                return list(artifacts)
            info = job.source_info
            assert info is not None and info.root_digest, "a job's source digest is set before registering"
            try:
                updated = self._register(job, pending, info)
            except _TRANSIENT as exc:
                self._client = None
                log.warning("%s: registration pending: %s", job.name, exc.message)
                updated = {id(a): _with(a, attempts=1, error=JobError.of(exc)) for a in pending}
            except registry_errors.RegistryError as exc:
                log.warning("%s: registration refused: %s", job.name, exc.message)
                updated = {id(a): _with(a, state=FAILED, attempts=1, error=JobError.of(exc)) for a in pending}
            except Exception as exc:  # a bug or a surprise from web3: keep the outputs PENDING, say what happened
                self._client = None
                log.exception("%s: registration failed unexpectedly; will retry", job.name)
                error = JobError("INTERNAL", "REGISTRY_ERROR", f"registration failed: {type(exc).__name__}: {exc}")
                updated = {id(a): _with(a, attempts=1, error=error) for a in pending}
            return [updated.get(id(a), a) for a in artifacts]

    def _register(self, job: Job, pending: list[Artifact], info: SourceInfo) -> dict[int, Artifact]:
        client = self.client()
        chain_id = client.chain_id
        to_send: list[Registration] = []
        for artifact in pending:
            for registration in registrations_for(job, artifact, info):
                valid = registration.validated()
                if client.verify(valid.file_sha256, self.attester) is Status.UNKNOWN:
                    to_send.append(valid)
                else:
                    log.info("%s: %s is already recorded by %s", job.name, valid.file_sha256, self.attester)
        registered_by: dict[str, TransactionResult] = {}  # file sha256 -> the batch that registered it
        for start in range(0, len(to_send), client.max_batch):
            batch = to_send[start : start + client.max_batch]
            result = client.register_batch(batch)
            registered_by.update((r.file_sha256, result) for r in batch)
        updated = {}
        for artifact in pending:
            # a split output whose files span two batches is complete with the later one
            results = [registered_by[d] for d in artifact.registered_digests if d in registered_by]
            last = max(results, key=lambda r: r.block_number) if results else None
            updated[id(artifact)] = _with(
                artifact,
                state=REGISTERED,
                attempts=1,
                error=None,
                chain_id=chain_id,
                contract=client.address,
                attester=self.attester,
                tx_hash=last.transaction if last else "",
                block_number=last.block_number if last else 0,
            )
        return updated


def _with(artifact: Artifact, *, attempts: int, **changes: object) -> Artifact:
    entry = artifact.registry
    assert entry is not None
    return dataclasses.replace(
        artifact,
        registry=dataclasses.replace(entry, attempts=entry.attempts + attempts, **changes),  # type: ignore[arg-type]
    )
