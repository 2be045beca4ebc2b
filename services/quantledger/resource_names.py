"""Resource names of the API (AIP-122), parsed in one place for every service.

    jobs/{id}                               a quantization job
    files/{sha256}/records/{attester}       one attester's provenance record of a file

A string that is not a well-formed name is INVALID_ARGUMENT, whichever service received it; a
well-formed name of nothing is the service's own NOT_FOUND (JOB_NOT_FOUND, RECORD_NOT_FOUND).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantledger.errors import InvalidArgument, quote_client

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class JobName:
    """``jobs/{id}``."""

    id: str

    @classmethod
    def parse(cls, name: str) -> JobName:
        prefix, _, ident = name.partition("/")
        if prefix != "jobs" or not _JOB_ID.fullmatch(ident):
            raise InvalidArgument(f"{quote_client(name)} is not a job name (expected jobs/{{id}})", field="name")
        return cls(ident)

    def __str__(self) -> str:
        return f"jobs/{self.id}"


@dataclass(frozen=True)
class RecordName:
    """``files/{sha256}/records/{attester}``; the digest lower-cased, the address as given."""

    file_sha256: str
    attester: str

    @classmethod
    def parse(cls, name: str) -> RecordName:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "files" or parts[2] != "records":
            raise InvalidArgument(
                f"{quote_client(name)} is not a record name (files/{{sha256}}/records/{{attester}})", field="name"
            )
        digest = parts[1].strip().lower().removeprefix("0x")
        if not _SHA256.fullmatch(digest):
            raise InvalidArgument("file_sha256 must be a SHA-256 in hex (64 characters)", field="file_sha256")
        if not _ADDRESS.fullmatch(parts[3]):
            raise InvalidArgument(
                f"{quote_client(parts[3])} is not an address (0x and 40 hex characters)", field="attester"
            )
        return cls(digest, parts[3])

    def __str__(self) -> str:
        return f"files/{self.file_sha256}/records/{self.attester}"
