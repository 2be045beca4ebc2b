"""Job stages beyond quantization: Hugging Face preparation (fetch, hash, convert) and quality evaluation.

The engine runs them; they reach back only through ``StageHost`` (settings, the conversion cache, the job
store, change notification and worker registration, so cancel can kill what they start).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import logging
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from quantledger.config import Settings
from quantledger.errors import InsufficientDisk, LoraInvalid, QualityGateFailed, QuantledgerError, SourceMismatch
from quantledger.hf.cache import CacheEntry, ConversionCache, cache_key
from quantledger.hf.manifest import FileDigest, SourceManifest
from quantledger.hf.pipeline import HfSource, Materialized, general_metadata, preflight
from quantledger.jobs.model import Job, JobError, JobSpec, Progress, Quality, SourceFile, SourceInfo, Stage
from quantledger.jobs.store import JobStore
from quantledger.json_files import read_hf_config
from quantledger.quantize.catalogue import QuantType, output_catalogue
from quantledger.quantize.estimate import (
    WORKER_STARTUP_SECONDS,
    Estimate,
    OutputPrediction,
    calibrate_seconds,
    free_bytes,
    throughput_for,
)
from quantledger.quantize.plan import (
    QuantizePlan,
    check_options,
    gains_from_imatrix,
    requested_formats,
    requested_types,
    resolve_output_dir,
)
from quantledger.quantize.runner import WorkerProcess
from quantledger.quantize.sources import GgufSource, open_source, resolve_allowed

if TYPE_CHECKING:
    from quantledger.jobs.progress import JobTimeline

log = logging.getLogger(__name__)
# Evaluations of smaller models say more about process start-up than about the rate.
MIN_BYTES_FOR_EVALUATE_RATE = 16 << 20


def estimate_hf(settings: Settings, spec: JobSpec, hf: HfSource, store: JobStore) -> Estimate:
    """Predict a Hugging Face job from its preflight: sizes from typical bits per weight (the exact
    figures need the converted intermediate, which only the job makes), time from throughput."""
    job = describe_hf_job(settings, spec, "", "<job id>", hf, check_disk=False)
    assert job.source_info is not None
    parameters = _parameters(job.source_info)
    outputs = []
    formats = {f.name for f in requested_formats(spec)}
    for quant_type in [*requested_types(spec), *(t for t in output_catalogue() if t.name in formats)]:
        bpw = quant_type.typical_bits_per_weight or 8.5
        throughput, measured = throughput_for(quant_type, store)
        outputs.append(
            OutputPrediction(
                quant_type=quant_type.name,
                size_bytes=_typical_size(parameters, quant_type),
                bits_per_weight=bpw,
                fallback_tensor_count=0,
                seconds=WORKER_STARTUP_SECONDS + parameters * 2 / throughput,
                throughput=throughput,
                measured=measured,
            )
        )
    return Estimate(
        outputs=tuple(outputs),
        disk_bytes_needed=sum(o.size_bytes for o in outputs),
        disk_bytes_free=free_bytes(pathlib.Path(job.output_dir), settings.disk_reserve_bytes),
        source_info=job.source_info,
        output_dir=job.output_dir,
        calibrate_seconds=calibrate_seconds(parameters * 2, store) if wants_matrix(spec) else 0.0,
    )


def wants_matrix(spec: JobSpec) -> bool:
    """imatrix_path "auto" and a requested type that gains from a matrix (quantize.plan.gains_from_imatrix)."""
    return spec.options.imatrix_auto and any(gains_from_imatrix(t) for t in requested_types(spec))


def typical_output_bytes(info: SourceInfo, spec: JobSpec) -> int:
    """Predicted bytes of every output of a Hugging Face job (typical bits per weight of each type)."""
    parameters = _parameters(info)
    return sum(_typical_size(parameters, t) for t in requested_types(spec))


def _parameters(info: SourceInfo) -> int:
    return info.parameter_count or info.size_bytes // 2


def _typical_size(parameters: int, quant_type: QuantType) -> int:
    return int(parameters * (quant_type.typical_bits_per_weight or 8.5) / 8)


def builtin_converts(architecture: str) -> bool:
    from quantledger.convert.architectures import ARCHITECTURES

    return architecture in ARCHITECTURES


def base_shapes(folder: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape of a Hugging Face folder, from the safetensors headers only."""
    from quantledger.convert.converter import inspect_hf_folder
    from quantledger.convert.safetensors_reader import SafetensorsFile

    info = inspect_hf_folder(folder)
    return {e.name: e.shape for path in info.weight_files for e in SafetensorsFile(path).entries()}


