"""docker-compose.yml runs the commands the tests prove: start each service's command as compose would.

There is no Docker engine here, so the test maps the compose volumes onto temporary directories, the
service host names onto 127.0.0.1 and the published ports onto free ones, and runs every service's
`command`, `environment` and `healthcheck` exactly as written (the chain's npx command from tests/node,
where `npm install` put @foundry-rs/anvil).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
import yaml
from conftest import REPO, Models, free_port, wait_for_job, wait_serving
from servers import _free_port

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc
from quantledger.v1 import recommend_service_pb2 as mpb
from quantledger.v1 import recommend_service_pb2_grpc as mpb_grpc
from quantledger.v1 import registry_service_pb2 as rpb
from quantledger.v1 import registry_service_pb2_grpc as rpb_grpc
from registry_client.client import RegistryClient
from registry_client.errors import RegistryUnavailable

pytestmark = [pytest.mark.chain, pytest.mark.node]


class Compose:
    """The compose file's services as local processes."""

    def __init__(self, tmp_path, models: Models) -> None:  # type: ignore[no-untyped-def]
        self.spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
        self.tmp = tmp_path
        self.ports = {
            "8545": str(free_port()),
            "50051": str(free_port()),
            "50052": str(free_port()),
            "50053": str(free_port()),
            "8080": str(free_port()),  # the HTTP/JSON API of each service
            "8081": str(free_port()),
            "8082": str(free_port()),
            # the distributed profile: Temporal, the frontend; SeaweedFS's ports (each with its gRPC port
            # at + 10000, so those must be free too)
            "7233": str(free_port()),
            "7243": str(free_port()),
            "7244": str(free_port()),
            "7245": str(free_port()),
            "50061": str(free_port()),
            "8083": str(free_port()),
            **{p: str(_free_port(also_plus=10000)) for p in ("8333", "9333", "9340", "8888", "7333", "23646")},
            "9327": str(free_port()),
        }
        self.mounts = {
            "/data": tmp_path / "data",
            "/models": models.root,
            "/chain": tmp_path / "chain",
            "/temporal": tmp_path / "temporal",
            "/s3": tmp_path / "s3",
            "/scratch2": tmp_path / "scratch2",
            "/scratch": tmp_path / "scratch",
            "/etc/quantledger/s3.json": REPO / "deploy" / "seaweedfs-s3.json",
        }
        for directory in ("data", "chain", "temporal", "s3"):
            (tmp_path / directory).mkdir()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def mapped(self, value: str) -> str:
        for host in ("chain", "s3", "temporal"):  # the compose network's host names
            value = value.replace(f"http://{host}:", "http://127.0.0.1:").replace(f"{host}:7233", "127.0.0.1:7233")
        flag, equals, value = value.rpartition("=") if value.startswith("-") else ("", "", value)  # -dir=/s3
        for inside, outside in self.mounts.items():
            parts = value.split(":")  # a path, or a colon-separated list of paths, or anything else
            value = ":".join(
                str(outside) + p[len(inside) :] if p == inside or p.startswith(inside + "/") else p for p in parts
            )
        value = flag + equals + value
        # every published port at once, whole numbers only (a free port may contain another's digits)
        ports = re.compile(r"(?<!\d)(" + "|".join(self.ports) + r")(?!\d)")
        return ports.sub(lambda match: self.ports[match.group(1)], value)

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: self.mapped(str(v)) for k, v in (self.spec[name].get("environment") or {}).items()})
        return env

    def start(self, name: str, cwd: str | None = None) -> subprocess.Popen[bytes]:
        command = [self.mapped(str(c)) for c in self.spec[name]["command"]]
        with open(self.tmp / f"{name}.log", "wb") as log:
            # its own process group: npx and anvil's npm wrapper exit before the anvil binary they started
            process = subprocess.Popen(
                command, env=self.env(name), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        self.processes[name] = process
        return process

    def healthy(self, name: str) -> bool:
        check = [self.mapped(str(c)) for c in self.spec[name]["healthcheck"]["test"][1:]]
        return subprocess.run(check, env=self.env(name), capture_output=True, timeout=60).returncode == 0

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name, process in reversed(self.processes.items()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, getattr(signal, self.spec[name].get("stop_signal", "SIGTERM")))
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = -9
            deadline = time.monotonic() + 30  # and wait for the whole group (anvil writes its state on exit)
            while time.monotonic() < deadline:
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        return codes

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def compose(tmp_path, models: Models) -> Iterator[Compose]:  # type: ignore[no-untyped-def]
    running = Compose(tmp_path, models)
    yield running
    running.stop_all()


def test_the_composed_services_quantize_and_register_on_anvil(compose: Compose, models: Models) -> None:
    chain = compose.spec["chain"]
    assert chain["command"][:3] == ["npx", "--yes", "@foundry-rs/anvil@1.7.1"] and "--state" in chain["command"]
    compose.start("chain", cwd=str(REPO / "tests" / "node"))
    url = f"http://127.0.0.1:{compose.ports['8545']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            RegistryClient.web3_for(url, timeout=2)
            break
        except RegistryUnavailable:
            assert time.monotonic() < deadline, compose.log("chain")
            time.sleep(0.3)
    assert compose.healthy("chain")

    quantize = compose.spec["quantize"]
    assert quantize["command"][:3] == ["quantledger", "serve", "quantize"]
    compose.start("quantize")
    wait_serving(f"127.0.0.1:{compose.ports['50051']}", compose.processes["quantize"])
    assert compose.healthy("quantize")
    assert compose.spec["registry"]["command"][:3] == ["quantledger", "serve", "registry"]
    compose.start("registry")
    wait_serving(f"127.0.0.1:{compose.ports['50052']}", compose.processes["registry"])
    assert compose.healthy("registry"), compose.log("registry")
    assert compose.spec["recommend"]["command"][:3] == ["quantledger", "serve", "recommend"]
    compose.start("recommend")
    wait_serving(f"127.0.0.1:{compose.ports['50053']}", compose.processes["recommend"])
    assert compose.healthy("recommend"), compose.log("recommend")

    with grpc.insecure_channel(f"127.0.0.1:{compose.ports['50051']}") as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        job = stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_0"]))
        )
        final = wait_for_job(stub, job.name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED
    output = final.outputs[0]
    assert output.path.startswith(str(compose.tmp / "data"))  # outputs land in the data volume
    assert output.registry.state == pb.RegistryRecord.STATE_REGISTERED and output.registry.chain_id == 31337
    with grpc.insecure_channel(f"127.0.0.1:{compose.ports['50052']}") as channel:
        answer = rpb_grpc.RegistryServiceStub(channel).VerifyDigest(
            rpb.VerifyDigestRequest(file_sha256=output.sha256, size_bytes=output.size_bytes)
        )
    assert answer.verdict == rpb.VerifyDigestResponse.VERDICT_VALID
    assert [r.attester for r in answer.valid_records] == [output.registry.attester]
    with grpc.insecure_channel(f"127.0.0.1:{compose.ports['50053']}") as channel:  # the same file, as a model
        advice = mpb_grpc.RecommendServiceStub(channel).Recommend(
            mpb.RecommendRequest(
                model=mpb.ModelSpec(registry_file=output.sha256), hardware=mpb.Hardware(tier="laptop"), max_options=50
            )
        )
    q4_0 = next(o for o in advice.options if o.quant_type == "Q4_0")
    assert advice.exact_sizes and q4_0.quality.source == "measured"

    codes = compose.stop_all()
    assert codes["quantize"] == 0 and codes["registry"] == 0, compose.log("quantize") + compose.log("registry")
    assert codes["recommend"] == 0, compose.log("recommend")
    # anvil dumped its state into the chain volume: a restarted chain still holds the record
    with contextlib.suppress(KeyError):
        del compose.processes["chain"], compose.processes["quantize"], compose.processes["registry"]
        del compose.processes["recommend"]
    assert (compose.tmp / "chain" / "state.json").stat().st_size > 0
    compose.start("chain", cwd=str(REPO / "tests" / "node"))
    deadline = time.monotonic() + 60
    while True:
        try:
            w3 = RegistryClient.web3_for(url, timeout=2)
            break
        except RegistryUnavailable:
            assert time.monotonic() < deadline, compose.log("chain")
            time.sleep(0.3)
    reader = RegistryClient(w3, output.registry.contract)
    assert reader.get(output.sha256, output.registry.attester).quant_type == "Q4_0"


@pytest.mark.distributed
def test_the_distributed_profile_quantizes_on_its_workers_into_the_bucket(compose: Compose, models: Models) -> None:
    """Temporal, SeaweedFS, one frontend and two workers, as compose runs them (sharing the chain)."""
    for name in ("temporal", "s3", "frontend", "worker-1", "worker-2"):
        assert compose.spec[name]["profiles"] == ["distributed"]
    compose.start("chain", cwd=str(REPO / "tests" / "node"))
    compose.start("temporal")
    compose.start("s3")
    for name in ("chain", "temporal", "s3"):
        deadline = time.monotonic() + 90
        while not compose.healthy(name):
            assert compose.processes[name].poll() is None and time.monotonic() < deadline, compose.log(name)
            time.sleep(0.5)
    compose.start("frontend")
    wait_serving(f"127.0.0.1:{compose.ports['50061']}", compose.processes["frontend"])
    assert compose.healthy("frontend"), compose.log("frontend")
    for name in ("worker-1", "worker-2"):
        compose.start(name)
    with grpc.insecure_channel(f"127.0.0.1:{compose.ports['50061']}") as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        job = stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q8_0", "Q4_0"]))
        )
        final = wait_for_job(stub, job.name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    for output in final.outputs:
        assert output.path.startswith("s3://quantledger/artifacts/jobs/")
        assert output.registry.state == pb.RegistryRecord.STATE_REGISTERED and output.registry.chain_id == 31337
    logs = compose.log("worker-1") + compose.log("worker-2")
    assert logs.count("quantledger worker:") == 2
    codes = compose.stop_all()
    for name in ("frontend", "worker-1", "worker-2"):
        assert codes[name] == 0, compose.log(name)
