"""Domain objects <-> quantledger.v1 messages. No rules here, only field mapping."""

from __future__ import annotations

import dataclasses

from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from quantledger.errors import DOMAIN
from quantledger.jobs.model import Artifact, Job, JobError, JobSpec, Options, Quality, RegistryEntry, SourceInfo
from quantledger.jobs.reproduction import ReproduceRequest
from quantledger.quantize.catalogue import LibraryVersions, QuantType
from quantledger.quantize.estimate import Estimate
from quantledger.v1 import quantize_service_pb2 as pb

_CODE_NUMBERS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


def code_number(code: str) -> int:
    """Canonical status code number of a code name such as "NOT_FOUND"."""
    return _CODE_NUMBERS.get(code, 13)


def status_of(error: JobError) -> status_pb2.Status:
    """google.rpc.Status carrying an ErrorInfo with the error's reason."""
    status = status_pb2.Status(code=code_number(error.code), message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    status.details.add().Pack(info)
    return status


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return value


def options_from_proto(message: pb.QuantizeOptions) -> Options:
    return Options(
        threads=message.threads,
        allow_requantize=message.allow_requantize,
        leave_output_tensor=message.leave_output_tensor,
        pure=message.pure,
        output_tensor_type=message.output_tensor_type,
        token_embedding_type=message.token_embedding_type,
        tensor_type_overrides=tuple((o.pattern, o.type) for o in message.tensor_type_overrides),
        keep_split=message.keep_split,
        imatrix_path=message.imatrix_path,
        output_dir=message.output_dir,
        overwrite=message.overwrite,
        lora_dir=message.lora_dir,
        max_kl_divergence=message.max_kl_divergence,
        skip_quality=message.skip_quality,
        intermediate_type=message.intermediate_type,
        eval_text_path=message.eval_text_path,
        calibration_path=message.calibration_path,
        calibration_chunks=message.calibration_chunks,
        calibration_ctx=message.calibration_ctx,
        imatrix_include_weights=tuple(message.imatrix_include_weights),
        imatrix_exclude_weights=tuple(message.imatrix_exclude_weights),
        kv_overrides=tuple(message.kv_overrides),
        prune_layers=tuple(message.prune_layers),
        split_max_bytes=message.split_max_bytes,
        split_max_tensors=message.split_max_tensors,
        min_cosine_similarity=message.min_cosine_similarity,
        min_ndcg=message.min_ndcg,
        model_name=message.model_name,
    )


def options_to_proto(options: Options) -> pb.QuantizeOptions:
    return pb.QuantizeOptions(
        threads=options.threads,
        allow_requantize=options.allow_requantize,
        leave_output_tensor=options.leave_output_tensor,
        pure=options.pure,
        output_tensor_type=options.output_tensor_type,
        token_embedding_type=options.token_embedding_type,
        tensor_type_overrides=[pb.TensorTypeOverride(pattern=p, type=t) for p, t in options.tensor_type_overrides],
        keep_split=options.keep_split,
        imatrix_path=options.imatrix_path,
        output_dir=options.output_dir,
        overwrite=options.overwrite,
        lora_dir=options.lora_dir,
        max_kl_divergence=options.max_kl_divergence,
        skip_quality=options.skip_quality,
        intermediate_type=options.intermediate_type,
        eval_text_path=options.eval_text_path,
        calibration_path=options.calibration_path,
        calibration_chunks=options.calibration_chunks,
        calibration_ctx=options.calibration_ctx,
        imatrix_include_weights=list(options.imatrix_include_weights),
        imatrix_exclude_weights=list(options.imatrix_exclude_weights),
        kv_overrides=list(options.kv_overrides),
        prune_layers=list(options.prune_layers),
        split_max_bytes=options.split_max_bytes,
        model_name=options.model_name,
        split_max_tensors=options.split_max_tensors,
        min_cosine_similarity=options.min_cosine_similarity,
        min_ndcg=options.min_ndcg,
    )


def spec_from_proto(job: pb.QuantizeJob) -> JobSpec:
    return JobSpec(source=job.source, quant_types=tuple(job.quant_types), options=options_from_proto(job.options))


def create_request_from_proto(request: pb.CreateQuantizeJobRequest) -> tuple[JobSpec, str]:
    """The job to create and its idempotency key (the request's, else the job message's)."""
    return spec_from_proto(request.job), request.request_id or request.job.request_id


def source_info_to_proto(info: SourceInfo | None) -> pb.SourceInfo | None:
    if info is None:
        return None
    return pb.SourceInfo(
        path=info.path,
        architecture=info.architecture,
        size_bytes=info.size_bytes,
        parameter_count=info.parameter_count,
        file_type=info.file_type,
        tensor_count=info.tensor_count,
        model_name=info.model_name,
        tensor_bytes=info.tensor_bytes,
        kind=info.kind,
        repo_id=info.repo_id,
        revision=info.revision,
        commit_sha=info.commit_sha,
        root_digest=info.root_digest,
        manifest=[pb.SourceFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256) for f in info.manifest],
        hf_architecture=info.hf_architecture,
        conversion_cached=info.conversion_cached,
    )