class StageHost(Protocol):
    """What a stage needs from the engine."""

    settings: Settings
    cache: ConversionCache

    @property
    def store(self) -> JobStore: ...

    def settings_for(self, job: Job) -> Settings:
        """The settings ``job`` runs under: the server's, with its owner's roots (``Job.scope``)."""
        ...

    def touch(self, job: Job, *, save: bool = True) -> None: ...

    def timeline(self, job: Job) -> JobTimeline: ...

    def worker_for(self, job: Job, request: dict[str, Any]) -> WorkerProcess: ...


def describe_hf_job(
    settings: Settings, spec: JobSpec, request_id: str, job_id: str, hf: HfSource, *, check_disk: bool = True
) -> Job:
    """Validate a Hugging Face job before any weight download and describe it (INSUFFICIENT_DISK when
    ``check_disk`` and the conversion plus outputs cannot fit)."""
    types = requested_types(spec)
    formats = requested_formats(spec)  # FORMAT_UNAVAILABLE before anything is fetched
    check_options(spec, settings)
    checked = preflight(hf)
    if spec.options.lora_dir and not builtin_converts(checked.architecture):
        raise LoraInvalid(
            f"merging a LoRA needs the built-in converter; {checked.architecture} converts with llama.cpp's converter",
            architecture=checked.architecture,
        )
    if spec.options.lora_dir:
        from quantledger.convert.lora import check_against_base, load_lora

        lora_dir = resolve_allowed(spec.options.lora_dir, settings.allowed_roots, what="lora_dir")
        adapter = load_lora(lora_dir)
        if hf.folder is not None:  # a hub model's shapes are known only after download: checked while merging
            check_against_base(adapter, base_shapes(hf.folder))
    parameters = checked.parameter_count or checked.weight_bytes // 2
    out_type = (spec.options.intermediate_type or "F16").upper()
    intermediate = parameters * {"F32": 4, "F16": 2, "BF16": 2, "Q8_0": 34 / 32}[out_type]
    bits = [t.typical_bits_per_weight or 8.5 for t in types] + [f.typical_bits_per_weight for f in formats]
    outputs = sum(parameters * b / 8 for b in bits)
    options = spec.options
    output_dir = resolve_output_dir(options.output_dir, settings) if options.output_dir else settings.artifacts / job_id
    needed = int(intermediate + outputs * 1.05)
    free = free_bytes(output_dir, settings.disk_reserve_bytes)
    if check_disk and needed > free:
        raise InsufficientDisk(
            f"the conversion and outputs need about {needed} bytes but {output_dir} has {free} free",
            needed=str(needed),
            free=str(free),
        )
    info = SourceInfo(
        path=str(hf.folder or ""),
        architecture=checked.model_type,
        size_bytes=checked.weight_bytes,
        parameter_count=checked.parameter_count,
        file_type=-1,
        tensor_count=0,
        model_name=spec.options.model_name or hf.display_name,
        tensor_bytes=0,
        kind=hf.kind,
        repo_id=hf.hub.repo_id if hf.hub else "",
        revision=hf.hub.revision if hf.hub else "",
        hf_architecture=checked.architecture,
    )
    return Job(
        id=job_id,
        spec=spec,
        request_id=request_id,
        create_time=time.time(),
        source_info=info,
        output_dir=str(output_dir),
        progress=Progress(outputs_total=len(types) + len(formats)),
    )


