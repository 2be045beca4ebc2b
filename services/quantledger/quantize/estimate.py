"""Predict a job's outputs before running it: exact sizes, disk, and time on this machine.

Sizes come from llama.cpp's own dry run (``params.dry_run``), which logs the type every tensor would
get without writing anything; the file size then follows from the GGUF layout llama.cpp writes.
Time comes from the throughput of finished jobs of the same type on this machine, or from built-in
figures measured on a 2-core AVX2 machine until such a job exists.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantledger.errors import ImatrixRequired, QuantizeFailed, SourceInvalid, UnsupportedArchitecture
from quantledger.gguf.layout import predict_quantized_file_size, predicted_kv_bytes, tensor_nbytes
from quantledger.gguf.reader import GgufHeader
from quantledger.gguf.split import predict_shard_sizes, shard_counts
from quantledger.gguf.types import ggml_types, ggml_types_by_name
from quantledger.jobs.model import SourceInfo
from quantledger.jobs.store import JobStore
from quantledger.quantize.catalogue import QuantType
from quantledger.quantize.llama_log import fallback_count
from quantledger.quantize.plan import PlannedOutput, QuantizePlan
from quantledger.quantize.runner import WorkerProcess

# llama.cpp's GGML_QNT_VERSION, written to general.quantization_version by every quantization.
GGML_QNT_VERSION = 2
# Seconds a worker needs before llama.cpp reads the first tensor (interpreter, library, mmap).
WORKER_STARTUP_SECONDS = 0.6
# Source bytes per second with 2 threads, measured on a 2-core AVX2 machine with a 1.35 GB F16 model.
_DEFAULT_THROUGHPUT = {"Q4_K_M": 54e6, "Q8_0": 375e6, "Q4_0": 420e6, "IQ4_XS": 17.8e6}
_FAMILY_THROUGHPUT = {
    "float": 600e6,
    "legacy": 350e6,
    "k-quant": 55e6,
    "i-quant": 15e6,
    "ternary": 60e6,
    "mxfp": 200e6,
    "huggingface": 100e6,  # a Hugging Face format: transformers loads, (bitsandbytes quantizes,) saves
}


@dataclass(frozen=True)
class OutputPrediction:
    quant_type: str
    size_bytes: int
    bits_per_weight: float
    fallback_tensor_count: int
    seconds: float
    throughput: float
    measured: bool


@dataclass(frozen=True)
class Estimate:
    outputs: tuple[OutputPrediction, ...]
    disk_bytes_needed: int
    disk_bytes_free: int
    source_info: SourceInfo
    output_dir: str
    calibrate_seconds: float = 0.0  # computing the importance matrix (imatrix_path "auto"), before the outputs

    @property
    def fits_on_disk(self) -> bool:
        return self.disk_bytes_needed <= self.disk_bytes_free

    @property
    def seconds(self) -> float:
        return self.calibrate_seconds + sum(o.seconds for o in self.outputs)


EVALUATE_BYTES_PER_SECOND = 20e6  # reference tensor bytes per second, for each output evaluated
# Key of evaluation samples in the store's throughput table (reference tensor bytes, seconds per output).
EVALUATE_SAMPLE = "@evaluate"
# a matrix from the shipped text (~25 chunks of 512 tokens) costs about this many evaluations of one output
CALIBRATE_EVALUATIONS = 3.0


def throughput_for(quant_type: QuantType, store: JobStore | None) -> tuple[float, bool]:
    """Source bytes per second for this type and whether it was measured on this machine."""
    measured = store.throughputs(quant_type.name) if store is not None else []
    if measured:
        return statistics.median(measured), True
    default = _DEFAULT_THROUGHPUT.get(quant_type.name) or _FAMILY_THROUGHPUT.get(quant_type.family, 50e6)
    return default, False


def free_bytes(directory: pathlib.Path, reserve: int) -> int:
    """Free bytes on the file system that will hold ``directory`` (which may not exist yet)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return max(0, shutil.disk_usage(probe).free - reserve)


def _needs_imatrix(events: list[dict[str, Any]]) -> bool:
    return any(e.get("event") == "requires_imatrix" for e in events)


