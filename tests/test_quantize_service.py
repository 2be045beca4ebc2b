"""QuantizeService over a real loopback server: jobs, outputs, estimates, idempotency, listing."""

from __future__ import annotations

import hashlib
import pathlib
import uuid

import grpc
import llama_cpp
import pytest
from conftest import Models, RunningServer, error_reason, wait_for_job
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quantledger.gguf.reader import read_gguf_header
from quantledger.v1 import quantize_service_pb2 as pb

Job = pb.QuantizeJob


def create(stub, source: pathlib.Path | str, types, request_id: str = "", **options) -> pb.QuantizeJob:
    job = pb.QuantizeJob(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job, request_id=request_id))


def sha256(path: str) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_health_and_reflection(server: RunningServer) -> None:
    with server.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="quantledger.v1.QuantizeService")
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "quantledger.v1.QuantizeService" in names
    assert "grpc.health.v1.Health" in names


def test_job_writes_every_type_with_exact_size_hash_and_bpw(stub, models: Models, tmp_path) -> None:
    request = pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_K_M", "Q8_0"])
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
    job = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=request))
    assert job.name.startswith("jobs/")
    assert job.state in (Job.STATE_QUEUED, Job.STATE_RUNNING)

    snapshots = list(stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120))
    final = snapshots[-1]
    assert final.state == Job.STATE_SUCCEEDED, final.error
    # progress is weighted by tensor bytes, names tensors, and never goes backwards
    fractions = [s.progress.fraction for s in snapshots]
    assert fractions == sorted(fractions)
    assert final.progress.fraction == 1.0
    assert final.progress.bytes_done == final.progress.bytes_total == 2 * final.source_info.tensor_bytes
    assert any(s.progress.current_tensor.startswith("blk.") for s in snapshots)
    assert final.start_time.seconds and final.end_time.seconds

    assert [o.quant_type for o in final.outputs] == ["Q4_K_M", "Q8_0"]
    predicted = {o.quant_type: o for o in estimate.outputs}
    for output in final.outputs:
        path = pathlib.Path(output.path)
        assert path.is_file()
        assert path.stat().st_size == output.size_bytes == predicted[output.quant_type].size_bytes
        assert output.sha256 == sha256(output.path)
        assert output.fallback_tensor_count == 0
        assert output.bits_per_weight == pytest.approx(predicted[output.quant_type].bits_per_weight)
        header = read_gguf_header(path)
        assert header.metadata["general.file_type"] == output.file_type
        assert output.compression_ratio == pytest.approx(models.f16.stat().st_size / output.size_bytes)
    q4, q8 = final.outputs
    assert 4.5 < q4.bits_per_weight < 6.0  # Q4_K with Q6_K upgrades, F32 norms
    assert 8.4 < q8.bits_per_weight < 9.0
    # no partial files left next to the outputs
    assert not [p for p in pathlib.Path(final.output_dir).iterdir() if ".partial" in p.name]


def test_rows_not_multiple_of_256_fall_back_and_are_counted(stub, models: Models) -> None:
    final = wait_for_job(stub, create(stub, models.f16_320, ["Q4_K_M"]).name)
    assert final.state == Job.STATE_SUCCEEDED, final.error
    (output,) = final.outputs
    assert output.fallback_tensor_count > 0
    types = {t.type_name for t in read_gguf_header(output.path).tensors}
    assert "Q5_0" in types or "Q5_1" in types or "Q8_0" in types  # the fallback types
    llm = llama_cpp.Llama(model_path=output.path, n_ctx=32, verbose=False)
    llm.eval(llm.tokenize(b"hi there"))
    del llm