async def prepare_intermediate(
    host: StageHost, job: Job, hf: HfSource, pins: contextlib.ExitStack
) -> tuple[GgufSource, str]:
    """Fetch, hash, and convert (or take from the cache) the GGUF intermediate of a HF source."""
    from quantledger.convert.converter import CONVERTER_VERSION
    from quantledger.convert.fallback import converter_label, usable_for

    host.timeline(job).begin(Stage.FETCHING, 0, "bytes")
    host.touch(job)
    materialized = await _materialize(host, job, hf)
    options = job.spec.options
    lora_digest = ""
    if options.lora_dir:
        from quantledger.convert.lora import load_lora

        lora_dir = resolve_allowed(options.lora_dir, host.settings_for(job).allowed_roots, what="lora_dir")
        lora_digest = (await asyncio.to_thread(load_lora, lora_dir)).sha256
    out_type = (options.intermediate_type or "F16").upper()
    assert job.source_info is not None
    fallback = (
        None if builtin_converts(job.source_info.hf_architecture) else usable_for(job.source_info.hf_architecture)
    )
    converter = CONVERTER_VERSION if fallback is None else converter_label(fallback)
    reproduction = job.spec.reproduction
    if reproduction is not None and materialized.manifest.root_digest != reproduction.source_digest:
        raise SourceMismatch(
            f"{job.spec.source} has digest {materialized.manifest.root_digest}; the record was made from "
            f"{reproduction.source_digest}: nothing was converted or quantized",
            expected=reproduction.source_digest,
            actual=materialized.manifest.root_digest,
        )
    model_name = options.model_name or hf.display_name  # general.name: part of the intermediate's bytes
    key = cache_key(materialized.manifest.root_digest, converter, out_type, lora_digest, model_name)
    pins.enter_context(host.cache.pinned(key))
    entry = host.cache.lookup(key)
    cached = entry is not None
    if entry is None:
        entry = await _convert(host, job, hf, materialized, key, out_type, fallback)
    source = await asyncio.to_thread(open_source, str(entry.path), (host.cache.root,))
    assert job.source_info is not None
    job.source_info = dataclasses.replace(
        job.source_info,
        path=str(materialized.folder),
        size_bytes=sum(f.size_bytes for f in materialized.manifest.files),
        parameter_count=source.header.n_parameters,
        file_type=source.header.file_type if source.header.file_type is not None else -1,
        tensor_count=len(source.header.tensors),
        tensor_bytes=source.header.tensor_bytes,
        commit_sha=materialized.commit,
        root_digest=materialized.manifest.root_digest,
        manifest=tuple(SourceFile(f.path, f.size_bytes, f.sha256) for f in materialized.manifest.files),
        conversion_cached=cached,
        converter=converter,
        architecture=source.header.architecture or "",
    )
    job.progress = Progress(
        fraction=job.progress.fraction,
        bytes_total=source.header.tensor_bytes * len(job.spec.quant_types),
        outputs_total=len(job.spec.quant_types),
    )
    host.timeline(job).replan()
    host.touch(job)
    return source, hf.display_name


def _byte_progress(host: StageHost, job: Job, kind: str) -> Callable[[dict[str, Any]], None]:
    """A worker event handler that turns ``kind`` events (bytes_done, bytes_total) into the job's progress:
    the stage's bytes, and (until the intermediate is known) bytes_done / bytes_total too."""
    timeline = host.timeline(job)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == kind and event["bytes_total"]:
            job.progress.bytes_done = int(event["bytes_done"])
            job.progress.bytes_total = int(event["bytes_total"])
            timeline.advance(int(event["bytes_done"]), int(event["bytes_total"]))
            host.touch(job, save=False)

    return on_event


