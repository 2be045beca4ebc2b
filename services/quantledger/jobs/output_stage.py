"""One output of a job: quantize it in a worker, then hash, rename and record it as an artifact.

``quantize_output`` runs llama.cpp for one type and turns its per-tensor log into the job's progress;
``complete_output`` (run in a task, beside the next type's quantization) hashes what the worker wrote,
renames the partial files to their final names and appends the artifact to the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from typing import Any, BinaryIO

from quantledger.errors import QuantizeFailed
from quantledger.gguf.reader import read_gguf_header
from quantledger.gguf.split import shard_counts, write_shards
from quantledger.hashing import sha256_file
from quantledger.jobs.model import Artifact, Job, OutputFile, Stage
from quantledger.jobs.stages import StageHost
from quantledger.quantize.estimate import throughput_for
from quantledger.quantize.llama_log import fallback_count
from quantledger.quantize.plan import PlannedOutput, QuantizePlan, output_name, refuse_another_jobs_output
from registry_client.atomic_files import create_exclusive, open_directory

PROGRESS_SAVE_SECONDS = 2.0
HASH_REPORT_BYTES = 4 << 20  # hashing progress reaches the job every this many bytes
# Runs shorter than this say more about process start-up than about throughput.
MIN_BYTES_FOR_THROUGHPUT = 16 << 20


async def quantize_output(
    host: StageHost, job: Job, plan: QuantizePlan, index: int, output: PlannedOutput
) -> tuple[list[dict[str, Any]], float]:
    """Write output ``index`` of ``plan`` (its partial files); return the worker's events and the seconds it took."""
    header = plan.source.header
    bytes_of = {t.name: t.n_bytes for t in header.tensors}
    per_output = header.tensor_bytes
    before = per_output * index
    progress = job.progress
    progress.current_quant_type = output.quant_type.name
    progress.tensors_done = 0
    progress.tensors_total = len(header.tensors)
    progress.outputs_done = index
    timeline = host.timeline(job)
    timeline.begin(Stage.QUANTIZING, progress.bytes_total, "bytes", done=before)
    host.touch(job)
    default_rate, _ = throughput_for(output.quant_type, host.store)
    started = time.monotonic()
    done_here = 0
    last_save = started

    def on_event(event: dict[str, Any]) -> None:
        nonlocal done_here, last_save
        kind = event.get("event")
        if kind == "tensor_start":
            progress.current_tensor = event["name"]
        elif kind == "tensor_done":
            done_here += bytes_of.get(event["name"], int(event.get("mib_before", 0) * (1 << 20)))
            progress.tensors_done = int(event["index"])
        else:
            return
        now = time.monotonic()
        elapsed = now - started
        rate = done_here / elapsed if done_here and elapsed > 0 else 0.0
        progress.bytes_done = before + done_here
        progress.bytes_per_second = rate
        remaining = progress.bytes_total - progress.bytes_done
        timeline.advance(progress.bytes_done, progress.bytes_total, eta=remaining / (rate or default_rate))
        save = now - last_save >= PROGRESS_SAVE_SECONDS
        if save:
            last_save = now
        host.touch(job, save=save)

    worker = host.worker_for(job, plan.worker_request(output))
    result = await worker.run(on_event)
    seconds = time.monotonic() - started
    if per_output >= MIN_BYTES_FOR_THROUGHPUT:
        host.store.record_throughput(output.quant_type.name, per_output, seconds)
    progress.bytes_done = before + per_output
    progress.outputs_done = index + 1
    remaining = progress.bytes_total - progress.bytes_done
    timeline.advance(progress.bytes_done, eta=remaining / (per_output / seconds if seconds > 0 else default_rate))
    host.touch(job)
    return result.events, seconds