def _split_runs(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    for event in events:
        if event.get("event") == "run":
            runs.append([])
        elif runs:
            runs[-1].append(event)
    return runs


# Keys llama.cpp writes into every file of a keep_split output: u16, u16, i32 (type tag + value bytes).
SPLIT_KEY_BYTES = {"split.no": 4 + 2, "split.count": 4 + 2, "split.tensors.count": 4 + 4}


def summarize_run(plan: QuantizePlan, output: PlannedOutput, events: list[dict[str, Any]]) -> tuple[int, float, int]:
    """Exact size of all files, bits per weight and fallback count of one (dry or real) run's events."""
    quant_type = output.quant_type
    by_name = ggml_types_by_name()
    new_types: dict[str, int] = {}
    for event in events:
        if event.get("event") == "tensor_done":
            target = by_name.get(event["target_type"])
            if target is not None:
                new_types[event["name"]] = target.id
    header = plan.written_header()
    written = plan.written_values()
    written.update({"general.quantization_version": GGML_QNT_VERSION, "general.file_type": quant_type.file_type})
    if output.splits_after:
        size = sum(
            _shard_sizes(
                output, header, new_types, written, [e["name"] for e in events if e.get("event") == "tensor_done"]
            )
        )
    elif output.split_count == 1:
        size = predict_quantized_file_size(header, new_types, written)
    else:  # llama.cpp keeps each tensor in its shard; only the first file carries the model's metadata
        first, *rest = (plan.written_header(shard) for shard in plan.source.shard_headers)
        size = predict_quantized_file_size(first, new_types, written, SPLIT_KEY_BYTES)
        for shard in rest:
            bare = dataclasses.replace(shard, metadata={}, kv_layout=())
            size += predict_quantized_file_size(bare, new_types, {}, SPLIT_KEY_BYTES)
    table = ggml_types()
    bits = 0
    elements = 0
    for tensor in header.tensors:
        kind = table[new_types.get(tensor.name, tensor.ggml_type)]
        bits += 8 * kind.row_bytes(tensor.shape[0]) * (tensor.n_elements // tensor.shape[0])
        elements += tensor.n_elements
    fallbacks = fallback_count(events)
    return size, (bits / elements if elements else 0.0), fallbacks


def _shard_sizes(
    output: PlannedOutput,
    header: GgufHeader,
    new_types: dict[str, int],
    written: Mapping[str, int | float | bool | str],
    order: list[str],
) -> list[int]:
    """The shards the output stage will cut the file into (gguf/split.py), in the order llama.cpp
    writes the tensors (the run's per-tensor events; the source's where it reported none)."""
    rank = {name: i for i, name in enumerate(dict.fromkeys(order))}
    tensors = sorted(header.tensors, key=lambda t: rank.get(t.name, len(rank)))
    shaped = [(t.name, t.shape, tensor_nbytes(t.shape, new_types.get(t.name, t.ggml_type))) for t in tensors]
    counts = shard_counts([size for _, _, size in shaped], output.split_max_bytes, output.split_max_tensors)
    return predict_shard_sizes(predicted_kv_bytes(header, written), shaped, counts)


async def estimate(plan: QuantizePlan, store: JobStore | None, log_path: str, disk_reserve: int) -> Estimate:
    """Run llama.cpp's dry run for every output of ``plan`` in one worker and predict the job."""
    request = {"runs": [plan.worker_request(o, dry_run=True) for o in plan.outputs]}
    try:
        result = await WorkerProcess(request, log_path).run(lambda _event: None)
    except QuantizeFailed as exc:
        if "unknown model architecture" in exc.message:
            raise UnsupportedArchitecture(
                f"llama.cpp does not support the architecture of {plan.source.path.name} "
                f"({plan.source.header.architecture!r})",
                architecture=plan.source.header.architecture or "",
            ) from exc
        # a dry run reads only the source and the options: what fails here is the model itself
        detail = exc.message.removeprefix("llama.cpp failed to quantize: ")
        raise SourceInvalid(f"llama.cpp cannot quantize {plan.source.path.name}: {detail}") from exc
    runs = _split_runs(result.events)
    needing = [o.quant_type.name for o, events in zip(plan.outputs, runs, strict=True) if _needs_imatrix(events)]
    if needing and plan.imatrix_path is None and not plan.calibrate:
        raise ImatrixRequired(
            f"for this model llama.cpp needs an importance matrix for {', '.join(needing)}: pass imatrix_path "
            '(a file, or "auto" to compute one)',
            quant_types=",".join(needing),
        )
    predictions = []
    tensor_bytes = plan.source.header.tensor_bytes
    for output, events in zip(plan.outputs, runs, strict=True):
        size, bpw, fallbacks = summarize_run(plan, output, events)
        throughput, measured = throughput_for(output.quant_type, store)
        predictions.append(
            OutputPrediction(
                quant_type=output.quant_type.name,
                size_bytes=size,
                bits_per_weight=bpw,
                fallback_tensor_count=fallbacks,
                seconds=WORKER_STARTUP_SECONDS + tensor_bytes / throughput,
                throughput=throughput,
                measured=measured,
            )
        )
    return Estimate(
        outputs=tuple(predictions),
        disk_bytes_needed=sum(p.size_bytes for p in predictions),
        disk_bytes_free=free_bytes(plan.output_dir, disk_reserve),
        source_info=plan.source.info,
        output_dir=str(plan.output_dir),
        calibrate_seconds=calibrate_seconds(tensor_bytes, store) if plan.calibrate else 0.0,
    )


def evaluate_rate(store: JobStore | None) -> float:
    """Reference tensor bytes evaluated per second for one output: measured here, or the default."""
    measured = store.throughputs(EVALUATE_SAMPLE) if store is not None else []
    return statistics.median(measured) if measured else EVALUATE_BYTES_PER_SECOND


def calibrate_seconds(tensor_bytes: int, store: JobStore | None) -> float:
    """What computing a job's importance matrix from the shipped text takes: about three evaluations of
    one output, at this server's measured evaluation rate where it has one."""
    return WORKER_STARTUP_SECONDS + CALIBRATE_EVALUATIONS * tensor_bytes / evaluate_rate(store)
