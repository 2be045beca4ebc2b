"""The stages of one job in their order: source → [calibrate] → quantize each type → hash → evaluate → register.

``run_stages`` is what a running job does; the engine (jobs/engine.py) decides how it ends (SUCCEEDED,
FAILED, CANCELLED) and cleans up what ``JobRun`` holds.

An optional stage never loses what an earlier one made: an output whose evaluation fails keeps its place,
its quality report saying why; every output is registered before the quality gate (``max_kl_divergence``)
decides whether the job SUCCEEDED or FAILED (QUALITY_GATE_FAILED, also when the gate could not be checked
because an evaluation failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from quantledger.hf.pipeline import classify
from quantledger.jobs.calibration import calibrate
from quantledger.jobs.hf_outputs import export_formats
from quantledger.jobs.model import Job, Stage
from quantledger.jobs.output_stage import complete_output, quantize_output
from quantledger.jobs.progress import HASH_BYTES_PER_SECOND
from quantledger.jobs.registration import register_outputs
from quantledger.jobs.stages import StageHost, check_quality_gate, evaluate_outputs, prepare_intermediate
from quantledger.quantize.plan import make_plan
from quantledger.quantize.sources import GgufSource
from quantledger.registry.registrar import Registrar
from quantledger.registry.stage import apply_source_manifest, source_manifest


@dataclass
class JobRun:
    """What a running job holds beside its stages, for the engine to stop or release when it ends."""

    hashing: list[asyncio.Task[None]] = field(default_factory=list)
    stop_hashing: threading.Event = field(default_factory=threading.Event)
    identity: list[asyncio.Task[Any]] = field(default_factory=list)  # the source's digest, beside quantization
    pins: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


async def run_stages(host: StageHost, registrar: Registrar | None, job: Job, run: JobRun) -> None:
    """Every stage of ``job``, from its source to registered outputs."""
    settings = host.settings_for(job)
    source: GgufSource | None = None
    stem: str | None = None
    hf = await asyncio.to_thread(classify, job.spec.source, settings.allowed_roots)
    if hf is not None:
        source, stem = await prepare_intermediate(host, job, hf, run.pins)
    # a job resumed after a restart keeps the outputs it finished (engine.recover_interrupted checked them)
    kept = frozenset(pathlib.Path(p) for a in job.outputs for p in (a.path, *(f.path for f in a.files)))
    finished = {a.quant_type for a in job.outputs}
    plan = await asyncio.to_thread(
        partial(make_plan, source=source, stem=stem, kept=kept),
        job.spec,
        settings,
        pathlib.Path(job.output_dir),
        job.id,
    )
    run.identity.append(asyncio.create_task(asyncio.to_thread(source_manifest, job, run.stop_hashing)))
    if plan.calibrate:  # imatrix_path "auto": compute the matrix (or take it from the cache), then plan with it
        computed = await calibrate(host, job, plan, run.identity[0])
        options = dataclasses.replace(
            job.spec.options, imatrix_path=computed.path, calibration_path="", calibration_chunks=0, calibration_ctx=0
        )
        plan = await asyncio.to_thread(
            partial(make_plan, source=source, stem=stem, kept=kept),
            dataclasses.replace(job.spec, options=options),
            settings,
            pathlib.Path(job.output_dir),
            job.id,
        )
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    timeline = host.timeline(job)
    for index, output in enumerate(plan.outputs):
        if output.quant_type.name in finished:
            continue
        result_events, seconds = await quantize_output(host, job, plan, index, output)
        timeline.hash_total += sum(p.stat().st_size for p in output.partial_paths if p.is_file())
        run.hashing.append(asyncio.create_task(complete_output(host, job, plan, output, result_events, seconds)))
    await export_formats(host, job, plan)  # the Hugging Face formats, while the GGUF outputs hash
    if any(not t.done() for t in run.hashing):
        left = timeline.hash_total - timeline.hashed
        timeline.begin(
            Stage.HASHING, timeline.hash_total, "bytes", done=timeline.hashed, prior=left / HASH_BYTES_PER_SECOND
        )
        host.touch(job)
    await asyncio.gather(*run.hashing)
    if not job.spec.options.skip_quality:
        await evaluate_outputs(host, job, plan)  # an output it cannot evaluate says so in its report
    apply_source_manifest(job, await run.identity[0])
    # registration, once begun, completes and is recorded even when the job is cancelled meanwhile
    registering = asyncio.ensure_future(register_outputs(host, registrar, job))
    try:
        await asyncio.shield(registering)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await registering
        raise
    # the gate decides how the job ends, after its outputs are kept, hashed and registered
    check_quality_gate(job)