def test_estimate_reports_sizes_disk_and_time(stub, models: Models) -> None:
    request = pb.QuantizeJob(source=str(models.f16_320), quant_types=["Q4_K_M", "IQ4_XS", "Q8_0"])
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
    assert [o.quant_type for o in estimate.outputs] == ["Q4_K_M", "IQ4_XS", "Q8_0"]
    assert estimate.disk_bytes_needed == sum(o.size_bytes for o in estimate.outputs)
    assert estimate.fits_on_disk and estimate.disk_bytes_free > estimate.disk_bytes_needed
    assert all(o.fallback_tensor_count > 0 for o in estimate.outputs[:2])
    assert estimate.outputs[2].fallback_tensor_count == 0  # Q8_0 blocks of 32 divide 320
    assert all(o.duration.ToTimedelta().total_seconds() > 0 for o in estimate.outputs)
    assert estimate.source_info.architecture == "llama"


def test_same_request_id_same_body_returns_same_job(stub, models: Models) -> None:
    key = str(uuid.uuid4())
    first = create(stub, models.f16, ["Q4_0"], request_id=key)
    again = create(stub, models.f16, ["Q4_0"], request_id=key)
    assert again.name == first.name
    assert again.request_id == key
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, models.f16, ["Q5_0"], request_id=key)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "REQUEST_ID_CONFLICT"
    wait_for_job(stub, first.name)
    assert create(stub, models.f16, ["Q4_0"], request_id=key).name == first.name  # also after it finished


def test_list_paginates_newest_first(stub, models: Models) -> None:
    names = [create(stub, models.f16, ["Q4_0"], output_dir=str(models.root / f"page-{i}")).name for i in range(3)]
    first = stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest(page_size=2))
    assert len(first.jobs) == 2 and first.next_page_token
    assert [j.name for j in first.jobs] == names[::-1][:2]
    seen = [j.name for j in first.jobs]
    token = first.next_page_token
    while token:
        page = stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest(page_size=2, page_token=token))
        seen += [j.name for j in page.jobs]
        token = page.next_page_token
    assert seen[:3] == names[::-1]
    assert len(seen) == len(set(seen))
    for name in names:
        wait_for_job(stub, name)


def test_options_reach_llama_cpp(stub, models: Models) -> None:
    final = wait_for_job(
        stub,
        create(
            stub,
            models.f16,
            ["Q4_K_M"],
            output_dir=str(models.root / "options"),
            output_tensor_type="Q8_0",
            token_embedding_type="Q6_K",
            tensor_type_overrides=[pb.TensorTypeOverride(pattern=r"ffn_down", type="F16")],
            threads=1,
        ).name,
    )
    assert final.state == Job.STATE_SUCCEEDED, final.error
    types = {t.name: t.type_name for t in read_gguf_header(final.outputs[0].path).tensors}
    assert types["output.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q6_K"
    assert types["blk.0.ffn_down.weight"] == "F16"
    assert types["blk.0.ffn_up.weight"] == "Q4_K"

    pure = wait_for_job(
        stub,
        create(
            stub,
            models.f16,
            ["Q4_K_M"],
            output_dir=str(models.root / "pure"),
            pure=True,
            leave_output_tensor=True,
        ).name,
    )
    types = {t.name: t.type_name for t in read_gguf_header(pure.outputs[0].path).tensors}
    assert types["output.weight"] == "F16"  # left as it was
    assert {types[n] for n in types if n.startswith("blk.") and not n.endswith("norm.weight")} == {"Q4_K"}


def test_requantize_with_allow_requantize(stub, models: Models) -> None:
    final = wait_for_job(stub, create(stub, models.q8_0, ["Q4_0"], allow_requantize=True).name)
    assert final.state == Job.STATE_SUCCEEDED, final.error
    assert final.outputs[0].size_bytes < models.q8_0.stat().st_size


def test_list_quant_types_is_the_installed_catalogue(stub, models: Models) -> None:
    response = stub.ListQuantTypes(pb.ListQuantTypesRequest())
    names = [t.name for t in response.quant_types if t.family != "huggingface"]  # the HF formats: docs/HF_EXPORT.md
    assert [t.name for t in response.quant_types][len(names) :] == ["HF_F16", "HF_BF16", "HF_BNB_INT8", "HF_BNB_NF4"]
    declared = {
        name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
        for name in dir(llama_cpp)
        if name.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"))
    } - {"GUESSED"}
    assert set(names) <= declared
    assert len(names) >= 30
    for missing in declared - set(names):  # declared by the bindings but refused by this llama.cpp build
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, models.f16, [missing])
        assert error_reason(caught.value) == "UNKNOWN_QUANT_TYPE"
    for name in ("Q4_K_M", "Q8_0", "IQ4_XS", "IQ2_XXS", "TQ1_0", "BF16", "F32", "MXFP4_MOE"):
        assert name in names
    by_name = {t.name: t for t in response.quant_types}
    assert by_name["IQ2_XXS"].requires_imatrix and not by_name["Q4_K_M"].requires_imatrix
    assert by_name["Q4_K_M"].file_type == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    # the binding's release and llama.cpp's own version and commit, each named for what it is
    assert response.llama_cpp_version.startswith("llama-cpp-python ")
    assert response.llama_cpp_build.startswith("llama.cpp ") and "llama-cpp-python" not in response.llama_cpp_build
    assert "commit " in response.llama_cpp_build
    page = stub.ListQuantTypes(pb.ListQuantTypesRequest(page_size=5))
    assert len(page.quant_types) == 5 and page.next_page_token
    rest = stub.ListQuantTypes(pb.ListQuantTypesRequest(page_token=page.next_page_token))
    assert [t.name for t in [*page.quant_types, *rest.quant_types]] == [t.name for t in response.quant_types]


