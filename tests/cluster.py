"""A distributed deployment on one machine for the tests and bench/scale_out.py: an embedded chain with the
registry deployed once, frontends (`serve quantize --backend temporal`) and workers (`quantledger worker`)
on a Temporal dev server and a SeaweedFS bucket (tests/servers.py), all on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
from conftest import Models, RunningServer, free_port, start_server
from servers import S3Server, TemporalServer

PREFIX = "ql-test"


@dataclass
class Cluster:
    tmp: object
    models: Models
    temporal: TemporalServer
    s3: S3Server
    chain_url: str
    chain_key_file: str
    registry_address: str
    frontends: list[RunningServer] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def artifacts(self) -> str:
        return f"s3://{self.s3.bucket}/{PREFIX}"

    def env(self, home: object) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.s3.env)
        env.update(
            QUANTLEDGER_HOME=str(home),
            QUANTLEDGER_ALLOWED_ROOTS=str(self.models.root),
            QUANTLEDGER_LOG_LEVEL="INFO",
            QUANTLEDGER_HEARTBEAT_TIMEOUT_SECONDS="3",
            QUANTLEDGER_REGISTRY_ADDRESS=self.registry_address,
            QUANTLEDGER_CHAIN_KEY_FILE=self.chain_key_file,
        )
        return env

    def start_frontend(self, name: str, services: tuple[str, ...] = ("quantize",)) -> RunningServer:
        home = self.tmp / name  # type: ignore[operator]
        port = free_port()
        argv = [
            sys.executable, "-m", "quantledger.cli.main", "serve", *services, "--port", str(port),
            "--chain-url", self.chain_url,
            "--http-port", "0", "--backend", "temporal", "--temporal", self.temporal.address,
            "--artifacts", self.artifacts,
        ]  # fmt: skip
        env = self.env(home)
        env.pop("QUANTLEDGER_HOME")
        extra = {k: v for k, v in env.items() if k.startswith(("AWS_", "QUANTLEDGER_"))}
        server = start_server(home, [self.models.root], port=port, command=argv, extra_env=extra)
        self.frontends.append(server)
        return server

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        home = self.tmp / name  # type: ignore[operator]
        home.mkdir(parents=True, exist_ok=True)
        log = home / "worker.log"
        argv = [
            sys.executable, "-m", "quantledger.cli.main", "worker", "--temporal", self.temporal.address,
            "--artifacts", self.artifacts, "--chain-url", self.chain_url, "--max-parallel", "1",
        ]  # fmt: skip
        with open(log, "ab") as sink:
            process = subprocess.Popen(argv, env=self.env(home), stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while b"quantledger worker:" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"worker did not start:\n{log.read_text()}"
            time.sleep(0.1)
        self.workers.append(process)
        return process

    def s3_client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint,
            aws_access_key_id=self.s3.access_key,
            aws_secret_access_key=self.s3.secret_key,
            region_name="us-east-1",
        )

    def objects(self, prefix: str) -> dict[str, dict]:  # type: ignore[type-arg]
        listed = self.s3_client().list_objects_v2(Bucket=self.s3.bucket, Prefix=f"{PREFIX}/{prefix}")
        return {o["Key"]: o for o in listed.get("Contents", [])}

    def read_object(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return self.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _start_chain(home: object) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, QUANTLEDGER_HOME=str(home))
    argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "chain", "--chain-port", str(port), "--json"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline()
    process.stdout.close()
    return process, json.loads(line)["url"]


@contextlib.contextmanager
def running_cluster(tmp: pathlib.Path, models: Models, temporal: TemporalServer, s3: S3Server) -> Iterator[Cluster]:
    """A chain with the registry deployed (every worker registers on it); frontends and workers are
    started by the caller (``start_frontend``, ``start_worker``) and all stopped at the end."""
    chain_home = tmp / "chain"
    chain, url = _start_chain(chain_home)
    from quantledger.config import Settings
    from quantledger.registry.wiring import make_registrar

    registrar = make_registrar(Settings.from_env(home=chain_home, chain_url=url))
    assert registrar is not None
    address = registrar.client().address
    made = Cluster(tmp, models, temporal, s3, url, str(chain_home / "keys" / "admin.key"), address)
    made.processes.append(chain)
    try:
        yield made
    finally:
        for frontend in made.frontends:
            frontend.stop()
        for process in [*made.workers, *made.processes]:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in [*made.workers, *made.processes]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            if process.poll() is None:
                process.kill()
