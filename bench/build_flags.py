"""Do llama.cpp's build flags change the bytes it writes? (docs/REPRODUCE.md, "Build flags")

    python bench/build_flags.py --other /path/to/site-packages-of-another-build [--keep]

A second build of the same llama-cpp-python release, for example without any SIMD:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF \
      -DGGML_BMI2=OFF -DGGML_SSE42=OFF" pip install --no-deps --target /tmp/llama-plain llama-cpp-python==0.3.36

1. writes a small random-weight llama GGUF (F16, 256 wide, 2 layers) and a fixed importance matrix;
2. in a child process per build (the installed one, then ``--other`` first on PYTHONPATH), quantizes it to
   every type of the catalogue (with the matrix for the types below 5 bits, as a job gives one) and computes
   an importance matrix with ``quantledger imatrix`` (2 chunks of 256 tokens of the shipped text);
3. prints each build's CPU features (llama_print_system_info) and which outputs are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import ctypes, hashlib, json, pathlib, subprocess, sys
import llama_cpp
from quantledger.quantize.catalogue import catalogue
from quantledger.quantize.imatrix import ImatrixCArray, load_imatrix
source, matrix_path, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
matrix = ImatrixCArray(load_imatrix(matrix_path))
digests = {}
for quant_type in catalogue():
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_type.file_type
    params.nthread = 2
    if quant_type.requires_imatrix or quant_type.typical_bits_per_weight < 5:
        params.imatrix = matrix.pointer
    out = work / "out.gguf"
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    digests[quant_type.name] = hashlib.sha256(out.read_bytes()).hexdigest()
computed = work / "computed.imatrix.gguf"
argv = [sys.executable, "-m", "quantledger.cli.main", "imatrix", str(source), "--chunks", "2", "--ctx", "256",
        "-o", str(computed)]
subprocess.run(argv, check=True, capture_output=True)
print(json.dumps({"system": llama_cpp.llama_print_system_info().decode().strip(), "file": llama_cpp.__file__,
                  "types": digests, "imatrix": hashlib.sha256(computed.read_bytes()).hexdigest()}))
"""


def run_build(source: pathlib.Path, matrix: pathlib.Path, work: pathlib.Path, other: str) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "QUANTLEDGER_HOME": str(work / "home")}
    if other:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (other, env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(matrix), str(work)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the build at {other or 'site-packages'} failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, help="a folder holding another build's llama_cpp package")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    import numpy as np

    from quantledger.gguf.reader import read_gguf_header
    from quantledger.quantize.imatrix import write_imatrix_gguf
    from quantledger.testing.synthetic_model import write_llama_gguf

    work = pathlib.Path(tempfile.mkdtemp(prefix="quantledger-build-flags-"))
    try:
        source = work / "tiny-f16.gguf"
        write_llama_gguf(source, n_embd=256, n_ff=512, n_layer=2, seed=1)
        rng = np.random.default_rng(3)
        matrix = work / "fixed.imatrix.gguf"
        header = read_gguf_header(source)
        write_imatrix_gguf(
            matrix,
            {t.name: np.exp(rng.standard_normal(t.shape[0])) for t in header.tensors if len(t.shape) == 2},
            counts=8,
        )
        installed = run_build(source, matrix, work / "installed", "")
        other = run_build(source, matrix, work / "other", str(pathlib.Path(args.other).resolve()))
        types_a, types_b = installed["types"], other["types"]
        assert isinstance(types_a, dict) and isinstance(types_b, dict)
        same = [name for name in types_a if types_b.get(name) == types_a[name]]
        differ = [name for name in types_a if types_b.get(name) != types_a[name]]
        print(f"installed build: {installed['system']}")
        print(f"other build:     {other['system']}")
        print(f"quantized outputs identical: {len(same)} of {len(types_a)} types")
        if differ:
            print(f"  differing: {', '.join(differ)}")
        print(f"computed importance matrix identical: {installed['imatrix'] == other['imatrix']}")
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
