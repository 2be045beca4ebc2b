"""Human and JSON output of the CLI."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from quantledger.v1 import quantize_service_pb2 as pb

MIB = 1 << 20


def to_json(message: Message) -> dict[str, Any]:
    """The proto JSON mapping with proto field names (what --json prints)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout  # looked up per call: a redirected sys.stdout is honoured
    stream.write(json.dumps(data if not isinstance(data, Message) else to_json(data), indent=None) + "\n")
    stream.flush()


def state_name(job: pb.QuantizeJob) -> str:
    return pb.QuantizeJob.State.Name(job.state).removeprefix("STATE_")


def stage_name(job: pb.QuantizeJob) -> str:
    return pb.QuantizeJob.Stage.Name(job.stage).removeprefix("STAGE_")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def error_reason(job: pb.QuantizeJob) -> str:
    return next(iter(_reasons(job.error)), "UNKNOWN")


class ProgressBar:
    """One self-rewriting line on a terminal; plain lines every few seconds elsewhere."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        stream = stream or sys.stderr
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_plain = 0.0
        self._drawn = False

    def update(self, job: pb.QuantizeJob) -> None:
        progress = job.progress
        fraction = progress.fraction
        filled = round(fraction * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        eta = progress.eta.ToTimedelta().total_seconds() if progress.HasField("eta") else None
        state = state_name(job)
        what = stage_name(job) if state == "RUNNING" else state
        line = f"{what:<10} {progress.current_quant_type or '-':<8} [{bar}] {fraction * 100:5.1f}% "
        if state == "RUNNING" and progress.stage_unit:
            line += describe_stage(progress)
        else:
            line += f"{human_bytes(progress.bytes_done)}/{human_bytes(progress.bytes_total)}"
        line += f" out {progress.outputs_done}/{progress.outputs_total}"
        if eta is not None and state == "RUNNING":
            line += f" ETA {eta:4.0f}s"
        if progress.current_tensor and state == "RUNNING" and job.stage == pb.QuantizeJob.STAGE_QUANTIZING:
            line += f" {progress.current_tensor}"
        if self._tty:
            self._stream.write("\r\x1b[2K" + line[:200])
            self._drawn = True
            self._stream.flush()
        elif time.monotonic() - self._last_plain >= 2 or state != "RUNNING":
            self._last_plain = time.monotonic()
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def describe_stage(progress: pb.Progress) -> str:
    """The current stage's own progress: "stage 42% 170.0 MiB/404.0 MiB (ETA 3s)", "stage 25% 4/16 chunks"."""
    done, total, unit = progress.stage_done, progress.stage_total, progress.stage_unit
    if unit == "bytes":
        work = f"{human_bytes(done)}/{human_bytes(total)}" if total else human_bytes(done)
    else:
        work = f"{done}/{total} {unit}" if total else f"{done} {unit}"
    text = f"stage {progress.stage_fraction * 100:3.0f}% {work}"
    if progress.HasField("stage_eta"):
        text += f" (ETA {progress.stage_eta.ToTimedelta().total_seconds():.0f}s)"
    return text


def describe_quality(quality: pb.QualityReport) -> str:
    if quality.HasField("error") and quality.error.code:
        reason = next(iter(_reasons(quality.error)), "UNKNOWN")
        return f"not evaluated: {reason}: {quality.error.message}"
    if quality.kind == "embedding":
        return (
            f"cosine mean {quality.mean_cosine_similarity:.4f} min {quality.min_cosine_similarity:.4f}, "
            f"top-k agreement {quality.topk_retrieval_agreement:.2f}, recall@10 {quality.recall_at_10:.2f}, "
            f"MRR@10 {quality.mrr_at_10:.2f} ({quality.eval_set})"
        )
    if quality.kind == "reranker":
        return (
            f"vs unquantized: NDCG@5 {quality.ndcg_at_5:.4f} MAP {quality.mean_average_precision:.4f} "
            f"P@5 {quality.precision_at_5:.2f} tau {quality.rank_agreement:.3f}; "
            f"vs labels: NDCG@5 {quality.label_ndcg_at_5:.4f} (unquantized {quality.reference_label_ndcg_at_5:.4f}) "
            f"MAP {quality.label_mean_average_precision:.4f} P@5 {quality.label_precision_at_5:.2f} "
            f"({quality.eval_set})"
        )
    return (
        f"KLD mean {quality.mean_kl_divergence:.5f} ± {quality.kl_divergence_stderr:.5f} "
        f"p99 {quality.p99_kl_divergence:.5f}, "
        f"top-1 {quality.top1_agreement * 100:.1f}%, perplexity {quality.perplexity_delta * 100:+.2f}% "
        f"({quality.eval_set})"
    )


