"""docker-compose.yml runs the commands the tests prove: start each service's command as compose would.

There is no Docker engine here, so the test maps the compose volumes onto temporary directories and
runs the service's `command`, `environment` and `healthcheck` exactly as written.
"""

from __future__ import annotations

import os
import signal
import subprocess

import grpc
import yaml
from conftest import REPO, Models, free_port, wait_for_job, wait_serving

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc


def test_quantize_service_runs_as_composed(models: Models, tmp_path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["quantize"]
    mounts = {"/data": tmp_path / "data", "/models": models.root}

    def mapped(value: str) -> str:
        for inside, outside in mounts.items():
            value = value.replace(inside, str(outside))
        return value

    port = free_port()
    command = [str(c) for c in service["command"]]
    assert command[:3] == ["quantledger", "serve", "quantize"]
    command[command.index("--port") + 1] = str(port)  # compose publishes 50051; the test takes a free one
    env = dict(os.environ)
    env.update({k: mapped(str(v)) for k, v in service["environment"].items()})
    (tmp_path / "data").mkdir()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        health = [mapped(str(c)).replace("50051", str(port)) for c in service["healthcheck"]["test"][1:]]
        assert subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            job = stub.CreateQuantizeJob(
                pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_0"]))
            )
            final = wait_for_job(stub, job.name)
        assert final.state == pb.QuantizeJob.STATE_SUCCEEDED
        assert final.outputs[0].path.startswith(str(tmp_path / "data"))  # outputs land in the data volume
    finally:
        process.send_signal(getattr(signal, service.get("stop_signal", "SIGTERM")))
        code = process.wait(timeout=30)
        log.close()
        assert code == 0, (tmp_path / "server.log").read_text()
