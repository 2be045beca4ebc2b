"""Small llama-shaped GGUF models with random weights, for tests, the demo and benchmarks.

The files are complete llama.cpp models: llama architecture metadata, a SentencePiece-style
("llama") tokenizer with byte fallback tokens, and every tensor llama.cpp's llama loader expects.
Weights are small normal random numbers (standard deviation 0.02), so evaluation gives finite logits.

Models are written tensor by tensor and each tensor in slabs of rows, so writing a gigabyte model
keeps only a few tens of megabytes in memory.
"""

from __future__ import annotations

import itertools
import math
import os
import string
from collections.abc import Iterator
from typing import BinaryIO

import llama_cpp
import numpy as np

from quantledger.gguf.bf16 import float32_to_bf16_bits
from quantledger.gguf.format import FLOAT32 as _FLOAT32
from quantledger.gguf.format import INT32 as _INT32
from quantledger.gguf.q8_0 import quantize_q8_0
from quantledger.gguf.types import ggml_types, ggml_types_by_name
from quantledger.gguf.writer import GgufMetadata, TensorLayout, plan_tensors, write_gguf

_SLAB_ELEMENTS = 1 << 22  # random values generated at a time (16 MiB as float32)

# dtype name -> (ggml type id from libggml, general.file_type from llama.cpp's LLAMA_FTYPE_*)
_FILE_TYPES = {
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}
_DTYPES: dict[str, tuple[int, int]] = {
    name: (ggml_types_by_name()[name].id, int(file_type)) for name, file_type in _FILE_TYPES.items()
}
_F32, _F16, _BF16 = (_DTYPES[name][0] for name in ("F32", "F16", "BF16"))

# SentencePiece token types
_NORMAL = 1
_UNKNOWN = 2
_CONTROL = 3
_BYTE = 6

_WORD_START = "\u2581"  # "▁", SentencePiece's word-start marker
_COMMON_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "was",
    "with",
    "as",
    "be",
    "at",
    "by",
    "this",
    "are",
    "from",
    "or",
    "have",
    "an",
    "not",
    "but",
    "you",
    "all",
    "can",
    "had",
    "her",
    "one",
    "there",
    "we",
    "his",
    "they",
    "which",
    "were",
    "their",
    "will",
    "so",
    "if",
    "what",
    "about",
    "when",
)


_Vector = np.ndarray[tuple[int], np.dtype[np.generic]]


def _pieces() -> Iterator[str]:
    """Word pieces in priority order: common words, single characters, then letter combinations."""
    yield _WORD_START
    for word in _COMMON_WORDS:
        yield _WORD_START + word
    for char in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        yield char
        yield _WORD_START + char
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            piece = "".join(letters)
            yield piece
            yield _WORD_START + piece


def _vocabulary(n_vocab: int) -> tuple[list[str], _Vector, _Vector]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    pieces = _pieces()
    while len(tokens) < n_vocab:
        piece = next(pieces)
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(_NORMAL)
        scores.append(-float(len(scores)))
    return tokens, np.asarray(scores, dtype="<f4"), np.asarray(types, dtype="<i4")


