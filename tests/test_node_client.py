"""Another language: a Node.js client built from protos/ alone drives the service."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess

import google.rpc.status_pb2
import grpc_tools
import pytest
from conftest import REPO, Models, RunningServer

NODE_DIR = REPO / "tests" / "node"


@pytest.mark.node
def test_node_client_creates_watches_and_reads_outputs(server: RunningServer, models: Models) -> None:
    node = shutil.which("node")
    assert node, "Node.js is required (see .ci/run)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run: npm install --prefix tests/node"
    includes = [
        str(pathlib.Path(grpc_tools.__file__).parent / "_proto"),  # google/protobuf/*.proto
        str(pathlib.Path(google.rpc.status_pb2.__file__).parents[2]),  # google/rpc/status.proto
    ]
    out = models.root / "node-out"
    done = subprocess.run(
        [node, str(NODE_DIR / "quantize_client.js"), server.address, str(models.f16), str(out), *includes],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["snapshots"] >= 2 and report["last_state"] == "STATE_SUCCEEDED"
    outputs = report["final"]["outputs"]
    assert [o["quant_type"] for o in outputs] == ["Q4_K_M", "Q8_0"]
    for output in outputs:
        data = pathlib.Path(output["path"]).read_bytes()
        assert int(output["size_bytes"]) == len(data)  # int64 arrives as a string in JS
        assert output["sha256"] == hashlib.sha256(data).hexdigest()
