"""Conversion speed and memory against `cp` of the same bytes.

    python bench/convert_throughput.py [--size-gb 2.0] [--keep]

Writes a random-weight F16 Llama-shaped Hugging Face folder of about --size-gb (sharded safetensors, a
trained SentencePiece tokenizer), converts it to an F16 GGUF in a child process (peak RSS sampled), then
copies the same safetensors bytes with `cp`, in one run. Prints the ratio cp_time / convert_time
(target >= 0.7: conversion at least 70 % of copy speed) and the converter's peak RSS (target <= 500 MB).
llama.cpp's own converter is not compared: the fallback to it is not built yet.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from hf_models import write_causal_folder
from quantize_overhead import PeakRss

CONVERT = (
    "import sys; from quantledger.convert.converter import convert_hf_to_gguf; "
    "convert_hf_to_gguf(sys.argv[1], sys.argv[2])"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ql-convert-bench-"))
    try:
        hidden = 2048
        layers = max(1, round(args.size_gb * 1e9 / (2 * (4 * hidden * hidden + 3 * hidden * 5632))))
        folder = write_causal_folder(work / "model", "LlamaForCausalLM", hidden=hidden, ffn=5632, layers=layers,
                                     heads=16, kv_heads=16, shards=4)  # fmt: skip
        weights = sorted(folder.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in weights)
        print(f"model: {size / 1e9:.2f} GB of F16 safetensors in {len(weights)} shards, {layers} layers")
        subprocess.run(["cat", *map(str, weights)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", CONVERT, str(folder), str(work / "out.gguf")])
        sampler = PeakRss(proc.pid)
        if proc.wait() != 0:
            raise SystemExit("conversion failed")
        convert_seconds = time.monotonic() - started
        peak = sampler.stop()
        (work / "out.gguf").unlink()

        copy_dir = work / "copy"
        copy_dir.mkdir()
        started = time.monotonic()
        subprocess.run(["cp", *map(str, weights), str(copy_dir)], check=True)
        cp_seconds = time.monotonic() - started

        ratio = cp_seconds / convert_seconds
        rate = size / convert_seconds / 1e6
        print(f"quantledger convert: {convert_seconds:6.2f} s ({rate:.0f} MB/s), peak RSS {peak / 1e6:.0f} MB")
        print(f"cp of the same bytes: {cp_seconds:6.2f} s ({size / cp_seconds / 1e6:.0f} MB/s)")
        print(f"speed ratio convert/cp: {ratio:.2f}  (target >= 0.70)  {'OK' if ratio >= 0.7 else 'UNDER'}")
        print(f"peak RSS: {peak / 1e6:.0f} MB  (target <= 500 MB)  {'OK' if peak <= 500e6 else 'OVER'}")
        print("llama.cpp's own converter is not wired in (see docs/HF_PIPELINE.md): no comparison")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
