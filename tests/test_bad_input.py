"""Every bad input gets its typed error (code + ErrorInfo reason), and the server keeps serving."""

from __future__ import annotations

import os
import pathlib
import shutil
import struct

import grpc
import pytest
from conftest import Models, error_reason, start_server, wait_for_job

from quantledger.v1 import quantize_service_pb2 as pb

Job = pb.QuantizeJob


def create(stub, source, types=("Q4_K_M",), **options):
    job = pb.QuantizeJob(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def refused(call, *args, **kwargs) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value.code(), error_reason(caught.value), caught.value.details()


def gguf_bytes(
    tensors: list[tuple[str, list[int], int]], tensor_count: int | None = None, data: bytes = b"", arch: str = "llama"
) -> bytes:
    """A minimal GGUF v3: general.architecture = ``arch``, the given tensor infos, then ``data``."""

    def string(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<I", 3)
    out += struct.pack("<QQ", len(tensors) if tensor_count is None else tensor_count, 1)
    out += string("general.architecture") + struct.pack("<I", 8) + string(arch)
    offset = 0
    for name, dims, ggml_type in tensors:
        out += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


@pytest.fixture(scope="module")
def bad(models: Models) -> dict[str, pathlib.Path]:
    root = models.root / "bad"
    root.mkdir(exist_ok=True)
    files = {}
    files["empty_dir"] = root / "empty-dir"
    files["empty_dir"].mkdir(exist_ok=True)
    (files["empty_dir"] / "notes.txt").write_text("no model here")
    files["not_gguf"] = root / "model.gguf"
    files["not_gguf"].write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
    whole = models.f16.read_bytes()
    files["truncated"] = root / "truncated-f16.gguf"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["header_cut"] = root / "header-cut.gguf"
    files["header_cut"].write_bytes(whole[:100])
    files["absurd_count"] = root / "absurd-count.gguf"
    files["absurd_count"].write_bytes(gguf_bytes([("a.weight", [256, 4], 1)], tensor_count=2**40, data=b"\0" * 2048))
    files["absurd_size"] = root / "absurd-size.gguf"
    files["absurd_size"].write_bytes(gguf_bytes([("a.weight", [2**40, 2**40], 1)], data=b"\0" * 64))
    files["unknown_arch"] = root / "unknown-arch.gguf"
    files["unknown_arch"].write_bytes(
        gguf_bytes([("blk.0.x.weight", [256, 4], 1)], data=b"\0" * 2048, arch="frobnicator")
    )
    files["incomplete_llama"] = root / "incomplete-llama.gguf"
    files["incomplete_llama"].write_bytes(gguf_bytes([("blk.0.x.weight", [256, 4], 1)], data=b"\0" * 2048))
    files["lying_size"] = root / "lying-size.gguf"
    files["lying_size"].write_bytes(gguf_bytes([("a.weight", [4096, 4096], 1)], data=b"\0" * 64))
    return files


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND"),
        ("empty_dir", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("not_gguf", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("truncated", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("header_cut", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("absurd_count", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("absurd_size", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("lying_size", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
        ("unknown_arch", grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_ARCHITECTURE"),
        ("incomplete_llama", grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"),
    ],
)
def test_bad_sources(stub, models: Models, bad, case, code, reason) -> None:
    source = models.root / "does-not-exist.gguf" if case == "missing" else bad[case]
    for call in (
        create,
        lambda s, src: s.EstimateQuantizeJob(
            pb.EstimateQuantizeJobRequest(job=pb.QuantizeJob(source=str(src), quant_types=["Q4_K_M"]))
        ),
    ):
        got_code, got_reason, message = refused(call, stub, source)
        assert (got_code, got_reason) == (code, reason), message
        assert message


def test_paths_outside_allowed_roots_are_refused(stub, models: Models, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret-f16.gguf"
    shutil.copy(models.f16, secret)
    link = models.root / "link-to-outside.gguf"
    if not link.exists():
        os.symlink(secret, link)
    dotdot = str(models.root / ".." / outside.name / "secret-f16.gguf")
    for source in (secret, link, dotdot, "/etc/passwd", outside / "missing.gguf"):
        got_code, got_reason, _ = refused(create, stub, source)
        assert (got_code, got_reason) == (grpc.StatusCode.PERMISSION_DENIED, "PATH_NOT_ALLOWED"), source
    got = refused(create, stub, models.f16, output_dir=str(outside))
    assert got[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PATH_NOT_ALLOWED")
    got = refused(create, stub, models.f16, types=("IQ2_XXS",), imatrix_path=str(outside / "x.dat"))
    assert got[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PATH_NOT_ALLOWED")


def test_type_and_option_errors(stub, models: Models) -> None:
    code, reason, message = refused(create, stub, models.f16, types=("Q4_K_XL",))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_QUANT_TYPE")
    assert "Q4_K_M" in message  # names the valid ones
    assert refused(create, stub, models.f16, types=())[1] == "INVALID_ARGUMENT"
    assert refused(create, stub, models.f16, types=("Q4_0", "q4_0"))[1] == "INVALID_ARGUMENT"
    assert refused(create, stub, models.f16, output_tensor_type="Q9_9")[1] == "INVALID_ARGUMENT"
    bad_override = [pb.TensorTypeOverride(pattern="(", type="Q8_0")]
    assert refused(create, stub, models.f16, tensor_type_overrides=bad_override)[1] == "INVALID_ARGUMENT"
    code, reason, _ = refused(create, stub, models.q8_0)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUANTIZE_REFUSED")
    for needs in ("IQ2_XXS", "IQ1_S", "IQ2_XS", "IQ1_M", "IQ2_S", "Q2_K_S", "IQ2_M", "IQ3_XXS", "IQ3_XS"):
        code, reason, _ = refused(create, stub, models.f16, types=("Q4_0", needs))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IMATRIX_REQUIRED"), needs


def test_job_name_and_paging_errors(stub, models: Models) -> None:
    code, reason, _ = refused(stub.GetQuantizeJob, pb.GetQuantizeJobRequest(name="jobs/nope"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    # a malformed name is INVALID_ARGUMENT, as in RegistryService; a well-formed name of nothing is NOT_FOUND
    for malformed in ("models/x", "jobs/", "jobs/a/b", "nonsense"):
        for call, request in (
            (stub.GetQuantizeJob, pb.GetQuantizeJobRequest),
            (stub.CancelQuantizeJob, pb.CancelQuantizeJobRequest),
        ):
            code, reason, _ = refused(call, request(name=malformed))
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), malformed
    with pytest.raises(grpc.RpcError) as malformed_watch:
        list(stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name="models/x")))
    assert error_reason(malformed_watch.value) == "INVALID_ARGUMENT"
    code, reason, _ = refused(stub.ListQuantizeJobs, pb.ListQuantizeJobsRequest(page_size=-1))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert refused(stub.ListQuantizeJobs, pb.ListQuantizeJobsRequest(page_token="garbage!"))[1] == "INVALID_ARGUMENT"
    assert refused(stub.ListQuantTypes, pb.ListQuantTypesRequest(page_size=-3))[1] == "INVALID_ARGUMENT"
    stream = stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name="jobs/nope"))
    with pytest.raises(grpc.RpcError) as caught:
        list(stream)
    assert error_reason(caught.value) == "JOB_NOT_FOUND"


def test_cancel_of_finished_job(stub, models: Models) -> None:
    done = wait_for_job(stub, create(stub, models.f16, ["Q4_0"], output_dir=str(models.root / "cancel-done")).name)
    assert done.state == Job.STATE_SUCCEEDED
    code, reason, _ = refused(stub.CancelQuantizeJob, pb.CancelQuantizeJobRequest(name=done.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_ALREADY_FINISHED")
    # nothing lost: the job and its output are unchanged
    again = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=done.name))
    assert again.state == Job.STATE_SUCCEEDED and pathlib.Path(again.outputs[0].path).is_file()


def test_existing_output_is_not_overwritten(stub, models: Models) -> None:
    out = models.root / "exists"
    first = wait_for_job(stub, create(stub, models.f16, ["Q4_0"], output_dir=str(out)).name)
    before = pathlib.Path(first.outputs[0].path).read_bytes()
    code, reason, _ = refused(create, stub, models.f16, ["Q4_0"], output_dir=str(out))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "OUTPUT_EXISTS")
    assert pathlib.Path(first.outputs[0].path).read_bytes() == before
    # overwrite replaces files that are there, but never another job's recorded output (issue 10)
    code, reason, details = refused(create, stub, models.f16, ["Q4_0"], output_dir=str(out), overwrite=True)
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "OUTPUT_EXISTS") and "earlier job" in details
    assert pathlib.Path(first.outputs[0].path).read_bytes() == before
    stray = out / pathlib.Path(first.outputs[0].path).name.replace("Q4_0", "Q5_0")
    stray.write_bytes(b"not an output of any job")
    second = wait_for_job(stub, create(stub, models.f16, ["Q5_0"], output_dir=str(out), overwrite=True).name)
    assert second.state == Job.STATE_SUCCEEDED
    assert second.outputs[0].path == str(stray) and stray.read_bytes()[:4] == b"GGUF"


def test_server_keeps_serving_after_bad_input(stub, models: Models, bad) -> None:
    for source in bad.values():
        with pytest.raises(grpc.RpcError):
            create(stub, source)
    final = wait_for_job(stub, create(stub, models.f16, ["Q5_0"], output_dir=str(models.root / "after-bad")).name)
    assert final.state == Job.STATE_SUCCEEDED


def test_insufficient_disk_refuses_before_any_work(models: Models, tmp_path) -> None:
    home = tmp_path / "home"
    server = start_server(home, [models.root, home], extra_env={"QUANTLEDGER_DISK_RESERVE_BYTES": str(10**18)})
    try:
        stub = server.stub()
        code, reason, _ = refused(create, stub, models.f16)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_DISK")
        estimate = stub.EstimateQuantizeJob(
            pb.EstimateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_K_M"]))
        )
        assert not estimate.fits_on_disk
        assert stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest()).jobs == []
    finally:
        server.stop()
