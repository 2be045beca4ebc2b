"""Conversion speed and memory against `cp` of the same bytes.

    python bench/convert_throughput.py [--size-gb 2.0] [--runs 3] [--keep]

Writes a random-weight F16 Llama-shaped Hugging Face folder of about --size-gb (sharded safetensors, a
trained SentencePiece tokenizer), converts it to an F16 GGUF in a child process (peak RSS sampled), then
copies the same safetensors bytes with `cp`, in one run. Prints the ratio cp_time / convert_time
(target >= 0.7: conversion at least 70 % of copy speed) and the converter's peak RSS (target <= 500 MB);
with --runs N, convert and cp alternate N times and the median ratio counts. When llama.cpp's converter
is available (QUANTLEDGER_CONVERT_PYTHON, see docs/HF_PIPELINE.md), it converts the same folder too and
the bench prints its time and memory and the speed ratio of the two converters.

Neither side fsyncs in the timed part (the converter leaves durability to the conversion cache, which
fsyncs an entry before recording it); the bench then fsyncs both outputs and also prints that ratio.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from hf_models import write_causal_folder
from quantize_overhead import PeakRss

from quantledger.convert.fallback import convert_command, fallback_python, fallback_version, write_metadata_file

CONVERT = (
    "import sys; from quantledger.convert.converter import convert_hf_to_gguf; "
    "convert_hf_to_gguf(sys.argv[1], sys.argv[2])"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ql-convert-bench-"))
    try:
        hidden = 2048
        layers = max(1, round(args.size_gb * 1e9 / (2 * (4 * hidden * hidden + 3 * hidden * 5632))))
        folder = write_causal_folder(
            work / "model", "LlamaForCausalLM", hidden=hidden, ffn=5632, layers=layers, heads=16, kv_heads=16, shards=4
        )
        weights = sorted(folder.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in weights)
        print(f"model: {size / 1e9:.2f} GB of F16 safetensors in {len(weights)} shards, {layers} layers")
        subprocess.run(["cat", *map(str, weights)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        def synced(paths: list[pathlib.Path]) -> float:
            started = time.monotonic()
            for path in paths:
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            return time.monotonic() - started

        def timed(argv: list[str]) -> tuple[float, int]:
            started = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sampler = PeakRss(proc.pid)
            if proc.wait() != 0:
                raise SystemExit(f"{argv[:3]} failed")
            return time.monotonic() - started, sampler.stop()

        copy_dir = work / "copy"
        runs = []
        durable: list[float] = []  # both made durable (fsync), as the conversion cache does with its entries
        for _ in range(args.runs):
            convert_seconds, peak = timed([sys.executable, "-c", CONVERT, str(folder), str(work / "out.gguf")])
            convert_sync = synced([work / "out.gguf"])
            (work / "out.gguf").unlink()
            copy_dir.mkdir()
            cp_seconds, _ = timed(["cp", *map(str, weights), str(copy_dir)])
            cp_sync = synced(sorted(copy_dir.iterdir()))
            shutil.rmtree(copy_dir)
            runs.append((convert_seconds, cp_seconds, peak))
            durable.append((convert_seconds + convert_sync) / (cp_seconds + cp_sync))
            rate = size / convert_seconds / 1e6
            print(
                f"run {len(runs)}: quantledger convert {convert_seconds:6.2f} s ({rate:.0f} MB/s, "
                f"peak RSS {peak / 1e6:.0f} MB), cp {cp_seconds:6.2f} s: ratio {cp_seconds / convert_seconds:.2f}"
            )
        ratio = statistics.median(cp / convert for convert, cp, _ in runs)
        peak = max(p for _, _, p in runs)
        print(
            f"with both made durable (fsync after convert and after cp), median ratio: "
            f"{1 / statistics.median(durable):.2f}"
        )
        print(
            f"speed ratio convert/cp, median of {len(runs)}: {ratio:.2f}  (target >= 0.70)  "
            f"{'OK' if ratio >= 0.7 else 'UNDER'}"
        )
        print(f"peak RSS: {peak / 1e6:.0f} MB  (target <= 500 MB)  {'OK' if peak <= 500e6 else 'OVER'}")
        python = fallback_python()
        if python is None:
            print("llama.cpp's converter: not available (set QUANTLEDGER_CONVERT_PYTHON): no comparison")
        else:
            metadata = work / "metadata.json"
            write_metadata_file(metadata, {"general.name": "bench"})
            theirs, their_peak = timed(convert_command(python, folder, work / "theirs.gguf", "F16", metadata))
            ours = statistics.median(convert for convert, _, _ in runs)
            print(
                f"llama.cpp's converter ({fallback_version(python)}): {theirs:6.2f} s, peak RSS "
                f"{their_peak / 1e6:.0f} MB; quantledger is {theirs / ours:.1f}x as fast"
            )
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
