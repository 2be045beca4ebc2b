"""Shared helpers of the hostile-input tests: a health probe that runs while a hostile call is made,
and a small real file system to fill up.

``with health_probe(address) as probe: <hostile call>`` checks the server's health every 50 ms on its
own channel during the call; afterwards ``probe.assert_answered()`` fails the test when any probe went
unanswered or took longer than the bound: one misbehaving client must never stop the server answering
the others.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROBE_INTERVAL = 0.05
SLOWEST_ALLOWED = 2.0  # seconds for one health check: generous for 2 busy cores, far below a hang


@dataclass
class HealthProbe:
    address: str
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def assert_answered(self) -> None:
        assert self.answered > 0, "the health probe never got an answer"
        assert not self.failures, f"health went unanswered during the hostile call: {self.failures[:3]}"
        assert self.slowest < SLOWEST_ALLOWED, f"a health check took {self.slowest:.2f} s during the hostile call"


@contextlib.contextmanager
def health_probe(address: str, service: str = "") -> Iterator[HealthProbe]:
    probe = HealthProbe(address)
    stop = threading.Event()

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=SLOWEST_ALLOWED * 2)
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        probe.failures.append(f"status {reply.status}")
                    probe.answered += 1
                except grpc.RpcError as exc:
                    probe.failures.append(f"{exc.code()}: {exc.details()}")
                probe.slowest = max(probe.slowest, time.monotonic() - started)
                stop.wait(PROBE_INTERVAL)

    thread = threading.Thread(target=run, name="health-probe", daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def small_file_system(path: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """A real tmpfs of ``size`` (such as "2m") mounted at ``path``, to fill up; the test is skipped where
    mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: pathlib.Path) -> pathlib.Path:
    """Fill the file system of ``directory`` to the last byte; the file that did it (unlink it to free the space)."""
    handle_fd, name = tempfile.mkstemp(prefix="filler-", dir=directory)
    with open(handle_fd, "wb", buffering=0) as handle:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * block):
                    pass
    return pathlib.Path(name)


@contextlib.contextmanager
def dropping_listener() -> Iterator[tuple[int, list[int]]]:
    """A loopback port whose server accepts every connection and closes it at once: (port, a list that
    grows by one per connection accepted)."""
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def drop_every_connection() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                accepted.append(1)
                connection.close()

        threading.Thread(target=drop_every_connection, daemon=True).start()
        yield listener.getsockname()[1], accepted
