"""RegistryReader: the read-only questions of the RegistryService, answered by contract views."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from quantledger.errors import InvalidArgument, quote_client
from quantledger.paging import PageSize, PageTokens
from quantledger.registry.verify import MAX_ATTESTERS, Verdict, Vouch, verdict_for, vouches, with_quorum
from quantledger.resource_names import RecordName
from registry_client.errors import ContractNotDeployed, RegistryUnavailable
from registry_client.records import Record, normalize_digest

if TYPE_CHECKING:
    from registry_client.client import RegistryClient

T = TypeVar("T")
RECORD_PAGES = PageSize(default=50, largest=100)


@dataclass(frozen=True)
class DigestVerification:
    verdict: Verdict
    valid: list[Record] = field(default_factory=list)
    revoked: list[Record] = field(default_factory=list)
    chain_id: int = 0  # where the answer comes from
    contract: str = ""
    min_attesters: int = 0  # the quorum asked for (verify.with_quorum)

    @property
    def vouches(self) -> list[Vouch]:
        return vouches(self.valid)


@dataclass(frozen=True)
class RegistryInfo:
    """Where the registry this service reads lives."""

    chain_id: int
    chain_url: str  # the JSON-RPC URL as this service reaches it
    contract: str
    contract_version: str


def record_name(record: Record) -> str:
    return str(RecordName(record.file_sha256, record.attester))


def _digest(value: str, what: str) -> str:
    try:
        return normalize_digest(value, what)
    except Exception as exc:
        raise InvalidArgument(f"{what} must be a SHA-256 in hex (64 characters)", field=what) from exc


class RegistryReader:
    """Records by name, by digest and by source, over one RegistryClient (no key needed).

    ``connect`` makes the client on first use and again after the chain stopped answering, so the
    service starts (and keeps serving health) while its chain is away.
    """

    def __init__(self, connect: Callable[[], RegistryClient], page_tokens: PageTokens, *, chain_url: str = "") -> None:
        self._connect = connect
        self._chain_url = chain_url
        self._page_tokens = page_tokens
        self._client: RegistryClient | None = None

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def forget_client(self) -> None:
        self._client = None

    def _reconnecting(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (RegistryUnavailable, ContractNotDeployed):
            self.forget_client()
            raise

    def get_record(self, name: RecordName) -> Record:
        return self._reconnecting(lambda: self.client.get(name.file_sha256, name.attester))

    def verify_digest(
        self, file_sha256: str, attester: str = "", size_bytes: int = 0, min_attesters: int = 0
    ) -> DigestVerification:
        return self._reconnecting(lambda: self._verify_digest(file_sha256, attester, size_bytes, min_attesters))

    def list_records(self, parent: str, page_size: int, page_token: str) -> tuple[list[Record], str]:
        return self._reconnecting(lambda: self._list_records(parent, page_size, page_token))

    def registry_info(self) -> RegistryInfo:
        return self._reconnecting(self._registry_info)

    def _registry_info(self) -> RegistryInfo:
        client = self.client
        return RegistryInfo(client.chain_id, self._chain_url, client.address, client.contract_version())

    def _verify_digest(
        self, file_sha256: str, attester: str = "", size_bytes: int = 0, min_attesters: int = 0
    ) -> DigestVerification:
        if size_bytes < 0:
            raise InvalidArgument("size_bytes must not be negative", field="size_bytes")
        if not 0 <= min_attesters <= MAX_ATTESTERS:
            raise InvalidArgument(f"min_attesters lies in 0..{MAX_ATTESTERS}", field="min_attesters")
        if attester and min_attesters > 1:
            raise InvalidArgument("a quorum counts every attester: leave attester empty", field="attester")
        digest = _digest(file_sha256, "file_sha256")
        records = self.client.records_of(digest)
        if attester:
            records = [r for r in records if r.attester.lower() == attester.lower()]
        revoked = [r for r in records if r.revoked_at]
        valid = [r for r in records if not r.revoked_at and (not size_bytes or r.quantized_size == size_bytes)]
        client = self.client
        verdict = with_quorum(verdict_for(records, valid), valid, min_attesters)
        return DigestVerification(verdict, valid, revoked, client.chain_id, client.address, min_attesters)

    def _list_records(self, parent: str, page_size: int, page_token: str) -> tuple[list[Record], str]:
        size = RECORD_PAGES.of(page_size)
        listing = f"records/{parent}"
        offset = self._page_tokens.decode(listing, page_token) or 0
        kind, _, value = parent.partition("/")
        if kind == "files":
            digest = _digest(value, "parent")
            attesters, total = self.client.attesters_of(digest, offset, size)
            records = [self.client.get(digest, a) for a in attesters]
        elif kind == "sources":
            digest = _digest(value, "parent")
            files, total = self.client.files_by_source(digest, offset, size)
            records = []
            for file in files:
                records.extend(r for r in self.client.records_of(file) if r.source_digest == digest)
        else:
            raise InvalidArgument(
                f"parent {quote_client(parent)} must be files/{{sha256}} or sources/{{digest}}", field="parent"
            )
        offset += len(attesters) if kind == "files" else len(files)
        return records, (self._page_tokens.encode(listing, offset) if offset < total else "")
