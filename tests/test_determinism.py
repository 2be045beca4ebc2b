"""What independent reproduction rests on (docs/REPRODUCE.md): llama.cpp writes the same bytes for the same
inputs whatever the thread count, for every type of the catalogue, and the computed importance matrix is
the same too."""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
from conftest import Models

from quantledger.gguf.reader import read_gguf_header
from quantledger.quantize.catalogue import catalogue
from quantledger.quantize.imatrix import ImatrixCArray, load_imatrix, write_imatrix_gguf


def quantize(source: pathlib.Path, out: pathlib.Path, ftype: int, threads: int, imatrix: ImatrixCArray | None) -> str:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    if imatrix is not None:
        params.imatrix = imatrix.pointer
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def imatrix(models: Models, tmp_path_factory: pytest.TempPathFactory) -> ImatrixCArray:
    header = read_gguf_header(models.f16)
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("determinism") / "imatrix.gguf"
    entries = {t.name: np.exp(rng.standard_normal(t.shape[0])) for t in header.tensors if len(t.shape) == 2}
    write_imatrix_gguf(path, entries, counts=8)
    return ImatrixCArray(load_imatrix(path))


def test_every_catalogue_type_writes_the_same_bytes_with_one_and_two_threads(
    models: Models, imatrix: ImatrixCArray, tmp_path
) -> None:
    differing = []
    for quant_type in catalogue():
        matrix = imatrix if quant_type.requires_imatrix or quant_type.typical_bits_per_weight < 5 else None
        one = quantize(models.f16, tmp_path / "one.gguf", quant_type.file_type, 1, matrix)
        two = quantize(models.f16, tmp_path / "two.gguf", quant_type.file_type, 2, matrix)
        if one != two:
            differing.append(quant_type.name)
    assert len(catalogue()) >= 20 and differing == []


def test_the_computed_importance_matrix_does_not_depend_on_threads(models: Models, tmp_path) -> None:
    digests = set()
    env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path / "home")}
    for threads in (1, 2):
        out = tmp_path / f"imatrix-{threads}.gguf"
        argv = ["imatrix", str(models.f16), "--chunks", "2", "--ctx", "256", "--threads", str(threads), "-o", str(out)]
        made = subprocess.run(
            [sys.executable, "-m", "quantledger.cli.main", *argv], capture_output=True, text=True, timeout=300, env=env
        )
        assert made.returncode == 0, made.stderr
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
