"""RecommendService over real gRPC on loopback, and ``quantledger recommend`` against it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from conftest import RunningServer, error_reason, start_server, wait_for_job
from hub_cache import add_repo
from test_recommend_advice import MISTRAL_7B

from quantledger.v1 import quantize_service_pb2 as qpb
from quantledger.v1 import quantize_service_pb2_grpc as qpb_grpc
from quantledger.v1 import recommend_service_pb2 as pb
from quantledger.v1 import recommend_service_pb2_grpc as pb_grpc

GIB = 1 << 30


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    """quantize + recommend in one server, with a hub cache holding Mistral-7B-v0.1's config.json (offline)."""
    home = tmp_path_factory.mktemp("recommend-home")
    cache = tmp_path_factory.mktemp("hub-cache")
    config_only = tmp_path_factory.mktemp("mistral-config")
    (config_only / "config.json").write_text(json.dumps(MISTRAL_7B))
    add_repo(cache, "mistralai/Mistral-7B-v0.1", config_only)
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "recommend", "--port"]
    from conftest import free_port

    port = free_port()
    running = start_server(
        home,
        [models.root, home],
        port=port,
        command=[*command, str(port)],
        extra_env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    yield running
    running.stop()


@pytest.fixture()
def recommend(service: RunningServer) -> Iterator[pb_grpc.RecommendServiceStub]:
    with service.channel() as channel:
        yield pb_grpc.RecommendServiceStub(channel)


def cuda(gib: int) -> pb.Device:
    return pb.Device(kind=pb.Device.KIND_CUDA, memory_bytes=gib * GIB)


def test_a_hub_model_by_config_json_gets_its_advice(recommend: pb_grpc.RecommendServiceStub) -> None:
    answer = recommend.Recommend(
        pb.RecommendRequest(
            model=pb.ModelSpec(hf_repo="mistralai/Mistral-7B-v0.1"),
            hardware=pb.Hardware(ram_bytes=32 * GIB, devices=[cuda(8)]),
        )
    )
    best = answer.options[0]
    assert best.quant_type == "Q4_K_M" and best.fits and best.gpu_layers == best.total_layers
    assert best.context_length == 32768 and answer.any_fits and not answer.exact_sizes
    assert "config.json" in answer.model_summary and answer.parameter_count > 7_000_000_000
    assert [d.device for d in best.devices] == ["cpu", "cuda:0"] and best.reasons


@pytest.mark.parametrize(
    ("request_", "reason", "code"),
    [
        (
            pb.RecommendRequest(
                model=pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=8_000_000_000)),
                hardware=pb.Hardware(tier="mainframe"),
            ),
            "INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.RecommendRequest(
                model=pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=8_000_000_000)),
                hardware=pb.Hardware(ram_bytes=-GIB),
            ),
            "INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.RecommendRequest(
                model=pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=8_000_000_000)),
                hardware=pb.Hardware(ram_bytes=GIB),
                context_length=0,
            ),
            "INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.RecommendRequest(hardware=pb.Hardware(ram_bytes=GIB)),
            "INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.RecommendRequest(model=pb.ModelSpec(gguf_path="/etc/passwd"), hardware=pb.Hardware(ram_bytes=GIB)),
            "PATH_NOT_ALLOWED",
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            pb.RecommendRequest(model=pb.ModelSpec(hf_repo="nobody/nothing"), hardware=pb.Hardware(ram_bytes=GIB)),
            "SOURCE_NOT_FOUND",
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.RecommendRequest(model=pb.ModelSpec(registry_file="ab" * 32), hardware=pb.Hardware(ram_bytes=GIB)),
            "RECORD_NOT_FOUND",
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
    ids=["unknown-tier", "negative-ram", "zero-context", "no-model", "outside-roots", "unknown-repo", "unknown-digest"],
)
def test_bad_requests_get_typed_errors_and_the_service_keeps_serving(
    recommend: pb_grpc.RecommendServiceStub, request_: pb.RecommendRequest, reason: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        recommend.Recommend(request_, timeout=30)
    assert caught.value.code() == code and error_reason(caught.value) == reason
    fine = pb.RecommendRequest(
        model=pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=1_000_000_000)),
        hardware=pb.Hardware(tier="laptop"),
    )
    assert recommend.Recommend(fine, timeout=30).any_fits