def artifact_to_proto(artifact: Artifact) -> pb.QuantizedArtifact:
    return pb.QuantizedArtifact(
        quant_type=artifact.quant_type,
        path=artifact.path,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        bits_per_weight=artifact.bits_per_weight,
        fallback_tensor_count=artifact.fallback_tensor_count,
        tensor_count=artifact.tensor_count,
        source_size_bytes=artifact.source_size_bytes,
        compression_ratio=artifact.compression_ratio,
        quantize_duration=_duration(artifact.quantize_seconds),
        file_type=artifact.file_type,
        files=[pb.OutputFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256) for f in artifact.files],
        total_size_bytes=artifact.total_size_bytes,
        format="huggingface" if artifact.folder else "gguf",
        quality=quality_to_proto(artifact.quality),
        registry=registry_entry_to_proto(artifact.registry),
    )


def registry_entry_to_proto(entry: RegistryEntry | None) -> pb.RegistryRecord | None:
    if entry is None:
        return None
    return pb.RegistryRecord(
        chain_id=entry.chain_id,
        contract=entry.contract,
        tx_hash=entry.tx_hash,
        attester=entry.attester,
        state=f"STATE_{entry.state}",
        block_number=entry.block_number,
        provenance_path=entry.provenance_path,
        provenance_sha256=entry.provenance_sha256,
        error=status_of(entry.error) if entry.error else None,
        attempts=entry.attempts,
    )


def quality_to_proto(quality: Quality | None) -> pb.QualityReport | None:
    if quality is None:
        return None
    values = {k: v for k, v in dataclasses.asdict(quality).items() if v is not None and k != "error"}
    return pb.QualityReport(**values, error=status_of(quality.error) if quality.error else None)


def job_to_proto(job: Job) -> pb.QuantizeJob:
    progress = job.progress
    return pb.QuantizeJob(
        name=job.name,
        source=job.spec.source,
        quant_types=list(job.spec.quant_types),
        options=options_to_proto(job.spec.options),
        state=f"STATE_{job.state.value}",
        stage=f"STAGE_{job.stage.value}" if job.stage.value != "NONE" else "STAGE_UNSPECIFIED",
        progress=pb.Progress(
            fraction=progress.fraction,
            bytes_done=progress.bytes_done,
            bytes_total=progress.bytes_total,
            current_tensor=progress.current_tensor,
            current_quant_type=progress.current_quant_type,
            tensors_done=progress.tensors_done,
            tensors_total=progress.tensors_total,
            outputs_done=progress.outputs_done,
            outputs_total=progress.outputs_total,
            eta=_duration(progress.eta_seconds),
            bytes_per_second=progress.bytes_per_second,
            stage_fraction=progress.stage_fraction,
            stage_done=progress.stage_done,
            stage_total=progress.stage_total,
            stage_unit=progress.stage_unit,
            stage_eta=_duration(progress.stage_eta_seconds),
        ),
        outputs=[artifact_to_proto(a) for a in job.outputs],
        error=status_of(job.error) if job.error else None,
        imatrix=pb.ComputedImatrix(**dataclasses.asdict(job.imatrix)) if job.imatrix is not None else None,
        create_time=_timestamp(job.create_time),
        start_time=_timestamp(job.start_time),
        end_time=_timestamp(job.end_time),
        request_id=job.request_id,
        source_info=source_info_to_proto(job.source_info),
        output_dir=job.output_dir,
        owner=job.owner,
        delete_time=_timestamp(job.delete_time),
        reproduction=reproduction_to_proto(job),
    )