async def _materialize(host: StageHost, job: Job, hf: HfSource) -> Materialized:
    """Download (hub) and hash the source in a worker process, so the job's cancel stops a download too."""
    request = {
        "mode": "fetch",
        "folder": str(hf.folder or ""),
        "repo_id": hf.hub.repo_id if hf.hub else "",
        "revision": hf.hub.revision if hf.hub else "",
    }

    result = await host.worker_for(job, request).run(_byte_progress(host, job, "fetch_progress"))
    done = result.of("materialized")[-1]
    files = tuple(FileDigest(**f) for f in done["files"])
    return Materialized(pathlib.Path(done["folder"]), SourceManifest(files, done["root_digest"]), done["commit"])


async def _convert(
    host: StageHost,
    job: Job,
    hf: HfSource,
    materialized: Materialized,
    key: str,
    out_type: str,
    fallback: str | None,
) -> CacheEntry:
    host.timeline(job).begin(Stage.CONVERTING, 0, "bytes")
    host.touch(job)
    config = await asyncio.to_thread(read_hf_config, materialized.folder)
    temp = host.cache.temp_path(key)
    request = {
        "mode": "convert",
        "folder": str(materialized.folder),
        "output": str(temp),
        "out_type": out_type,
        "metadata": general_metadata(hf, materialized, config, job.spec.options.model_name),
        "lora_dir": str(resolve_allowed(job.spec.options.lora_dir, host.settings_for(job).allowed_roots))
        if job.spec.options.lora_dir
        else "",
        "fallback_python": fallback or "",  # llama.cpp's converter for an architecture the built-in one lacks
    }

    worker = host.worker_for(job, request)
    try:
        await worker.run(_byte_progress(host, job, "convert_progress"))
        return await asyncio.to_thread(
            host.cache.store,
            key,
            temp,
            {"source": job.spec.source, "root_digest": materialized.manifest.root_digest, "out_type": out_type},
        )
    finally:  # the temp file and what the converter wrote beside it (.{temp}.{pid}.converting): a cancel
        # kills the worker before it can clean up after itself
        for leftover in (temp, *temp.parent.glob(f".{glob.escape(temp.name)}.*")):
            leftover.unlink(missing_ok=True)


async def evaluate_outputs(host: StageHost, job: Job, plan: QuantizePlan) -> None:
    """Measure every output against the unquantized model (stage EVALUATING).

    A causal model's outputs are measured in rounds (quality/reference.py): the unquantized model reads
    the next chunks of the evaluation text once (two, then twice as many each round), every output not
    yet measured closely enough reads the same chunks and merges them into its report, and an output
    stops once its mean KL divergence is known to within STDERR_TARGET (or the text ends). Progress counts
    tokens, an output that stops early counting its unread chunks as done. If a reference read fails,
    each output left is measured by a worker that reads the reference itself, over the whole text.
    An output whose evaluation fails (the worker crashed inside llama.cpp, ran past its time bound, or
    refused the evaluation data) stays as it is, its quality report carrying the error; the others are
    still evaluated. Cancel and shutdown still stop the stage. The gate is ``check_quality_gate``."""
    from quantledger.quality.evaluate import is_embedding_model

    pending = [index for index, artifact in enumerate(job.outputs) if artifact.quality is None]
    if not pending:  # evaluated before the server restarted
        return
    run = _Evaluation(host, job, plan)
    host.timeline(job).begin(Stage.EVALUATING, 0, "tokens")
    host.touch(job)
    settings = host.settings_for(job)
    kept = pathlib.Path(settings.scratch_dir or settings.home / "scratch") / f"reference-{job.id}"
    shutil.rmtree(kept, ignore_errors=True)  # a read left by a run of this job before a restart
    kept.mkdir(parents=True)
    try:
        if await asyncio.to_thread(is_embedding_model, plan.source.path):
            # embedders and rerankers: one worker an output; a reranker's reference scores are kept in
            # ``kept`` by the first and read by the others (quality/rerank.py)
            for index in pending:
                await run.whole(index, passes=len(pending), reference_scores=kept / "reference-scores.npy")
            return
        started = time.monotonic()
        await run.in_rounds(pending, kept)
        run.record_rate((time.monotonic() - started) / len(pending))
    finally:
        shutil.rmtree(kept, ignore_errors=True)


