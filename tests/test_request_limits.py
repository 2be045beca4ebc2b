"""Server-side request limits (docs/SECURITY.md "Request limits"): the largest request message, open
watch streams per principal, and the size bounds of every RPC's fields, over real gRPC."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import grpc
import pytest
from conftest import Models, RunningServer, error_reason, start_server
from hostile import health_probe

from quantledger.errors import InvalidArgument
from quantledger.recommend.hardware import Device
from quantledger.recommend.models import ModelRef
from quantledger.recommend.service import MAX_DEVICES, HardwareSpec, RecommendQuery
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

LIMIT_BYTES = 64 << 10
WATCH_LIMIT = 4


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[RunningServer]:
    """A server with small, configured limits (and one job slot, so a second job waits QUEUED)."""
    home = tmp_path_factory.mktemp("limited-home")
    running = start_server(
        home,
        [models.root, home],
        extra_env={
            "QUANTLEDGER_MAX_MESSAGE_BYTES": str(LIMIT_BYTES),
            "QUANTLEDGER_MAX_WATCH_STREAMS": str(WATCH_LIMIT),
            "QUANTLEDGER_MAX_PARALLEL_JOBS": "1",
        },
    )
    yield running
    running.stop()


def _create(stub: pb_grpc.QuantizeServiceStub, source: str, out: pathlib.Path) -> pb.QuantizeJob:
    job = pb.QuantizeJob(
        source=source, quant_types=["Q8_0"], options=pb.QuantizeOptions(output_dir=str(out), skip_quality=True)
    )
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def test_a_request_over_the_default_4_mib_is_resource_exhausted(server: RunningServer, models: Models) -> None:
    stub = server.stub()
    with health_probe(server.address) as probe, pytest.raises(grpc.RpcError) as caught:
        _create(stub, str(models.root) + "/" + "a" * (5 << 20), models.root)
    probe.assert_answered()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()


def test_the_message_limit_is_configurable(limited: RunningServer, models: Models) -> None:
    stub = limited.stub()
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, "/" + "a" * LIMIT_BYTES, models.root)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    # under the limit, the same request is judged on its fields (here: a path too long)
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, "/" + "a" * (LIMIT_BYTES // 2), models.root)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_one_watch_stream_past_the_limit_is_too_many_streams(limited: RunningServer, models: Models) -> None:
    stub = limited.stub()
    out = models.root / "watch-out"
    out.mkdir(exist_ok=True)
    running = _create(stub, str(models.large), out)  # holds the only slot
    queued = _create(stub, str(models.f16), out)  # waits behind it: its watch streams stay open
    streams = []
    try:
        for _ in range(WATCH_LIMIT):
            stream = stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=queued.name), timeout=60)
            next(stream)  # the first snapshot: the stream is open on the server
            streams.append(stream)
        extra = stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=queued.name), timeout=60)
        with pytest.raises(grpc.RpcError) as caught:
            next(extra)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        assert error_reason(caught.value) == "TOO_MANY_STREAMS"
        # closing one stream frees its place
        streams.pop().cancel()
        for _ in range(50):
            again = stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=queued.name), timeout=60)
            try:
                next(again)
                streams.append(again)
                break
            except grpc.RpcError as exc:
                assert error_reason(exc) == "TOO_MANY_STREAMS"
        else:
            pytest.fail("a closed watch stream never gave its place back")
    finally:
        for stream in streams:
            stream.cancel()
        for job in (queued, running):
            try:
                stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # it had ended already


def _query(**changes: object) -> RecommendQuery:
    model = changes.pop("model", ModelRef(hf_repo="org/model"))
    hardware = changes.pop("hardware", HardwareSpec(tier="laptop-16gb"))
    return RecommendQuery(model=model, hardware=hardware, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (lambda: _query(model=ModelRef(gguf_path="/" + "a" * 5000)), "gguf_path"),
        (lambda: _query(model=ModelRef(hf_repo="org/\0model")), "hf_repo"),
        (lambda: _query(model=ModelRef.described(7_000_000_000, "l" * 100)), "family"),
        (lambda: _query(kv_cache_type="q" * 100), "kv_cache_type"),
        (lambda: _query(hardware=HardwareSpec(tier="t" * 100)), "tier"),
        (
            lambda: _query(
                hardware=HardwareSpec(ram_bytes=1 << 34, devices=(Device("cuda", 1 << 30),) * (MAX_DEVICES + 1))
            ),
            "devices",
        ),
        (
            lambda: _query(hardware=HardwareSpec(ram_bytes=1 << 34, devices=(Device("cuda", 1 << 30, 0, "g" * 300),))),
            "devices.name",
        ),
    ],
)
def test_recommend_queries_are_bounded_by_size_first(query, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as caught:
        query().check_bounds()
    assert caught.value.metadata.get("field") == field


def test_a_recommend_query_of_ordinary_size_passes_the_bounds() -> None:
    _query().check_bounds()
