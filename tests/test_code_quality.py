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