class _Evaluation:
    """The workers of one job's EVALUATING stage and its progress (see evaluate_outputs)."""

    def __init__(self, host: StageHost, job: Job, plan: QuantizePlan) -> None:
        options = job.spec.options
        roots = host.settings_for(job).allowed_roots
        eval_text = str(resolve_allowed(options.eval_text_path, roots)) if options.eval_text_path else ""
        self.host, self.job, self.plan = host, job, plan
        self.base = {
            "reference": str(plan.source.path),
            "threads": plan.base_request["threads"],
            "eval_text_path": eval_text,
        }
        self.timeline = host.timeline(job)
        self.known = {f.name for f in dataclasses.fields(Quality)} - {"error"}
        self.done = 0  # units (tokens, texts) of the stage finished
        self.total = 0  # units of the whole stage, once known
        self.call_total = 0  # the current worker's own total, where the stage's is not known yet
        self.outputs = 0  # outputs measured in rounds

    def _advance(self, within: int) -> None:
        if self.total:
            self.timeline.advance(min(self.done + within, self.total), self.total)
            self.host.touch(self.job, save=False)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "reference_chunks" and not self.total:
            self.total = (1 + self.outputs) * int(event["tokens"])
        elif kind == "eval_progress" and int(event["total"]) > 0:
            self.job.progress.stage_unit = str(event.get("unit") or "tokens")
            self.call_total = int(event["total"])
            self._advance(int(event["done"]))

    def finish(self, units: int) -> None:
        self.done += units
        self._advance(0)
        self.host.touch(self.job)

    def record(self, index: int, quality: Quality) -> None:
        """The output's report; a failed round never replaces the report of the chunks read before it."""
        before = self.job.outputs[index].quality
        if quality.error is not None and before is not None and before.error is None:
            log.warning("%s: %s keeps its report of the chunks read before", self.job.name, before.eval_set)
            return
        self.job.outputs[index] = dataclasses.replace(self.job.outputs[index], quality=quality)

    async def _run(self, index: int, request: dict[str, Any]) -> tuple[Quality, list[dict[str, Any]]]:
        """One evaluate worker for output ``index``: its report (or the error it ended with) and events."""
        artifact = self.job.outputs[index]
        self.job.progress.current_quant_type = artifact.quant_type
        try:
            result = await self.host.worker_for(self.job, request).run(self.on_event)
            report = result.of("quality")[-1]
        except QuantledgerError as exc:
            log.warning(
                "%s: evaluating %s failed (%s): %s", self.job.name, artifact.quant_type, exc.reason, exc.message
            )
            return Quality.failed(JobError.of(exc)), []
        return Quality(**{k: v for k, v in report.items() if k in self.known}), result.events

    def record_rate(self, seconds_per_output: float) -> None:
        """What evaluating one output took, for the estimate of later jobs (quantize/estimate.py)."""
        from quantledger.quantize.estimate import EVALUATE_SAMPLE

        reference_bytes = self.plan.source.header.tensor_bytes
        if reference_bytes >= MIN_BYTES_FOR_EVALUATE_RATE and seconds_per_output > 0:
            self.host.store.record_throughput(EVALUATE_SAMPLE, reference_bytes, seconds_per_output)

    async def whole(self, index: int, passes: int, reference_scores: pathlib.Path | None = None) -> None:
        """Output ``index`` measured by one worker over all the data (reading the reference itself, or a
        reranker's from ``reference_scores`` once an earlier output's worker kept them there)."""
        started = time.monotonic()
        self.call_total = 0
        request = {**self.base, "mode": "evaluate", "quantized": self.job.outputs[index].path}
        if reference_scores is not None:
            request["reference_scores"] = str(reference_scores)
        quality, _ = await self._run(index, request)
        self.record(index, quality)
        if quality.error is None:
            self.record_rate(time.monotonic() - started)
        if not self.total and self.call_total:
            self.total = passes * self.call_total
        self.finish(self.call_total)

    async def in_rounds(self, pending: list[int], kept: pathlib.Path) -> None:
        from quantledger.quality.reference import MIN_CHUNKS

        self.outputs = len(pending)
        active = list(pending)
        read, step, n_chunks = 0, MIN_CHUNKS, None
        while active and (n_chunks is None or read < n_chunks):
            stop = read + step
            request = {**self.base, "mode": "reference", "output": str(kept), "start": read, "stop": stop}
            self.job.progress.current_quant_type = ""  # the unquantized model reads the text
            try:
                result = await self.host.worker_for(self.job, request).run(self.on_event)
            except QuantledgerError as exc:
                log.warning("%s: the reference read failed (%s): %s", self.job.name, exc.reason, exc.message)
                for index in active:  # each reads the reference itself, from the start
                    await self.whole(index, passes=1)
                return
            answer = result.of("reference")[-1]
            n_chunks, stop, n_ctx = int(answer["chunks"]), int(answer["read"]), int(answer["n_ctx"])
            self.finish((stop - read) * n_ctx)
            still = []
            for index in active:
                state = kept / f"output-{index}.npz"
                evaluate = {**self.base, "mode": "evaluate", "quantized": self.job.outputs[index].path}
                evaluate.update(reference_logits=str(kept), start=read, stop=stop, state=str(state))
                quality, events = await self._run(index, evaluate)
                self.record(index, quality)
                measured = any(e.get("event") == "measured" and e.get("measured") for e in events)
                if quality.error is None and not measured and stop < n_chunks:
                    still.append(index)
                    self.finish((stop - read) * n_ctx)
                else:  # measured (or failed): the chunks it will not read count as done
                    self.finish((n_chunks - read) * n_ctx)
            active, read, step = still, stop, 2 * stop


