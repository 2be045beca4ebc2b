"""The REGISTERING stage of a job: provenance JSON next to each output, then the on-chain record."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import re
import threading
from collections.abc import Sequence

from quantledger.client_files import allowed_path as resolve_allowed
from quantledger.client_files import open_client_file
from quantledger.config import Settings
from quantledger.hf.manifest import SourceManifest, build_manifest
from quantledger.jobs.model import Artifact, Job, RegistryEntry, SourceFile
from quantledger.registry.provenance import build_statement, write_provenance
from quantledger.registry.registrar import PENDING, UNREGISTERED
from quantledger.registry.reproduce import matches, reproduced_from

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def gguf_source_files(path: pathlib.Path) -> list[str]:
    """Names of the files a GGUF source consists of: the file, or every shard of a split model."""
    match = _SPLIT.match(path.name)
    if match is None:
        return [path.name]
    count = int(match["count"])
    return [f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


class HashingStopped(Exception):
    """The job ended before its source was hashed."""


def source_manifest(job: Job, stop: threading.Event | None = None) -> SourceManifest | None:
    """A GGUF source's identity in the same form as a HF one: a manifest of its files (one, or every shard
    of a split model) and its root digest. None when the job already has it (HF sources). Runs at low CPU
    priority, beside the quantization, and stops early when ``stop`` is set."""
    info = job.source_info
    if info is None or info.root_digest:
        return None
    with contextlib.suppress(OSError, AttributeError):  # Linux: a thread id takes a nice value of its own
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)

    def check(_done: int, _total: int) -> None:
        if stop is not None and stop.is_set():
            raise HashingStopped

    path = pathlib.Path(info.path)
    return build_manifest(path.parent, gguf_source_files(path), check)


def apply_source_manifest(job: Job, manifest: SourceManifest | None) -> None:
    if manifest is None or job.source_info is None:
        return
    job.source_info = dataclasses.replace(
        job.source_info,
        root_digest=manifest.root_digest,
        manifest=tuple(SourceFile(f.path, f.size_bytes, f.sha256) for f in manifest.files),
    )


def attach_provenance(
    job: Job, artifact: Artifact, *, registering: bool, roots: Sequence[pathlib.Path] | None = None
) -> Artifact:
    """Write the output's provenance JSON and give the output its registry entry (PENDING or UNREGISTERED).

    The job's imatrix and LoRA adapter are the client's paths: they are read again through client_files,
    under ``roots`` (the allowed roots; from the environment when not given)."""
    if artifact.registry is not None:
        return artifact
    info = job.source_info
    assert info is not None
    options = job.spec.options
    allowed = tuple(roots) if roots is not None else Settings.from_env().allowed_roots
    imatrix = ""
    if job.imatrix_file:
        with open_client_file(job.imatrix_file, allowed, what="imatrix") as handle:
            imatrix = hashlib.file_digest(handle, "sha256").hexdigest()
    lora = ""
    if options.lora_dir:
        from quantledger.convert.lora import load_lora

        lora = load_lora(resolve_allowed(options.lora_dir, allowed, what="lora_dir")).sha256
    statement = build_statement(job, artifact, info, imatrix_sha256=imatrix, lora_sha256=lora)
    reproduction = job.spec.reproduction
    if reproduction is not None:  # the record this job redid; different bytes are registered by nobody
        statement["predicate"]["reproducedFrom"] = reproduced_from(reproduction)
        registering = registering and matches(reproduction, artifact)
    path, digest = write_provenance(artifact.path, statement)
    entry = RegistryEntry(
        state=PENDING if registering else UNREGISTERED, provenance_path=path, provenance_sha256=digest
    )
    return dataclasses.replace(artifact, registry=entry)
