"""What quantledger's Hugging Face export costs against a plain transformers + bitsandbytes script.

    python bench/hf_export.py [--size-gb 1.0] [--runs 3] [--format HF_BNB_INT8 --format HF_BNB_NF4] [--keep]

1. writes a random-weight Llama-shaped Hugging Face folder (float16 safetensors) of about --size-gb;
2. for each format, runs in turn (A B A B …) quantledger's worker (``python -m quantledger.quantize.worker``
   in its ``hf_export`` mode, as a job runs it: load with bitsandbytes on the CPU, save, copy the side
   files) and a plain script doing the same with transformers (``from_pretrained`` with the same
   ``BitsAndBytesConfig``, ``save_pretrained``), each a fresh process;
3. prints the median wall time and peak RSS (the kernel's accounting of each finished child) of both, and
   the ratios (targets: time <= 1.1, memory <= 1.2).

Needs the ``hf`` extra (``pip install 'quantledger[hf]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PLAIN = r"""
import sys, torch, transformers
source, target, kind = sys.argv[1:4]
if kind == "int8":
    config = transformers.BitsAndBytesConfig(load_in_8bit=True)
else:
    config = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float16,
    )
model = transformers.AutoModelForCausalLM.from_pretrained(
    source, dtype=torch.float16, quantization_config=config, device_map="cpu", low_cpu_mem_usage=True
)
model.save_pretrained(target, safe_serialization=True, max_shard_size="2GB")
"""


def write_model(folder: pathlib.Path, size_gb: float) -> int:
    """A Llama-shaped folder of about ``size_gb`` GB of float16 weights; returns the parameter count."""
    from safetensors.numpy import save_file

    hidden, ffn, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden
    layers = max(1, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_attention_heads": 16, "num_key_value_heads": 16,
        "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
    }  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {"model.embed_tokens.weight": weight(vocab, hidden), "lm_head.weight": weight(vocab, hidden)}
    tensors["model.norm.weight"] = np.ones(hidden, np.float16)
    for n in range(layers):
        p = f"model.layers.{n}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{p}self_attn.{name}.weight"] = weight(hidden, hidden)
        tensors[f"{p}mlp.gate_proj.weight"] = weight(ffn, hidden)
        tensors[f"{p}mlp.up_proj.weight"] = weight(ffn, hidden)
        tensors[f"{p}mlp.down_proj.weight"] = weight(hidden, ffn)
        tensors[f"{p}input_layernorm.weight"] = np.ones(hidden, np.float16)
        tensors[f"{p}post_attention_layernorm.weight"] = np.ones(hidden, np.float16)
    save_file(tensors, str(folder / "model.safetensors"))
    return sum(t.size for t in tensors.values())


def timed(argv: list[str], stdin: bytes = b"", pass_fds: tuple[int, ...] = ()) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process, from the kernel's rusage of it."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=pass_fds)
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed with exit status {process.returncode}")
    return seconds, usage.ru_maxrss * 1024


def run_quantledger(source: pathlib.Path, target: pathlib.Path, fmt: str) -> tuple[float, int]:
    read_fd, write_fd = os.pipe()
    request = {"mode": "hf_export", "folder": str(source), "format": fmt, "output": str(target)}
    argv = [sys.executable, "-m", "quantledger.quantize.worker", "--events-fd", str(write_fd)]
    try:
        result = timed(argv, json.dumps(request).encode(), (write_fd,))
    finally:
        os.close(write_fd)
        with os.fdopen(read_fd) as events:
            if '"exported"' not in events.read():
                raise SystemExit(f"the worker did not export {fmt}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--format", action="append", choices=["HF_BNB_INT8", "HF_BNB_NF4"])
    parser.add_argument("--keep", action="store_true", help="keep the model folder")
    args = parser.parse_args()
    formats = args.format or ["HF_BNB_INT8", "HF_BNB_NF4"]
    work = pathlib.Path(tempfile.mkdtemp(prefix="quantledger-bench-hf-"))
    try:
        source = work / "model"
        parameters = write_model(source, args.size_gb)
        size = (source / "model.safetensors").stat().st_size
        print(f"model: {parameters / 1e6:.0f} M parameters, {size / 1e9:.2f} GB float16; {args.runs} runs each")
        for fmt in formats:
            kind = "int8" if fmt == "HF_BNB_INT8" else "nf4"
            ours, plain = [], []
            for run in range(args.runs):
                for results, command in ((ours, "quantledger"), (plain, "plain")):
                    target = work / f"{fmt}-{command}-{run}"
                    if command == "quantledger":
                        results.append(run_quantledger(source, target, fmt))
                    else:
                        results.append(timed([sys.executable, "-c", PLAIN, str(source), str(target), kind]))
                    shutil.rmtree(target, ignore_errors=True)
            t_ours, t_plain = statistics.median(r[0] for r in ours), statistics.median(r[0] for r in plain)
            m_ours, m_plain = statistics.median(r[1] for r in ours), statistics.median(r[1] for r in plain)
            ratios = [a[0] / b[0] for a, b in zip(ours, plain, strict=True)]
            print(
                f"{fmt}: quantledger {t_ours:.1f} s, {m_ours / 2**20:.0f} MiB peak; plain transformers "
                f"{t_plain:.1f} s, {m_plain / 2**20:.0f} MiB peak; time ratio {statistics.median(ratios):.3f} "
                f"(pairs {min(ratios):.3f}-{max(ratios):.3f}, target <= 1.1), memory ratio {m_ours / m_plain:.3f} "
                "(target <= 1.2)"
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