def test_time_estimate_is_calibrated_by_jobs_run_here(stub, models: Models) -> None:
    request = pb.QuantizeJob(source=str(models.large), quant_types=["Q5_1"])
    before = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request)).outputs[0]
    assert before.throughput_basis == pb.THROUGHPUT_BASIS_DEFAULT
    final = wait_for_job(
        stub, create(stub, models.large, ["Q5_1"], output_dir=str(models.root / "calibrate"), skip_quality=True).name
    )
    assert final.state == Job.STATE_SUCCEEDED
    after = stub.EstimateQuantizeJob(
        pb.EstimateQuantizeJobRequest(
            job=pb.QuantizeJob(
                source=str(models.large),
                quant_types=["Q5_1"],
                options=pb.QuantizeOptions(output_dir=str(models.root / "calibrate2")),
            )
        )
    ).outputs[0]
    assert after.throughput_basis == pb.THROUGHPUT_BASIS_MEASURED
    # independent of how the service counts bytes: the F16 source file on disk (its header is a few KB of
    # ~200 MB) over the time the job reports for its quantization
    seconds = final.outputs[0].quantize_duration.ToTimedelta().total_seconds()
    assert after.throughput_bytes_per_second == pytest.approx(models.large.stat().st_size / seconds, rel=0.02)
    # and the estimate of the same job again covers the quantization time that job took
    assert after.duration.ToTimedelta().total_seconds() >= seconds


def test_types_are_read_as_llama_quantize_reads_them(stub, models: Models) -> None:
    """An alias (Q4_K is Q4_K_M, as llama-quantize's table says) and a numeric ftype id name their type; the
    outputs carry the type's own name, and two names of one type are refused as a duplicate."""
    q8_id = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    job = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=["q4_k", str(q8_id)],
        options=pb.QuantizeOptions(skip_quality=True),
    )
    done = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    assert [o.quant_type for o in done.outputs] == ["Q4_K_M", "Q8_0"]
    assert [o.file_type for o in done.outputs] == [llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, q8_id]
    assert read_gguf_header(done.outputs[0].path).file_type == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    twice = pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_K", "Q4_K_M"])
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=twice))
    assert error_reason(refused.value) == "INVALID_ARGUMENT" and "Q4_K_M" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as unknown:
        stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["999"]))
        )
    assert error_reason(unknown.value) == "UNKNOWN_QUANT_TYPE"
