"""Stage CALIBRATING: the importance matrix of a job whose imatrix_path is "auto".

A matrix depends on the model's weights, the calibration text, the chunking and llama.cpp; it is kept
in ``Settings.imatrix_cache`` under the SHA-256 of exactly those (the source's root digest, the
intermediate's file type, the text's digest, chunks, chunk size, llama.cpp's build), so the same source
and text in another job — or the same job resumed — take it from there. It is computed in a worker
process (quantize/calibrate.py through quantize/worker.py mode ``calibrate``): a crash fails the job, a
cancel kills the process group, and the file lands under a temporary name renamed into place, so the
cache never holds half a matrix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import secrets
from collections.abc import Awaitable
from typing import Any

from quantledger.hf.manifest import SourceManifest
from quantledger.jobs.model import ComputedImatrix, Job, Stage
from quantledger.jobs.stages import StageHost
from quantledger.llama_build import llama_cpp_build
from quantledger.quantize.plan import QuantizePlan
from quantledger.quantize.sources import resolve_allowed

DEFAULT_CTX = 512


def calibration_text(job: Job, roots: tuple[pathlib.Path, ...]) -> tuple[str, bytes]:
    """The calibration text's path for the worker ("" for the shipped one) and its bytes."""
    options = job.spec.options
    if options.calibration_path:
        path = resolve_allowed(options.calibration_path, roots, what="calibration_path")
        return str(path), path.read_bytes()
    from quantledger.quantize.calibrate import default_calibration_text

    return "", default_calibration_text().encode("utf-8")


def cache_key(source_digest: str, file_type: int, text: bytes, chunks: int, ctx: int) -> str:
    body = {
        "source": source_digest,
        "file_type": file_type,
        "calibration": hashlib.sha256(text).hexdigest(),
        "chunks": chunks,
        "ctx": ctx,
        "llama.cpp": llama_cpp_build(),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def calibrate(
    host: StageHost, job: Job, plan: QuantizePlan, identity: Awaitable[SourceManifest | None]
) -> ComputedImatrix:
    """Find or compute the job's matrix (see the module docstring) and record it on the job."""
    settings = host.settings_for(job)
    options = job.spec.options
    text_path, text = await asyncio.to_thread(calibration_text, job, settings.allowed_roots)
    ctx = options.calibration_ctx or DEFAULT_CTX
    timeline = host.timeline(job)
    timeline.begin(Stage.CALIBRATING, 0, "chunks")
    host.touch(job)
    info = job.source_info
    manifest = await identity  # a GGUF source's digest (an HF source has its own already)
    digest = (info.root_digest if info is not None else "") or (manifest.root_digest if manifest else "")
    key = cache_key(digest, plan.source.header.file_type or 0, text, options.calibration_chunks, ctx)
    cache = settings.imatrix_cache
    final = cache / f"{key}.imatrix.gguf"
    made = cache / f"{key}.json"
    if final.is_file() and made.is_file():
        found = ComputedImatrix(**{**json.loads(made.read_text()), "path": str(final), "cached": True})
        job.imatrix = found
        host.touch(job)
        return found
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{key}.{secrets.token_hex(4)}.partial"
    request: dict[str, Any] = {
        "mode": "calibrate",
        "model": str(plan.source.path),
        "calibration_path": text_path,
        "output": str(partial),
        "output_format": "gguf",
        "chunks": options.calibration_chunks,
        "n_ctx": ctx,
        "threads": plan.base_request["threads"],
    }

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "calibrate_progress":
            timeline.advance(int(event["done"]), int(event["total"]))
            host.touch(job, save=False)

    try:
        result = await host.worker_for(job, request).run(on_event)
        [event] = result.of("imatrix")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    computed = ComputedImatrix(
        path=str(final),
        sha256=str(event["sha256"]),
        dataset=str(event["dataset"]),
        calibration_sha256=str(event["calibration_sha256"]),
        chunks=int(event["chunks"]),
        chunk_size=int(event["chunk_size"]),
    )
    record = {k: v for k, v in computed.__dict__.items() if k not in ("path", "cached")}
    tmp = made.with_suffix(f".{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, made)
    job.imatrix = computed
    host.touch(job)
    return computed