def test_a_quantized_file_names_its_model_and_measured_quality_replaces_the_prediction(
    service: RunningServer,
    recommend: pb_grpc.RecommendServiceStub,
    models,  # type: ignore[no-untyped-def]
) -> None:
    with service.channel() as channel:
        stub = qpb_grpc.QuantizeServiceStub(channel)
        job = stub.CreateQuantizeJob(
            qpb.CreateQuantizeJobRequest(job=qpb.QuantizeJob(source=str(models.f16), quant_types=["Q4_K_M", "Q8_0"]))
        )
        done = wait_for_job(stub, job.name)
    assert done.state == qpb.QuantizeJob.STATE_SUCCEEDED
    made = {o.quant_type: o for o in done.outputs}
    by_file = recommend.Recommend(
        pb.RecommendRequest(
            model=pb.ModelSpec(registry_file=f"files/{made['Q8_0'].sha256}"),
            hardware=pb.Hardware(ram_bytes=4 * GIB),
            kv_cache_type="f16",
            max_options=50,
        )
    )
    by_source = recommend.Recommend(
        pb.RecommendRequest(
            model=pb.ModelSpec(gguf_path=str(models.f16)),
            hardware=pb.Hardware(ram_bytes=4 * GIB),
            kv_cache_type="f16",
            max_options=50,
        )
    )
    assert by_file.exact_sizes and by_source.exact_sizes
    assert by_file.parameter_count == by_source.parameter_count
    options = {o.quant_type: o for o in by_source.options}
    for quant_type, artifact in made.items():
        assert options[quant_type].size_bytes == artifact.size_bytes  # predicted from the F16 source: exact
        assert options[quant_type].quality.source == "measured"
        assert options[quant_type].quality.mean_kl_divergence == pytest.approx(artifact.quality.mean_kl_divergence)
    assert options["Q6_K"].quality.source == "scaled"  # llama.cpp's Llama-3-8B figure, scaled to this tiny model


def run_cli(
    *args: str, server: RunningServer | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "quantledger.cli.main", "recommend", *args]
    if server is not None:
        argv += ["--server", server.address]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_the_cli_prints_a_table_and_json(service: RunningServer) -> None:
    table = run_cli("--params", "8B", "--ram", "8G", "--cpu-only", "--ctx", "4096", server=service)
    assert table.returncode == 0, table.stderr
    assert "TOK/S" in table.stdout and "Recommended: Q4" in table.stdout
    as_json = run_cli("--params", "70B", "--tier", "workstation", "--ctx", "8192", "--json", server=service)
    answer = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and answer["options"][0]["quant_type"].startswith("IQ3")
    assert 0 < answer["options"][0]["gpu_layers"] < answer["options"][0]["total_layers"]
    nowhere = run_cli("--params", "405B", "--tier", "laptop", server=service)
    assert nowhere.returncode == 1 and "Nothing fits; closest:" in nowhere.stdout
    bad = run_cli("--params", "8B", "--tier", "mainframe", "--json", server=service)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["reason"] == "INVALID_ARGUMENT"
    assert "laptop, workstation, server, enterprise" in bad.stderr


def test_the_cli_answers_locally_without_a_server(tmp_path: pathlib.Path, models) -> None:  # type: ignore[no-untyped-def]
    import os

    env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path), "QUANTLEDGER_ALLOWED_ROOTS": str(models.root)}
    local = run_cli(str(models.f16), "--ram", "2G", "--gpu", "cuda:4G", "--json", "--local", env=env)
    assert local.returncode == 0, local.stderr
    answer = json.loads(local.stdout)
    assert answer["exact_sizes"] and answer["options"][0]["devices"][1]["device"] == "cuda:0"