def _tensor_shapes(
    n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int, n_vocab: int, architecture: str = "llama"
) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in ggml order (ne0, the row length, first). Gemma 2 ties the output layer
    to the token embeddings and adds a norm after attention and after the feed-forward block."""
    n_embd_kv = n_embd // n_head * n_head_kv
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (n_embd, n_vocab)),
        ("output_norm.weight", (n_embd,)),
    ]
    if architecture == "llama":
        shapes.append(("output.weight", (n_embd, n_vocab)))
    for i in range(n_layer):
        if architecture == "gemma2":
            shapes += [(f"blk.{i}.post_attention_norm.weight", (n_embd,)), (f"blk.{i}.post_ffw_norm.weight", (n_embd,))]
        shapes += [
            (f"blk.{i}.attn_norm.weight", (n_embd,)),
            (f"blk.{i}.attn_q.weight", (n_embd, n_embd)),
            (f"blk.{i}.attn_k.weight", (n_embd, n_embd_kv)),
            (f"blk.{i}.attn_v.weight", (n_embd, n_embd_kv)),
            (f"blk.{i}.attn_output.weight", (n_embd, n_embd)),
            (f"blk.{i}.ffn_norm.weight", (n_embd,)),
            (f"blk.{i}.ffn_gate.weight", (n_embd, n_ff)),
            (f"blk.{i}.ffn_up.weight", (n_embd, n_ff)),
            (f"blk.{i}.ffn_down.weight", (n_ff, n_embd)),
        ]
    return shapes


def _write_random(out: BinaryIO, rng: np.random.Generator, shape: tuple[int, ...], ggml_type: int) -> int:
    """Write a tensor of normal(0, 0.02) values slab by slab; returns the bytes written."""
    row, rows = shape[0], math.prod(shape[1:])
    per_slab = max(1, _SLAB_ELEMENTS // row)
    written = 0
    for start in range(0, rows, per_slab):
        values = rng.standard_normal((min(per_slab, rows - start), row), dtype=np.float32)
        values *= np.float32(0.02)
        if ggml_type == _F32:
            data = values.astype("<f4").tobytes()
        elif ggml_type == _F16:
            data = values.astype("<f2").tobytes()
        elif ggml_type == _BF16:
            data = float32_to_bf16_bits(values).astype("<u2").tobytes()
        else:  # Q8_0, the one quantized dtype offered
            data = quantize_q8_0(values).tobytes()
        out.write(data)
        written += len(data)
    return written


def write_llama_gguf(
    path: str | os.PathLike[str],
    *,
    n_embd: int = 256,
    n_ff: int = 512,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 384,
    context_length: int = 512,
    dtype: str = "F16",
    seed: int = 0,
    name: str = "synthetic-llama",
    architecture: str = "llama",
    sliding_window: int = 0,
) -> int:
    """Write a llama model with random weights to ``path``; returns the bytes written.

    Norm weights are F32 (ones), every 2-D weight is stored in ``dtype`` ("F32", "F16", "BF16" or
    "Q8_0"). The same arguments and seed always give the same file. ``architecture="gemma2"`` writes
    a Gemma 2 instead (tied output layer, post-norms, every other layer attending to ``sliding_window``
    tokens only).
    """
    if architecture not in ("llama", "gemma2"):
        raise ValueError(f"architecture must be llama or gemma2, not {architecture!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if min(n_embd, n_ff, n_layer, n_head, n_head_kv, context_length) <= 0:
        raise ValueError("model dimensions must be positive")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_head must divide n_embd and n_head_kv must divide n_head")
    if n_vocab < 259:
        raise ValueError("n_vocab must be at least 259 (3 special and 256 byte tokens)")
    weight_type, file_type = _DTYPES[dtype]
    block = ggml_types()[weight_type].block_size
    if n_embd % block or n_ff % block:
        raise ValueError(f"n_embd and n_ff must be multiples of {block} for {dtype}")

    tokens, scores, token_types = _vocabulary(n_vocab)
    meta = GgufMetadata()
    arch = architecture
    meta.text("general.architecture", arch)
    meta.text("general.name", name)
    meta.u32("general.file_type", file_type)
    if dtype == "Q8_0":
        meta.u32("general.quantization_version", 2)
    meta.u32(f"{arch}.vocab_size", n_vocab)
    meta.u32(f"{arch}.context_length", context_length)
    meta.u32(f"{arch}.embedding_length", n_embd)
    meta.u32(f"{arch}.block_count", n_layer)
    meta.u32(f"{arch}.feed_forward_length", n_ff)
    meta.u32(f"{arch}.attention.head_count", n_head)
    meta.u32(f"{arch}.attention.head_count_kv", n_head_kv)
    meta.u32(f"{arch}.rope.dimension_count", n_embd // n_head)
    meta.f32(f"{arch}.rope.freq_base", 10000.0)
    meta.f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    if arch == "gemma2":
        meta.u32("gemma2.attention.key_length", n_embd // n_head)
        meta.u32("gemma2.attention.value_length", n_embd // n_head)
        meta.u32("gemma2.attention.sliding_window", sliding_window or 4096)
    meta.text("tokenizer.ggml.model", "llama")
    meta.strings("tokenizer.ggml.tokens", tokens)
    meta.numbers("tokenizer.ggml.scores", _FLOAT32, scores)
    meta.numbers("tokenizer.ggml.token_type", _INT32, token_types)
    meta.u32("tokenizer.ggml.unknown_token_id", 0)
    meta.u32("tokenizer.ggml.bos_token_id", 1)
    meta.u32("tokenizer.ggml.eos_token_id", 2)
    meta.boolean("tokenizer.ggml.add_bos_token", True)
    meta.boolean("tokenizer.ggml.add_eos_token", False)

    tensors = [
        (tensor_name, shape, _F32 if len(shape) == 1 else weight_type)
        for tensor_name, shape in _tensor_shapes(n_embd, n_ff, n_layer, n_head, n_head_kv, n_vocab, arch)
    ]
    layouts = plan_tensors(tensors)
    rng = np.random.default_rng(seed)

    def write_data(tensor: TensorLayout, out: BinaryIO) -> int:
        if len(tensor.shape) == 1:
            return out.write(np.ones(tensor.shape, dtype="<f4").tobytes())
        return _write_random(out, rng, tensor.shape, tensor.ggml_type)

    with open(path, "wb") as out:
        return write_gguf(out, meta, layouts, write_data)


def _bytes_per_element(dtype: str) -> float:
    kind = ggml_types()[_DTYPES[dtype][0]]
    return kind.block_bytes / kind.block_size


def _shape_elements(n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int, n_vocab: int) -> int:
    return sum(
        math.prod(shape)
        for _, shape in _tensor_shapes(n_embd, n_ff, n_layer, n_head, n_head_kv, n_vocab)
        if len(shape) > 1
    )


def llama_shape_for_bytes(target_bytes: int, dtype: str = "F16") -> dict[str, int]:
    """Keyword arguments for :func:`write_llama_gguf` giving a file of roughly ``target_bytes``.

    The shape follows real llama models: n_embd a multiple of 256, head size 64 (128 from n_embd
    1024), grouped-query attention with a quarter of the heads as key/value heads,
    n_ff about 2.7 x n_embd, and about one layer per 128 embedding channels.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    per_element = _bytes_per_element(dtype)
    budget = max(0, target_bytes) / per_element
    n_vocab = 32000 if target_bytes >= 256 << 20 else 4096 if target_bytes >= 16 << 20 else 512
    best: tuple[float, dict[str, int]] | None = None
    for n_embd in range(256, 16384 + 1, 256):
        head_dim = 64 if n_embd < 1024 else 128
        n_head = n_embd // head_dim
        if n_head % 4:
            continue
        n_head_kv = n_head // 4
        n_ff = _round_up(int(n_embd * 2.6875), 256)
        fixed = _shape_elements(n_embd, n_ff, 0, n_head, n_head_kv, n_vocab)
        per_layer = _shape_elements(n_embd, n_ff, 1, n_head, n_head_kv, n_vocab) - fixed
        n_layer = max(1, round((budget - fixed) / per_layer))
        shape = {
            "n_embd": n_embd,
            "n_ff": n_ff,
            "n_layer": n_layer,
            "n_head": n_head,
            "n_head_kv": n_head_kv,
            "n_vocab": n_vocab,
            "context_length": 2048,
        }
        size_error = abs(fixed + n_layer * per_layer - budget) / max(budget, 1.0)
        depth_error = abs(math.log(n_layer / max(1.0, n_embd / 128)))
        score = depth_error + 10 * size_error
        if best is None or score < best[0]:
            best = (score, shape)
    assert best is not None
    return best[1]


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
