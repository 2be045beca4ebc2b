"""Hugging Face variants the issue names: Mistral, a chat template and special tokens carried over, F32 / BF16 /
Q8_0 intermediates that llama.cpp loads and quantizes, and a job evaluated on the user's own text."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import llama_cpp
import pytest
from hf_models import write_causal_folder

from quantledger.convert.converter import convert_hf_to_gguf
from quantledger.gguf.reader import read_gguf_header

CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"


def mistral_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    """A Mistral-style checkpoint: Llama weights and SentencePiece, MistralForCausalLM in config.json."""
    folder = write_causal_folder(tmp_path / "mistral", "LlamaForCausalLM")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=None, bos_token_id=1, eos_token_id=2
    )
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                        "add_eos_token": False, "chat_template": CHAT_TEMPLATE}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def quantize(source: pathlib.Path, target: pathlib.Path, ftype: int) -> int:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    return int(llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)))


def test_mistral_converts_with_its_chat_template_and_special_tokens(tmp_path: pathlib.Path) -> None:
    folder = mistral_folder(tmp_path)
    result = convert_hf_to_gguf(folder, tmp_path / "mistral-f16.gguf", metadata={"general.name": "tiny-mistral"})
    header = read_gguf_header(result.path)
    assert header.metadata["general.architecture"] == "llama"
    assert header.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert header.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert header.metadata["tokenizer.ggml.eos_token_id"] == 2
    assert header.metadata["tokenizer.ggml.add_bos_token"] is True
    llm = llama_cpp.Llama(model_path=str(result.path), n_ctx=64, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE  # llama.cpp reads it back
    assert llm.token_bos() == 1 and llm.token_eos() == 2
    assert llm.tokenize(b"Hello", add_bos=True)[0] == 1
    assert llm.create_completion("The river", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(("out_type", "file_type"), [("F32", 0), ("BF16", 32), ("Q8_0", 7)])
def test_every_intermediate_type_loads_and_quantizes(tmp_path: pathlib.Path, out_type: str, file_type: int) -> None:
    folder = write_causal_folder(tmp_path / "llama", "LlamaForCausalLM", dtype="BF16")
    result = convert_hf_to_gguf(folder, tmp_path / f"llama-{out_type}.gguf", out_type=out_type)
    assert read_gguf_header(result.path).file_type == file_type
    llm = llama_cpp.Llama(model_path=str(result.path), n_ctx=64, verbose=False)
    assert llm.create_completion("Once", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] >= 1
    del llm
    if out_type != "Q8_0":  # an F32 or BF16 intermediate is a full-precision source for every type
        target = tmp_path / "q4_k_m.gguf"
        assert quantize(result.path, target, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M) == 0
        assert read_gguf_header(target).file_type == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M


@pytest.mark.slow
def test_a_job_evaluates_on_the_users_own_text(tmp_path: pathlib.Path) -> None:
    folder = write_causal_folder(tmp_path / "qwen", "Qwen2ForCausalLM")
    text = tmp_path / "my-eval.txt"
    text.write_text("A sailor's log of the northern passage. " * 60)
    home, out = tmp_path / "home", tmp_path / "out"
    env = {**os.environ, "QUANTLEDGER_HOME": str(home), "QUANTLEDGER_ALLOWED_ROOTS": str(tmp_path)}

    def run(*extra: str) -> dict:  # each run writes its own directory: an earlier output is never overwritten
        target = out / f"run-{len(list(out.glob('run-*'))) if out.exists() else 0}"
        target.mkdir(parents=True)
        argv = [
            sys.executable,
            "-m",
            "quantledger.cli.main",
            "quantize",
            str(folder),
            "-q",
            "Q4_0",
            "--out",
            str(target),
            "--json",
            *extra,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["outputs"][0]["quality"]

    own = run("--eval-text", str(text))
    digest = hashlib.sha256(text.read_text().encode()).hexdigest()[:16]
    assert own["eval_set"] == f"my-eval.txt:{digest}"
    default = run()
    assert default["eval_set"].startswith("quantledger-eval-text:")
    assert own["perplexity_reference"] != default["perplexity_reference"]  # measured on another text
    too_short = tmp_path / "short.txt"
    too_short.write_text("too short")
    # the evaluation is an optional stage: a text too short to evaluate fails it, not the job, and the
    # output is kept with the reason in its quality report
    unevaluated = run("--eval-text", str(too_short))
    assert unevaluated["error"]["code"] == 3, unevaluated  # INVALID_ARGUMENT
    assert "tokens" in unevaluated["error"]["message"]
    assert "perplexity_reference" not in unevaluated and "mean_kl_divergence" not in unevaluated
