"""verify_file: is this file (or Hugging Face output folder) on disk one that somebody vouches for on chain?

Order of work: the GGUF header first (cheap, and a non-GGUF file is refused before hashing), then the
size against the expected record when the caller names a digest (a wrong size fails without hashing),
then the streamed SHA-256, then one contract view for the file's records; every record is checked
against the file's size and its header's ``general.file_type``.
"""

from __future__ import annotations

import enum
import os
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quantledger.gguf.reader import read_gguf_header
from quantledger.hashing import sha256_file
from quantledger.hf.manifest import build_manifest, folder_files
from registry_client.records import Record, normalize_digest

if TYPE_CHECKING:
    from registry_client.client import RegistryClient


class Verdict(enum.Enum):
    """The answer of ``verify_file``."""

    VALID = "VALID"  # at least one valid record matches the file's digest, size and file type
    REVOKED = "REVOKED"  # records exist for the digest but every one is revoked
    UNKNOWN = "UNKNOWN"  # nobody registered these bytes
    MISMATCH = "MISMATCH"  # records exist, but none agrees with the file's size or file type
    TOO_FEW_ATTESTERS = "TOO_FEW_ATTESTERS"  # valid records, from fewer independent attesters than asked


MAX_ATTESTERS = 100  # a quorum larger than this is no request a registry answers with one view


@dataclass(frozen=True)
class Vouch:
    """One attester's valid record of the bytes, and whether it reproduced them or made them first."""

    attester: str
    reproduced: bool
    attested_at: int


def vouches(valid: list[Record]) -> list[Vouch]:
    """The distinct attesters of ``valid`` records (non-revoked, agreeing with the file), oldest first."""
    from registry_client.records import Flag

    seen: dict[str, Vouch] = {}
    for record in sorted(valid, key=lambda r: r.attested_at):
        key = record.attester.lower()
        if key not in seen:
            seen[key] = Vouch(record.attester, bool(record.flags & Flag.REPRODUCED), record.attested_at)
    return list(seen.values())


def with_quorum(verdict: Verdict, valid: list[Record], min_attesters: int) -> Verdict:
    """``verdict`` held to a quorum: VALID only when at least ``min_attesters`` distinct attesters vouch
    (0 or 1: any one), else TOO_FEW_ATTESTERS."""
    if verdict is Verdict.VALID and len(vouches(valid)) < min_attesters:
        return Verdict.TOO_FEW_ATTESTERS
    return verdict


@dataclass(frozen=True)
class FileVerification:
    """What the chain says about one file."""

    path: str
    sha256: str
    size_bytes: int
    file_type: int | None
    verdict: Verdict
    valid: list[Record] = field(default_factory=list)
    revoked: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "sizeBytes": self.size_bytes,
            "fileType": self.file_type,
            "verdict": self.verdict.value,
            "valid": [r.to_json() for r in self.valid],
            "revoked": [r.to_json() for r in self.revoked],
            "problems": self.problems,
        }


def verdict_for(records: list[Record], valid: list[Record]) -> Verdict:
    """The answer for a digest: its ``records``, of which ``valid`` are unrevoked and agree with the file."""
    if valid:
        return Verdict.VALID
    if not records:
        return Verdict.UNKNOWN
    if all(r.revoked_at for r in records):
        return Verdict.REVOKED
    return Verdict.MISMATCH


def _record_problems(record: Record, size: int, file_type: int | None) -> list[str]:
    problems = []
    if record.quantized_size != size:
        problems.append(f"{record.attester} recorded {record.quantized_size} bytes; the file has {size}")
    if file_type is not None and record.file_type != file_type:
        problems.append(f"{record.attester} recorded file type {record.file_type}; the header says {file_type}")
    return problems


def verify_file(
    client: RegistryClient,
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    attester: str | None = None,
) -> FileVerification:
    """Check ``path`` against the registry; ``attester`` limits the answer to one attester's record."""
    file_path = pathlib.Path(path)
    if file_path.is_dir():  # a Hugging Face format's folder: recorded by its root digest and total size
        manifest = build_manifest(file_path, folder_files(file_path))
        digest: str | None = manifest.root_digest
        file_type = None
        size = sum(f.size_bytes for f in manifest.files)
    else:
        digest = None
        file_type = read_gguf_header(file_path).file_type
        size = file_path.stat().st_size
    if expected_sha256 is not None:
        expected = normalize_digest(expected_sha256, "fileDigest")
        sizes = {r.quantized_size for r in client.records_of(expected)}
        if sizes and size not in sizes:
            return FileVerification(
                str(file_path),
                expected,
                size,
                file_type,
                Verdict.MISMATCH,
                problems=[f"the file has {size} bytes; records of {expected} say {sorted(sizes)}"],
            )
    digest = digest or sha256_file(file_path)
    records = client.records_of(digest)
    if attester is not None:
        records = [r for r in records if r.attester.lower() == attester.lower()]
    valid, revoked, problems = [], [], []
    for record in records:
        trouble = _record_problems(record, size, file_type)
        problems.extend(trouble)
        if record.revoked_at:
            revoked.append(record)
        elif not trouble:
            valid.append(record)
    verdict = verdict_for(records, valid)
    return FileVerification(str(file_path), digest, size, file_type, verdict, valid, revoked, problems)