def describe_registration(record: pb.RegistryRecord) -> str:
    state = pb.RegistryRecord.State.Name(record.state).removeprefix("STATE_")
    if record.state == pb.RegistryRecord.STATE_REGISTERED:
        where = f"tx {record.tx_hash}" if record.tx_hash else "already on chain"
        return f"{state} on chain {record.chain_id} at {record.contract} by {record.attester} ({where})"
    if record.state == pb.RegistryRecord.STATE_UNREGISTERED:
        return f"{state} (no chain configured); provenance {record.provenance_path}"
    reason = next(iter(_reasons(record.error)), "")
    return f"{state} after {record.attempts} attempt(s): {reason} {record.error.message}".rstrip()


def _reasons(status: Any) -> list[str]:
    """The ErrorInfo reasons in a google.rpc.Status."""
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    return reasons


def print_job(job: pb.QuantizeJob, stream: TextIO | None = None) -> None:
    out = (stream or sys.stdout).write
    out(f"{job.name}  {state_name(job)}")
    if job.stage:
        out(f" ({stage_name(job)})")
    out("\n")
    out(f"  source       {job.source}\n")
    if job.source_info.path:
        info = job.source_info
        out(
            f"               {info.architecture}, {info.parameter_count:,} parameters, {human_bytes(info.size_bytes)}\n"
        )
    out(f"  quant types  {', '.join(job.quant_types)}\n")
    out(f"  output dir   {job.output_dir}\n")
    if job.owner:
        out(f"  owner        {job.owner}\n")
    if job.HasField("delete_time"):
        out(f"  deleted      {job.delete_time.ToDatetime().isoformat(timespec='seconds')}Z (outputs below are gone)\n")
    if job.state == pb.QuantizeJob.STATE_RUNNING:
        p = job.progress
        out(
            f"  progress     {p.fraction * 100:.1f}% ({human_bytes(p.bytes_done)} of "
            f"{human_bytes(p.bytes_total)}), {p.current_quant_type} {p.current_tensor}\n"
        )
        if p.stage_unit:
            out(f"  {stage_name(job).lower():<12} {describe_stage(p)}\n")
    for artifact in job.outputs:  # the size table: every output, GGUF file or Hugging Face folder
        folder = artifact.format == "huggingface"
        detail = f"{len(artifact.files)} files" if folder else f"fallbacks {artifact.fallback_tensor_count}"
        out(
            f"  {artifact.quant_type:<12} {artifact.total_size_bytes or artifact.size_bytes:>14,} bytes  "
            f"{artifact.bits_per_weight:6.3f} BPW  x{artifact.compression_ratio:.2f}  {detail}\n"
            f"               {'manifest' if folder else 'sha256'} {artifact.sha256}\n               {artifact.path}\n"
        )
        if artifact.HasField("quality"):
            out(f"               quality {describe_quality(artifact.quality)}\n")
        if artifact.HasField("registry"):
            out(f"               registry {describe_registration(artifact.registry)}\n")
    if job.HasField("error") and job.error.code:
        out(f"  error        {error_reason(job)}: {job.error.message}\n")
