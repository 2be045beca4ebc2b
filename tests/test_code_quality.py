"""House style is checked, not hoped for: ruff (lint + format) and mypy --strict on the package."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint_and_format() -> None:
    paths = ["services", "tests", "bench", "protos/generate.py"]
    lint = run("ruff", "check", *paths)
    assert lint.returncode == 0, lint.stdout
    fmt = run("ruff", "format", "--check", *paths)
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_on_the_package() -> None:
    typed = run("mypy")
    assert typed.returncode == 0, typed.stdout


def test_every_bench_script_starts() -> None:
    """Each bench script imports and parses its arguments from its own folder, as its docs run it (a script
    named after a stdlib module, such as bench/http.py once was, shadows it for every other script)."""
    scripts = sorted((REPO / "bench").glob("*.py"))
    assert scripts
    for script in scripts:
        assert script.stem not in sys.stdlib_module_names, script.name
        started = subprocess.run(
            [sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0 and "usage" in started.stdout, (script.name, started.stderr[-2000:])
