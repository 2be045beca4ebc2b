"""The committed stubs are exactly what protos/generate.py produces from the .proto files."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_generated_stubs_match_protos(tmp_path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = REPO / "services" / "quantledger" / "v1"
    generated = sorted(p.name for p in (tmp_path / "quantledger" / "v1").iterdir())
    assert generated == sorted(
        p.name for p in committed.iterdir() if p.name.endswith((".py", ".pyi")) and p.name != "__init__.py"
    )
    for name in generated:
        fresh = (tmp_path / "quantledger" / "v1" / name).read_text()
        assert fresh == (committed / name).read_text(), f"{name} is stale: run python protos/generate.py"


def test_protos_pass_buf_lint_and_format(tmp_path) -> None:
    """buf STANDARD lint (with the two AIP exceptions in protos/buf.yaml) and buf format, offline."""
    import pathlib
    import shutil

    import google.rpc.status_pb2
    import yaml

    buf = REPO / "tests" / "node" / "node_modules" / ".bin" / "buf"
    assert buf.exists(), "run: npm install --prefix tests/node"
    shutil.copytree(REPO / "protos" / "quantledger", tmp_path / "api" / "quantledger")
    googleapis = tmp_path / "third_party" / "google" / "rpc"
    googleapis.mkdir(parents=True)
    shutil.copy(pathlib.Path(google.rpc.status_pb2.__file__).with_name("status.proto"), googleapis)
    # google.api.http (AIP-127): annotations.proto and http.proto, from googleapis-common-protos
    annotations = tmp_path / "third_party" / "google" / "api"
    annotations.mkdir(parents=True)
    for name in ("annotations.proto", "http.proto"):
        shutil.copy(pathlib.Path(google.rpc.status_pb2.__file__).parents[1] / "api" / name, annotations)
    lint = yaml.safe_load((REPO / "protos" / "buf.yaml").read_text())["lint"]
    workspace = {"version": "v2", "modules": [{"path": "api", "lint": lint}, {"path": "third_party"}]}
    (tmp_path / "buf.yaml").write_text(yaml.safe_dump(workspace))
    linted = subprocess.run([str(buf), "lint", "api"], cwd=tmp_path, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    formatted = subprocess.run(
        [str(buf), "format", "-d", "--exit-code", "api"], cwd=tmp_path, capture_output=True, text=True
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