def reproduction_to_proto(job: Job) -> pb.Reproduction | None:
    link, result = job.spec.reproduction, job.reproduced
    if link is None:
        return None
    message = pb.Reproduction(
        file_sha256=link.file_sha256,
        original_attester=link.original_attester,
        provenance_sha256=link.provenance_sha256,
        recorded_tool_version=link.recorded_tool,
        any_version=link.any_version,
    )
    if result is not None:
        difference = result.first_difference
        message.verdict = f"VERDICT_{result.verdict}"  # type: ignore[assignment]
        message.reproduced_sha256 = result.reproduced_sha256
        message.report_path = result.report_path
        if difference:
            message.first_difference.CopyFrom(
                pb.FirstDifference(
                    where=str(difference.get("where", "")),
                    tensor=str(difference.get("tensor", "")),
                    ggml_type=str(difference.get("type", "")),
                    keys=[str(k) for k in difference.get("keys", ())],
                    index=int(difference.get("index", 0)),
                )
            )
    return message


def reproduce_request_from_proto(request: pb.ReproduceArtifactRequest) -> ReproduceRequest:
    return ReproduceRequest(
        file_sha256=request.file_sha256,
        file_path=request.file_path,
        provenance_json=request.provenance_json,
        provenance_path=request.provenance_path,
        source=request.source,
        lora_dir=request.lora_dir,
        imatrix_path=request.imatrix_path,
        output_dir=request.output_dir,
        any_version=request.any_version,
        report=request.report,
    )


def estimate_to_proto(estimate: Estimate) -> pb.EstimateQuantizeJobResponse:
    return pb.EstimateQuantizeJobResponse(
        outputs=[
            pb.OutputEstimate(
                quant_type=o.quant_type,
                size_bytes=o.size_bytes,
                bits_per_weight=o.bits_per_weight,
                fallback_tensor_count=o.fallback_tensor_count,
                duration=_duration(o.seconds),
                throughput_bytes_per_second=o.throughput,
                throughput_basis=pb.THROUGHPUT_BASIS_MEASURED if o.measured else pb.THROUGHPUT_BASIS_DEFAULT,
            )
            for o in estimate.outputs
        ],
        disk_bytes_needed=estimate.disk_bytes_needed,
        disk_bytes_free=estimate.disk_bytes_free,
        fits_on_disk=estimate.fits_on_disk,
        duration=_duration(estimate.seconds),
        source_info=source_info_to_proto(estimate.source_info),
        output_dir=estimate.output_dir,
    )


def quant_type_to_proto(quant_type: QuantType) -> pb.QuantType:
    return pb.QuantType(
        name=quant_type.name,
        file_type=quant_type.file_type,
        family=quant_type.family,
        requires_imatrix=quant_type.requires_imatrix,
        typical_bits_per_weight=quant_type.typical_bits_per_weight,
        description=quant_type.description,
        use_for=quant_type.use_for,
        available=quant_type.available,
        requires=quant_type.requires,
    )


def quant_types_to_proto(
    quant_types: list[QuantType], next_page_token: str, versions: LibraryVersions
) -> pb.ListQuantTypesResponse:
    return pb.ListQuantTypesResponse(
        quant_types=[quant_type_to_proto(t) for t in quant_types],
        next_page_token=next_page_token,
        llama_cpp_version=versions.python_package,
        llama_cpp_build=versions.llama_cpp,
    )
