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
