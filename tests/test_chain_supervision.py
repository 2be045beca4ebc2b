"""`quantledger up` supervises its embedded chain: a kill -9 of the chain is followed by a restart, RegistryService
health NOT_SERVING while it is away and SERVING when it is back, and outputs made meanwhile get registered."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest
from conftest import free_port, up_argv, wait_serving
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quantledger.v1 import quantize_service_pb2 as qpb
from quantledger.v1 import quantize_service_pb2_grpc as qpb_grpc

pytestmark = [pytest.mark.chain, pytest.mark.slow]
REGISTRY = "quantledger.v1.RegistryService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """Every status the server streams for one service (grpc.health.v1 Watch), in order."""

    def __init__(self, address: str, service: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.statuses: list[int] = []
        self.changed = threading.Condition()
        self._stream = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(service=service))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for reply in self._stream:
                with self.changed:
                    self.statuses.append(reply.status)
                    self.changed.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, status: int, after: int, timeout: float = 120) -> int:
        """Index of the first ``status`` at or after index ``after``."""
        with self.changed:
            found = self.changed.wait_for(lambda: status in self.statuses[after:], timeout)
            assert found, f"health never became {status}: {self.statuses}"
            return self.statuses.index(status, after)

    def close(self) -> None:
        self._stream.cancel()
        self.channel.close()


@pytest.fixture
def up(tmp_path: pathlib.Path, models) -> Iterator[tuple[subprocess.Popen[str], str, int, pathlib.Path]]:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir()
    port, chain_port = free_port(), free_port()
    env = {
        **os.environ,
        "QUANTLEDGER_HOME": str(home),
        "QUANTLEDGER_REGISTRY_RETRY_SECONDS": "1",
        "QUANTLEDGER_ALLOWED_ROOTS": os.pathsep.join([str(models.root), str(home)]),
    }
    argv = up_argv(port, chain_port)
    with open(home / "up.log", "a") as log:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=home)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, (home / "up.log").read_text()
    address = json.loads(line)["address"]
    wait_serving(address, process)
    yield process, address, chain_port, home
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    process.stdout.close()


def chain_child(up_process: subprocess.Popen[str]) -> psutil.Process:
    children = psutil.Process(up_process.pid).children()
    return next(c for c in children if "chain" in c.cmdline())


def hold_port(port: int) -> socket.socket:
    """Listen on ``port`` (so a restarted chain cannot bind it) once the dead chain has let it go."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_killed_chain_is_restarted_and_pending_outputs_get_registered(up, models) -> None:  # type: ignore[no-untyped-def]
    process, address, chain_port, _home = up
    watch = HealthWatch(address, REGISTRY)
    overall = grpc.insecure_channel(address)
    try:
        first = watch.wait_for(SERVING, 0)
        # kill -9 the chain; take its port before a restart can (kill the restarted one and retry if we lose),
        # so the chain stays away while a job runs
        holder = None
        while holder is None:
            victim = chain_child(process)
            victim.kill()
            victim.wait(30)
            try:
                holder = hold_port(chain_port)
            except OSError:  # the supervisor was quicker: its new chain has the port
                watch.wait_for(SERVING, watch.wait_for(NOT_SERVING, first + 1) + 1)
                first = len(watch.statuses) - 1
        down = watch.wait_for(NOT_SERVING, first + 1)
        # quantizing needs no chain: the overall health stays SERVING
        reply = health_pb2_grpc.HealthStub(overall).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == SERVING

        stub = qpb_grpc.QuantizeServiceStub(overall)
        request = qpb.QuantizeJob(source=str(models.f16), quant_types=["Q8_0"])  # the service's output dir
        job = stub.CreateQuantizeJob(qpb.CreateQuantizeJobRequest(job=request), timeout=60)
        snapshots = list(stub.WatchQuantizeJob(qpb.WatchQuantizeJobRequest(name=job.name), timeout=300))
        last = snapshots[-1]
        assert last.state == qpb.QuantizeJob.STATE_SUCCEEDED
        assert last.outputs[0].registry.state == qpb.RegistryRecord.STATE_PENDING  # the chain is still away
        holder.close()  # let the next restart bind the port

        watch.wait_for(SERVING, down + 1)
        assert chain_child(process).pid != victim.pid
        deadline = time.monotonic() + 120  # a bound on "not hung", far above the 1 s retry period
        while True:
            entry = stub.GetQuantizeJob(qpb.GetQuantizeJobRequest(name=job.name), timeout=30).outputs[0].registry
            if entry.state == qpb.RegistryRecord.STATE_REGISTERED or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert entry.state == qpb.RegistryRecord.STATE_REGISTERED, entry
        assert entry.tx_hash.startswith("0x")
    finally:
        watch.close()
        overall.close()