async def complete_output(
    host: StageHost,
    job: Job,
    plan: QuantizePlan,
    output: PlannedOutput,
    events: list[dict[str, Any]],
    seconds: float,
) -> None:
    """Hash the partial files of ``output`` (split first where the options ask), rename them to their
    final names and record the artifact."""
    missing = [p.name for p in output.partial_paths if not p.is_file()]
    if missing:
        raise QuantizeFailed(f"llama.cpp reported success but did not write {', '.join(missing)}")
    if output.splits_after and not output.sharded:
        output = await asyncio.to_thread(split_output, output)
    counter = _HashCounter(host, job)
    files = []
    headers = []
    for written in output.partial_paths:
        digest = await asyncio.to_thread(sha256_file, written, counter)
        counter.flush()
        header = await asyncio.to_thread(read_gguf_header, written)
        files.append(OutputFile(path="", size_bytes=header.file_size, sha256=digest))
        headers.append(header)
    for final in output.paths:  # another job may have finished into the same place meanwhile
        refuse_another_jobs_output(final)
    for written, final in zip(output.partial_paths, output.paths, strict=True):
        os.replace(written, final)
    files = [dataclasses.replace(f, path=str(final)) for f, final in zip(files, output.paths, strict=True)]
    elements = sum(t.n_elements for h in headers for t in h.tensors)
    tensor_bytes = sum(h.tensor_bytes for h in headers)
    artifact = Artifact(
        quant_type=output.quant_type.name,
        path=files[0].path,
        size_bytes=files[0].size_bytes,
        sha256=files[0].sha256,
        bits_per_weight=8 * tensor_bytes / elements if elements else 0.0,
        fallback_tensor_count=fallback_count(events),
        tensor_count=sum(len(h.tensors) for h in headers),
        source_size_bytes=plan.source.header.file_size,
        quantize_seconds=seconds,
        file_type=output.quant_type.file_type,
        files=tuple(files),
    )
    order = {output_name(name): i for i, name in enumerate(job.spec.quant_types)}  # aliases by their type
    job.outputs = sorted([*job.outputs, artifact], key=lambda a: order.get(a.quant_type, len(order)))
    host.touch(job)


def split_output(output: PlannedOutput) -> PlannedOutput:
    """Cut the file llama.cpp wrote into shards as llama-gguf-split does (gguf/split.py), each a partial
    file created afresh beside it; the single file is removed only once every shard is written."""
    merged = output.partial_prefix
    header = read_gguf_header(merged)
    counts = shard_counts([t.n_bytes for t in header.tensors], output.split_max_bytes, output.split_max_tensors)
    sharded = dataclasses.replace(output, split_count=len(counts), sharded=True)
    dir_fd = open_directory(output.directory, resolve=False)
    targets: list[BinaryIO] = []
    try:
        for path in sharded.partial_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=dir_fd)  # a leftover of an interrupted run of this job
            targets.append(os.fdopen(create_exclusive(path.name, dir_fd), "wb"))
        write_shards(header, counts, targets)
        for target in targets:
            os.fsync(target.fileno())
    except BaseException:
        for path in sharded.partial_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=dir_fd)
        raise
    finally:
        for target in targets:
            target.close()
        os.close(dir_fd)
    merged.unlink()
    return sharded


class _HashCounter:
    """A ``sha256_file`` progress callback (it runs in the hashing thread) that counts the bytes hashed
    into the job's timeline on the event loop, and shows them while the job is HASHING."""

    def __init__(self, host: StageHost, job: Job) -> None:
        self._host = host
        self._job = job
        self._timeline = host.timeline(job)
        self._loop = asyncio.get_running_loop()
        self._unreported = 0

    def __call__(self, size: int) -> None:
        self._unreported += size
        if self._unreported >= HASH_REPORT_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._unreported:
            self._loop.call_soon_threadsafe(self._count, self._unreported)
            self._unreported = 0

    def _count(self, size: int) -> None:
        self._timeline.hashed += size
        job = self._job
        if job.stage == Stage.HASHING and not job.state.finished:
            self._timeline.advance(self._timeline.hashed, self._timeline.hash_total)
            self._host.touch(job, save=False)
