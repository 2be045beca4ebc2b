"""Shared fixtures: generated models, a real quantledger server on loopback, a gRPC stub."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import S3Server, TemporalServer, seaweedfs, temporal_dev

from quantledger.testing.synthetic_model import write_llama_gguf
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def up_argv(port: int, chain_port: int) -> list[str]:
    """`quantledger up` on these ports, announcing itself in JSON, without the HTTP surface (its default
    port 8080 would be shared by every `up` a test run starts)."""
    return [
        sys.executable,
        "-m",
        "quantledger.cli.main",
        "up",
        "--port",
        str(port),
        "--chain-port",
        str(chain_port),
        "--http-port",
        "0",
        "--json",
    ]


@dataclass
class RunningServer:
    """A `quantledger serve quantize` child process."""

    process: subprocess.Popen[bytes]
    address: str
    home: pathlib.Path
    log: pathlib.Path
    credentials: grpc.ChannelCredentials | None = None  # a TLS server's: trust its CA (and a client certificate)

    def channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials)
        return grpc.insecure_channel(self.address)

    def stub(self) -> pb_grpc.QuantizeServiceStub:
        return pb_grpc.QuantizeServiceStub(self.channel())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_serving(
    address: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"server at {address} did not become SERVING")


def start_server(
    home: pathlib.Path,
    roots: list[pathlib.Path],
    *,
    port: int | None = None,
    command: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> RunningServer:
    """Start a server as a user would (the console script) and wait until health says SERVING."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        QUANTLEDGER_HOME=str(home),
        QUANTLEDGER_ALLOWED_ROOTS=os.pathsep.join(str(r) for r in roots),
        QUANTLEDGER_LOG_LEVEL="INFO",
        QUANTLEDGER_HTTP_PORT="0",  # many servers at once: tests that need HTTP pass a free port in extra_env
    )
    env.update(extra_env or {})
    log = home / f"server-{port}.log"
    argv = command or [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    with open(log, "ab") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=str(home))
    server = RunningServer(process, f"127.0.0.1:{port}", home, log, credentials)
    try:
        wait_serving(server.address, process, credentials=credentials)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start:\n{server.output()}") from None
    return server


@dataclass(frozen=True)
class Models:
    root: pathlib.Path
    f16: pathlib.Path  # 256-wide llama, every row length a multiple of 256
    f16_320: pathlib.Path  # 320-wide: K-quants fall back on most tensors
    f32: pathlib.Path
    q8_0: pathlib.Path  # already quantized
    large: pathlib.Path  # ~200 MB F16: slow enough to cancel or kill mid-run


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    paths = Models(
        root=root,
        f16=root / "tiny-f16.gguf",
        f16_320=root / "tiny320-f16.gguf",
        f32=root / "tiny-f32.gguf",
        q8_0=root / "tiny-q8_0.gguf",
        large=root / "large-f16.gguf",
    )
    write_llama_gguf(paths.f16, n_embd=256, n_ff=512, n_layer=2, seed=1)
    write_llama_gguf(paths.f16_320, n_embd=320, n_ff=640, n_layer=2, n_head=4, n_head_kv=2, seed=2)
    write_llama_gguf(paths.f32, n_embd=256, n_ff=512, n_layer=2, dtype="F32", seed=3)
    write_llama_gguf(paths.q8_0, n_embd=256, n_ff=512, n_layer=2, dtype="Q8_0", seed=4)
    write_llama_gguf(paths.large, n_embd=1024, n_ff=2816, n_layer=10, n_head=16, n_head_kv=8, n_vocab=4096, seed=5)
    return paths


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("server-home")
    running = start_server(home, [models.root, home])
    yield running
    running.stop()


@pytest.fixture()
def stub(server: RunningServer) -> Iterator[pb_grpc.QuantizeServiceStub]:
    with server.channel() as channel:
        yield pb_grpc.QuantizeServiceStub(channel)


def wait_for_job(stub: pb_grpc.QuantizeServiceStub, name: str, timeout: float = 300) -> pb.QuantizeJob:
    """Follow WatchQuantizeJob to the end and return the last snapshot."""
    last = None
    for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=name), timeout=timeout):
        last = snapshot
    assert last is not None
    return last


def error_reason(exc: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {exc}"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "quantledger.v1"
            return info.reason
    raise AssertionError(f"no ErrorInfo in {status}")


def job_error_reason(job: pb.QuantizeJob) -> str:
    """The ErrorInfo reason in a finished job's error (what the CLI prints)."""
    from quantledger.cli.render import error_reason as reason_of

    return reason_of(job)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway for the session, started on first use."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    """Temporal's dev server (SQLite) for the session, started on first use."""
    with temporal_dev(tmp_path_factory.mktemp("temporal")) as server:
        yield server
