"""ReproduceArtifact on the engine: what a client names, read under its roots, checked, then one job.

The checks (registry/reproduce.py ``plan_reproduction``) run before the job exists, in a thread (they read
the chain and hash the source); the job they return is created as any other, so its owner, quotas, Watch,
Cancel and Delete are the ordinary ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantledger.client_files import allowed_path, open_client_file
from quantledger.errors import InvalidArgument
from quantledger.jobs.model import MAX_PATH_LENGTH, JobSpec, check_text
from quantledger.registry.provenance import SUFFIX
from quantledger.registry.reproduce import MAX_PROVENANCE_BYTES, ReproductionInputs, plan_reproduction
from registry_client.errors import KeyUnavailable
from registry_client.records import normalize_digest

if TYPE_CHECKING:
    from quantledger.config import Settings
    from quantledger.registry.registrar import Registrar


@dataclass(frozen=True)
class ReproduceRequest:
    """ReproduceArtifactRequest as domain values (paths as the client gave them)."""

    file_sha256: str = ""
    file_path: str = ""
    provenance_json: bytes = b""
    provenance_path: str = ""
    source: str = ""
    lora_dir: str = ""
    imatrix_path: str = ""
    output_dir: str = ""
    any_version: bool = False
    report: bool = False

    def check_bounds(self) -> None:
        for name in ("file_path", "provenance_path", "source", "lora_dir", "imatrix_path", "output_dir"):
            check_text(name, getattr(self, name), MAX_PATH_LENGTH)
        if len(self.provenance_json) > MAX_PROVENANCE_BYTES:
            raise InvalidArgument(
                f"provenance_json is larger than {MAX_PROVENANCE_BYTES} bytes", field="provenance_json"
            )
        if not self.file_sha256 and not self.file_path:
            raise InvalidArgument("name the recorded file: file_sha256 or file_path", field="file_sha256")
        if not self.provenance_json and not (self.provenance_path or self.file_path):
            raise InvalidArgument(
                "give the provenance JSON: provenance_json or provenance_path", field="provenance_json"
            )


def _read_limited(path: str, roots: tuple[pathlib.Path, ...]) -> bytes:
    with open_client_file(path, roots, what="provenance") as handle:
        return handle.read(MAX_PROVENANCE_BYTES + 1)


def reproduction_spec(request: ReproduceRequest, settings: Settings, registrar: Registrar | None) -> JobSpec:
    """The job ``request`` asks for, after every check (blocking: run in a thread)."""
    if registrar is None:
        raise KeyUnavailable(
            "this server registers nothing (no chain configured): a reproduction co-attests from the server's key"
        )
    roots = tuple(settings.allowed_roots)

    def allow(raw: str | pathlib.Path, what: str) -> pathlib.Path:
        return allowed_path(str(raw), roots, what=what)

    file_path = allow(request.file_path, "file") if request.file_path else None
    if request.file_sha256:
        sha = normalize_digest(request.file_sha256, "file_sha256")
    else:
        assert file_path is not None
        with open_client_file(request.file_path, roots, what="file") as handle:
            sha = hashlib.file_digest(handle, "sha256").hexdigest()
    provenance = request.provenance_json or _read_limited(request.provenance_path or request.file_path + SUFFIX, roots)
    inputs = ReproductionInputs(
        source=allow(request.source, "source") if request.source else None,
        lora=allow(request.lora_dir, "lora_dir") if request.lora_dir else None,
        imatrix=allow(request.imatrix_path, "imatrix") if request.imatrix_path else None,
        any_version=request.any_version,
        report=request.report,
        original_path=str(file_path) if file_path is not None and file_path.is_file() else "",
        output_dir=request.output_dir,
    )
    return plan_reproduction(provenance, registrar.client().records_of(sha), inputs, allow)


async def plan_request(request: ReproduceRequest, settings: Settings, registrar: Registrar | None) -> JobSpec:
    request.check_bounds()
    return await asyncio.to_thread(reproduction_spec, request, settings, registrar)
