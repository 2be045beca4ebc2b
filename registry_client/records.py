"""Registry records as Python values, and their ABI form (bytes32 digests, left-aligned bytes32 labels)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from registry_client.errors import InvalidRegistration

MAX_SIZE = (1 << 48) - 1
LABEL_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


class Status(enum.IntEnum):
    """What ``verify`` answers for one (file, attester); values match the contract's enum."""

    UNKNOWN = 0
    VALID = 1
    REVOKED = 2


class Flag(enum.IntFlag):
    """Record flags; bit values match the contract's FLAG_* constants. REPRODUCED is quantledger's own bit
    (the contract stores a record's flags as given): the attester made the same bytes again from another
    attester's provenance instead of originating them (docs/REGISTRY.md, "Trust")."""

    IMATRIX = 1
    PURE = 2
    LORA_MERGED = 4
    REQUANTIZED = 8
    OUTPUT_TENSOR_KEPT = 16
    REPRODUCED = 32


def normalize_digest(value: str | bytes, field: str) -> str:
    """A SHA-256 as 64 lower-case hex characters; accepts an optional 0x prefix or 32 raw bytes."""
    if isinstance(value, bytes):
        if len(value) != 32:
            raise InvalidRegistration(f"{field} must be 32 bytes, got {len(value)}", field=field)
        return value.hex()
    text = value.strip().lower().removeprefix("0x")
    if not _HEX64.fullmatch(text):
        raise InvalidRegistration(
            f"{field} must be a SHA-256 in hex (64 characters), got {len(text)} characters", field=field
        )
    return text


def normalize_revision(value: str | None) -> str:
    """A source revision: a 40-character git commit sha, or "" for none."""
    text = (value or "").strip().lower().removeprefix("0x")
    if text and not _HEX40.fullmatch(text):
        raise InvalidRegistration(
            f"sourceRevision must be a 40-character commit sha or empty, got {value!r}", field="sourceRevision"
        )
    return text


def encode_label(text: str, field: str) -> bytes:
    """A label as the contract stores it: UTF-8, 1 to 32 bytes, no NUL, zero-padded on the right."""
    raw = text.encode("utf-8")
    if not raw or len(raw) > LABEL_BYTES or b"\0" in raw:
        raise InvalidRegistration(f"{field} must be 1 to {LABEL_BYTES} bytes of UTF-8 without NUL", field=field)
    return raw.ljust(LABEL_BYTES, b"\0")


@dataclass(frozen=True)
class Registration:
    """What an attester vouches for. ``validated()`` checks and normalizes every field."""

    file_sha256: str
    source_digest: str
    provenance_sha256: str
    quant_type: str
    tool_version: str
    file_type: int
    original_size: int
    quantized_size: int
    source_revision: str = ""
    flags: int = 0

    def validated(self) -> Registration:
        """A copy with normalized digests; raises InvalidRegistration for anything the contract would refuse."""
        for field, size in (("originalSize", self.original_size), ("quantizedSize", self.quantized_size)):
            if not 0 < size <= MAX_SIZE:
                raise InvalidRegistration(f"{field} must be between 1 and 2^48-1 bytes, got {size}", field=field)
        if self.quantized_size > self.original_size:
            raise InvalidRegistration(
                f"quantized size {self.quantized_size} is larger than the original {self.original_size}",
                field="quantizedSize",
            )
        for field, value in (("fileType", self.file_type), ("flags", self.flags)):
            if not 0 <= value <= 0xFFFF:
                raise InvalidRegistration(f"{field} must fit in 16 bits, got {value}", field=field)
        encode_label(self.quant_type, "quantType")
        encode_label(self.tool_version, "toolVersion")
        return Registration(
            file_sha256=normalize_digest(self.file_sha256, "fileDigest"),
            source_digest=normalize_digest(self.source_digest, "sourceDigest"),
            provenance_sha256=normalize_digest(self.provenance_sha256, "provenanceDigest"),
            quant_type=self.quant_type,
            tool_version=self.tool_version,
            file_type=self.file_type,
            original_size=self.original_size,
            quantized_size=self.quantized_size,
            source_revision=normalize_revision(self.source_revision),
            flags=self.flags,
        )

    def to_abi(self) -> tuple[Any, ...]:
        """The contract's Registration tuple (call on a validated value)."""
        return (
            bytes.fromhex(self.file_sha256),
            bytes.fromhex(self.source_digest),
            bytes.fromhex(self.source_revision or "00" * 20),
            bytes.fromhex(self.provenance_sha256),
            encode_label(self.quant_type, "quantType"),
            encode_label(self.tool_version, "toolVersion"),
            int(self.file_type),
            int(self.flags),
            int(self.original_size),
            int(self.quantized_size),
        )


@dataclass(frozen=True)
class Record:
    """One stored attestation, as the contract's views return it."""

    file_sha256: str
    attester: str
    source_digest: str
    source_revision: str
    provenance_sha256: str
    quant_type: str
    tool_version: str
    file_type: int
    flags: int
    original_size: int
    quantized_size: int
    attested_at: int
    revoked_at: int

    @property
    def status(self) -> Status:
        return Status.REVOKED if self.revoked_at else Status.VALID

    @property
    def compression_ratio(self) -> float:
        """original / quantized size (3.3 means 3.3x smaller)."""
        return self.original_size / self.quantized_size

    def matches(self, registration: Registration) -> bool:
        """Whether this record says exactly what ``registration`` (validated) would say."""
        return (
            self.file_sha256 == registration.file_sha256
            and self.source_digest == registration.source_digest
            and self.source_revision == registration.source_revision
            and self.provenance_sha256 == registration.provenance_sha256
            and self.quant_type == registration.quant_type
            and self.tool_version == registration.tool_version
            and self.file_type == registration.file_type
            and self.flags == registration.flags
            and self.original_size == registration.original_size
            and self.quantized_size == registration.quantized_size
        )

    @classmethod
    def from_abi(cls, value: tuple[Any, ...]) -> Record:
        (
            file_digest,
            attester,
            source,
            revision,
            provenance,
            quant_type,
            tool,
            file_type,
            flags,
            original,
            quantized,
            attested_at,
            revoked_at,
        ) = value
        revision_hex = bytes(revision).hex()
        return cls(
            file_sha256=bytes(file_digest).hex(),
            attester=str(attester),
            source_digest=bytes(source).hex(),
            source_revision="" if revision_hex == "00" * 20 else revision_hex,
            provenance_sha256=bytes(provenance).hex(),
            quant_type=str(quant_type),
            tool_version=str(tool),
            file_type=int(file_type),
            flags=int(flags),
            original_size=int(original),
            quantized_size=int(quantized),
            attested_at=int(attested_at),
            revoked_at=int(revoked_at),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fileSha256": self.file_sha256,
            "attester": self.attester,
            "sourceDigest": self.source_digest,
            "sourceRevision": self.source_revision,
            "provenanceSha256": self.provenance_sha256,
            "quantType": self.quant_type,
            "toolVersion": self.tool_version,
            "fileType": self.file_type,
            "flags": [flag.name for flag in Flag if self.flags & flag],
            "originalSize": self.original_size,
            "quantizedSize": self.quantized_size,
            "compressionRatio": round(self.compression_ratio, 4),
            "attestedAt": self.attested_at,
            "revokedAt": self.revoked_at,
            "status": self.status.name,
        }
