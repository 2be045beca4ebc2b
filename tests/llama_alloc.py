"""Load a GGUF through llama-cpp-python and print, as JSON, what llama.cpp says it allocated.

    python tests/llama_alloc.py MODEL N_CTX N_UBATCH FLASH(0|1) KV_TYPE [SWA_FULL(0|1)]

Run in a subprocess per configuration: llama.cpp logs its buffers once per model and context. The
model is read without mmap, so the weights are llama.cpp's own buffers (CPU, and CPU_REPACK for the
tensors it re-lays out for its AVX2 kernels); with mmap it would report the mapped span of the file
beside the repacked copies.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys

import llama_cpp

KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
MIB = 1 << 20
_LINES: list[str] = []


@llama_cpp.llama_log_callback
def _collect(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    _LINES.append(text.decode(errors="replace"))


def _mib(pattern: str, text: str) -> float:
    found = [float(v) for v in re.findall(pattern, text)]
    return sum(found) * MIB


def main() -> None:
    path, n_ctx, n_ubatch, flash, kv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
    swa_full = len(sys.argv) > 6 and sys.argv[6] == "1"
    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    model = llama_cpp.Llama(
        path,
        n_ctx=n_ctx,
        n_batch=max(n_ubatch, 512),
        n_ubatch=n_ubatch,
        flash_attn=flash,
        type_k=KV_TYPES[kv],
        type_v=KV_TYPES[kv],
        swa_full=swa_full,
        use_mmap=False,
        n_threads=1,
        verbose=True,
    )
    text = "".join(_LINES)
    cells = re.search(r"llama_kv_cache: size =[^(]*\(\s*(\d+) cells", text)
    print(
        json.dumps(
            {
                "weights": _mib(r"CPU(?:_Mapped|_REPACK)? model buffer size =\s*([\d.]+) MiB", text),
                "kv": _mib(r"llama_kv_cache: size =\s*([\d.]+) MiB", text),
                "compute": _mib(r"CPU compute buffer size =\s*([\d.]+) MiB", text),
                "output": _mib(r"CPU\s+output buffer size =\s*([\d.]+) MiB", text),
                "cells": int(cells[1]) if cells else 0,
            }
        )
    )
    del model


if __name__ == "__main__":
    main()
