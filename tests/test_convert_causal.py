"""Random-weight Llama / Qwen2 / Qwen3 folders with trained tokenizers convert, quantize, load and generate."""

from __future__ import annotations

import ctypes
import pathlib

import llama_cpp
import pytest
from hf_models import write_causal_folder

from quantledger.convert.converter import convert_hf_to_gguf

STRINGS = [
    "Hello world",
    "The lighthouse keeper kept two logbooks.",
    "  two leading spaces, and punctuation!?",
    "numbers: 3.14159, 2,718 and 1854",
    "unicode: café naïve — «quotes» 東京",
    "def f(x):\n    return x * 2\n",
]


def own_tokenization(folder: pathlib.Path, text: str) -> list[int]:
    if (folder / "tokenizer.model").is_file():
        import sentencepiece as spm

        return list(spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text))
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize(
    ("architecture", "dtype", "shards"),
    [("LlamaForCausalLM", "F16", 2), ("Qwen2ForCausalLM", "BF16", 1), ("Qwen3ForCausalLM", "F16", 1)],
)
def test_causal_folders_convert_quantize_load_and_generate(
    tmp_path: pathlib.Path, architecture: str, dtype: str, shards: int
) -> None:
    folder = write_causal_folder(tmp_path / architecture, architecture, dtype=dtype, shards=shards)
    result = convert_hf_to_gguf(folder, tmp_path / "f16.gguf", metadata={"general.name": architecture})
    llm = llama_cpp.Llama(model_path=str(result.path), n_ctx=64, verbose=False)
    for text in STRINGS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == own_tokenization(folder, text), text
    del llm
    quantized = tmp_path / "q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(result.path).encode(), str(quantized).encode(), ctypes.byref(params)) == 0
    llm = llama_cpp.Llama(model_path=str(quantized), n_ctx=64, verbose=False)
    completion = llm.create_completion("The river", max_tokens=6, temperature=0.0)
    assert completion["usage"]["completion_tokens"] >= 1