def check_quality_gate(job: Job) -> None:
    """QUALITY_GATE_FAILED when a gate is set and an output is past it: ``max_kl_divergence`` (an output's
    mean KL divergence above it), ``min_cosine_similarity`` (its mean cosine below it) or ``min_ndcg`` (its
    NDCG@5 against the reference below it); or when an output's evaluation failed so the gate could not be
    checked (the message names those outputs and why)."""
    options = job.spec.options
    gates = [  # (option, its bound, the report's figure, what it is called, whether above the bound fails)
        ("max_kl_divergence", options.max_kl_divergence, "mean_kl_divergence", "mean KL divergence", True),
        (
            "min_cosine_similarity",
            options.min_cosine_similarity,
            "mean_cosine_similarity",
            "mean cosine similarity",
            False,
        ),
        ("min_ndcg", options.min_ndcg, "ndcg_at_5", "NDCG@5 against the reference", False),
    ]
    gates = [gate for gate in gates if gate[1]]
    if not gates:
        return
    problems = []
    for _option, bound, figure, called, above_fails in gates:
        past = []
        for a in job.outputs:
            if a.quality is None or a.quality.error is not None:
                continue
            value = getattr(a.quality, figure) or 0.0
            if (value > bound) if above_fails else (value < bound):
                past.append(f"{a.quant_type} ({value:.4f})")
        if past:
            problems.append(f"{called} {'above' if above_fails else 'below'} {bound}: {', '.join(past)}")
    unchecked = [a for a in job.outputs if a.quality is None or a.quality.error is not None]
    if not problems and not unchecked:
        return
    if unchecked:
        reasons = ", ".join(
            f"{a.quant_type} ({a.quality.error.reason if a.quality and a.quality.error else 'not evaluated'})"
            for a in unchecked
        )
        problems.append(f"the gate could not be checked, evaluation failed: {reasons}")
    extra = {"unchecked": ",".join(a.quant_type for a in unchecked)} if unchecked else {}
    raise QualityGateFailed(
        "; ".join(problems) + "; the outputs are kept for inspection (and registered)",
        **{option: str(bound) for option, bound, *_ in gates},
        **extra,
    )
