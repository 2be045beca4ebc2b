"""A job's Hugging Face outputs (docs/HF_EXPORT.md): merge the LoRA once, write each format in a worker,
hash the folder as a manifest, rename it into place and record it as an artifact beside the GGUF outputs.

An output folder is written under a hidden partial name in the output directory and renamed whole once
hashed, as GGUF files are; the artifact's ``sha256`` is the folder's root digest (hf/manifest.py: the same
form as a source's), its ``files`` every file with its own digest.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import time
from typing import Any

from quantledger.errors import OutputExists
from quantledger.hf.manifest import build_manifest, folder_files
from quantledger.hf_export.formats import HfFormat
from quantledger.jobs.model import Artifact, Job, OutputFile, Stage
from quantledger.jobs.output_stage import MIN_BYTES_FOR_THROUGHPUT
from quantledger.jobs.stages import StageHost
from quantledger.quantize.plan import QuantizePlan, output_name
from quantledger.quantize.sources import resolve_allowed


def merged_folder(host: StageHost, job: Job) -> pathlib.Path:
    settings = host.settings_for(job)
    return pathlib.Path(settings.scratch_dir or settings.home / "scratch") / f"merged-{job.id}"


async def export_formats(host: StageHost, job: Job, plan: QuantizePlan) -> None:
    """Write every Hugging Face format of ``plan`` this job has not finished yet (stage QUANTIZING)."""
    finished = {a.quant_type for a in job.outputs}
    todo = [f for f in plan.formats if f.name not in finished]
    if not todo:
        return
    assert job.source_info is not None
    folder = pathlib.Path(job.source_info.path)
    try:
        if job.spec.options.lora_dir:
            folder = await _merged(host, job)
        for fmt in todo:
            await _export_one(host, job, plan, folder, fmt)
    finally:  # the merged weights serve this stage only (a resumed run merges again)
        await asyncio.to_thread(shutil.rmtree, merged_folder(host, job), True)


async def _merged(host: StageHost, job: Job) -> pathlib.Path:
    """The source with the job's LoRA merged (hf_export/export.py ``merge_lora``), in scratch for every
    format of the job."""
    target = merged_folder(host, job)
    await asyncio.to_thread(shutil.rmtree, target, True)  # a merge cut short
    target.parent.mkdir(parents=True, exist_ok=True)
    assert job.source_info is not None
    lora = resolve_allowed(job.spec.options.lora_dir, host.settings_for(job).allowed_roots, what="lora_dir")
    request = {"mode": "hf_merge", "folder": job.source_info.path, "lora_dir": str(lora), "output": str(target)}
    job.progress.current_quant_type = "LoRA merge"
    host.touch(job)
    await host.worker_for(job, request).run(lambda _event: None)
    return target


async def _export_one(host: StageHost, job: Job, plan: QuantizePlan, folder: pathlib.Path, fmt: HfFormat) -> None:
    final = plan.hf_output_path(fmt)
    partial = final.with_name(f".{final.name}.{job.id}.partial")
    await asyncio.to_thread(shutil.rmtree, partial, True)  # left by a run of this job before a restart
    progress = job.progress
    progress.current_quant_type = fmt.name
    progress.current_tensor = ""
    host.timeline(job).begin(Stage.QUANTIZING, progress.bytes_total, "bytes", done=progress.bytes_done)
    host.touch(job)
    request = {
        "mode": "hf_export",
        "folder": str(folder),
        "format": fmt.name,
        "output": str(partial),
        "threads": plan.base_request.get("threads") or 0,
    }
    started = time.monotonic()
    try:
        result = await host.worker_for(job, request).run(lambda _event: None)
        seconds = time.monotonic() - started
        exported = result.of("exported")[-1]
        if plan.source.header.tensor_bytes >= MIN_BYTES_FOR_THROUGHPUT:
            host.store.record_throughput(fmt.name, plan.source.header.tensor_bytes, seconds)
        artifact = await asyncio.to_thread(_hashed_artifact, job, plan, fmt, partial, final, exported, seconds)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, partial, True)
        raise
    progress.bytes_done = min(progress.bytes_total, progress.bytes_done + plan.source.header.tensor_bytes)
    order = {output_name(name): i for i, name in enumerate(job.spec.quant_types)}
    job.outputs = sorted([*job.outputs, artifact], key=lambda a: order.get(a.quant_type, len(order)))
    progress.outputs_done += 1
    host.touch(job)


def _hashed_artifact(
    job: Job,
    plan: QuantizePlan,
    fmt: HfFormat,
    partial: pathlib.Path,
    final: pathlib.Path,
    exported: dict[str, Any],
    seconds: float,
) -> Artifact:
    """Hash ``partial`` as a manifest, rename it to ``final`` and describe it."""
    manifest = build_manifest(partial, folder_files(partial))
    if os.path.lexists(final):
        if not job.spec.options.overwrite:
            raise OutputExists(f"{final} appeared while the job ran: remove it or set overwrite", path=str(final))
        shutil.rmtree(final) if final.is_dir() and not final.is_symlink() else final.unlink()
    os.replace(partial, final)
    files = tuple(OutputFile(str(final / f.path), f.size_bytes, f.sha256) for f in manifest.files)
    total = sum(f.size_bytes for f in files)
    weights = sum(f.size_bytes for f in files if f.path.endswith(".safetensors"))
    parameters = plan.source.header.n_parameters or int(exported.get("parameters") or 0)
    return Artifact(
        quant_type=fmt.name,
        path=str(final),
        size_bytes=total,
        sha256=manifest.root_digest,
        bits_per_weight=8 * weights / parameters if parameters else 0.0,
        fallback_tensor_count=0,
        tensor_count=int(exported.get("tensors") or 0),
        source_size_bytes=plan.source.header.file_size,
        quantize_seconds=seconds,
        file_type=-1,
        files=files,
        folder=True,
    )
