"""What an architecture requires of a model, checked before any work is done on it.

A model can be well-formed as a file and still be broken: a Hugging Face folder without its MLP
weights, a 3-D or integer tensor where a matrix belongs, a vocabulary of millions, a GGUF whose
``blk.3.attn_k.weight`` is missing or of the wrong shape, head counts llama.cpp cannot run (it aborts
in ``build_attn`` when the head count is not a multiple of the KV head count). llama.cpp's quantizer
copies such models without complaint, so each source is checked here first and refused with
SourceInvalid naming the first problem:

- :func:`config_int` / :func:`config_float`: the one way hyper-parameters are read from config.json,
  typed and range-checked (a string, a negative or a huge value names its key);
- :func:`decoder_shape` / :func:`bert_shape`: a config's hyper-parameters, checked for consistency;
  :func:`reranker_labels` / :func:`roberta_position_offset`: a cross-encoder's one label and RoBERTa's
  first position;
- :func:`check_hf_tensors`: safetensors headers against the tensors the architecture table expects
  (names, shapes, float dtypes);
- :func:`check_gguf_model`: a GGUF header against what llama.cpp's loader requires of the
  architectures it can be checked for (llama, qwen2, qwen3, gemma2, bert); other architectures pass.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quantledger.errors import SourceInvalid, UnsupportedArchitecture
from quantledger.gguf.reader import GgufHeader

MAX_VOCAB_SIZE = 1_000_000  # tokens; Gemma 3 has 262k, Llama 3 128k
MAX_HIDDEN_SIZE = 1 << 17  # embedding width; the largest models use 16k-25k
MAX_FFN_SIZE = 1 << 20
MAX_LAYERS = 4_096
MAX_HEADS = 4_096
MAX_HEAD_DIM = 4_096
MAX_CONTEXT = 1 << 26  # positions (max_position_embeddings, context_length)
MAX_TOKEN_TYPES = 1_024
FLOAT_DTYPES = ("F32", "F16", "BF16")

_MISSING: Any = object()


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if source else key


def config_int(
    config: Mapping[str, Any],
    key: str,
    *,
    default: int | None = _MISSING,
    minimum: int = 1,
    maximum: int,
    source: str = "config.json",
) -> int:
    """``config[key]`` as an int in ``minimum..maximum``; ``default`` when absent or null (required when
    no default). Anything else (a string, a bool, a fraction, out of range) is SourceInvalid naming the key."""
    value = config.get(key)
    if value is None:
        if default is _MISSING:
            raise SourceInvalid(f"{_where(source, key)} is missing")
        if default is None:
            raise SourceInvalid(f"{_where(source, key)} is missing")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceInvalid(f"{_where(source, key)} must be an integer, not {_shown(value)}")
    if not minimum <= value <= maximum:
        raise SourceInvalid(f"{_where(source, key)} is {value}; it must lie in {minimum}..{maximum}")
    return value


def optional_config_int(
    config: Mapping[str, Any], key: str, *, minimum: int = 1, maximum: int, source: str = "config.json"
) -> int | None:
    """Like :func:`config_int`, None when the key is absent or null."""
    if config.get(key) is None:
        return None
    return config_int(config, key, minimum=minimum, maximum=maximum, source=source)


def config_float(
    config: Mapping[str, Any],
    key: str,
    *,
    default: float,
    minimum: float = 0.0,
    maximum: float = math.inf,
    exclusive_minimum: bool = True,
    source: str = "config.json",
) -> float:
    """``config[key]`` as a finite float above ``minimum`` (or at it, unless ``exclusive_minimum``)."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceInvalid(f"{_where(source, key)} must be a number, not {_shown(value)}")
    number = float(value)
    low_ok = number > minimum if exclusive_minimum else number >= minimum
    if not math.isfinite(number) or not low_ok or number > maximum:
        bound = ">" if exclusive_minimum else ">="
        raise SourceInvalid(f"{_where(source, key)} is {number}; it must be finite and {bound} {minimum}")
    return number


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------
# Hugging Face configs


@dataclass(frozen=True)
class DecoderShape:
    """The hyper-parameters of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3)."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def decoder_shape(config: Mapping[str, Any]) -> DecoderShape:
    """A decoder config's sizes, typed and consistent: what llama.cpp can build and run."""
    hidden = config_int(config, "hidden_size", maximum=MAX_HIDDEN_SIZE)
    heads = config_int(config, "num_attention_heads", maximum=MAX_HEADS)
    kv_heads = config_int(config, "num_key_value_heads", default=heads, maximum=MAX_HEADS)
    head_dim = optional_config_int(config, "head_dim", maximum=MAX_HEAD_DIM)
    if head_dim is None:
        if hidden % heads:
            raise SourceInvalid(
                f"config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                "(and no head_dim is given)"
            )
        head_dim = hidden // heads
    if heads % kv_heads:
        raise SourceInvalid(
            f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}; "
            "llama.cpp cannot run such a model"
        )
    if head_dim % 2:
        raise SourceInvalid(f"config.json: head_dim {head_dim} is odd; rotary embeddings need an even head size")
    return DecoderShape(
        hidden=hidden,
        ffn=config_int(config, "intermediate_size", maximum=MAX_FFN_SIZE),
        layers=config_int(config, "num_hidden_layers", maximum=MAX_LAYERS),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=config_int(config, "vocab_size", maximum=MAX_VOCAB_SIZE),
    )


@dataclass(frozen=True)
class BertShape:
    hidden: int
    ffn: int
    layers: int
    heads: int
    vocab: int
    positions: int
    token_types: int


def bert_shape(config: Mapping[str, Any]) -> BertShape:
    """A BERT config's sizes, typed and consistent."""
    hidden = config_int(config, "hidden_size", maximum=MAX_HIDDEN_SIZE)
    heads = config_int(config, "num_attention_heads", maximum=MAX_HEADS)
    if hidden % heads:
        raise SourceInvalid(f"config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    return BertShape(
        hidden=hidden,
        ffn=config_int(config, "intermediate_size", maximum=MAX_FFN_SIZE),
        layers=config_int(config, "num_hidden_layers", maximum=MAX_LAYERS),
        heads=heads,
        vocab=config_int(config, "vocab_size", maximum=MAX_VOCAB_SIZE),
        positions=config_int(config, "max_position_embeddings", default=512, maximum=MAX_CONTEXT),
        token_types=config_int(config, "type_vocab_size", default=2, maximum=MAX_TOKEN_TYPES),
    )


def reranker_labels(config: Mapping[str, Any]) -> list[str]:
    """The one label of a cross-encoder's classifier (config.json ``id2label``, else ``num_labels``; Hugging
    Face's default is two). A classifier of several labels gives no single relevance score, so it is not
    converted as a reranker (UnsupportedArchitecture)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        count, labels = len(id2label), [str(label) for label in id2label.values()]
    else:
        count = config_int(config, "num_labels", default=2, maximum=MAX_VOCAB_SIZE)
        labels = ["LABEL_0"]
    if count != 1:
        architecture = str((config.get("architectures") or [""])[0])
        raise UnsupportedArchitecture(
            f"{architecture} with {count} labels is a classifier, not a reranker: llama.cpp's rank pooling "
            "gives one relevance score per (query, passage) pair, so only models with num_labels 1 are converted",
            architecture=architecture,
        )
    return labels


def roberta_position_offset(config: Mapping[str, Any]) -> int:
    """RoBERTa's first position row: ``pad_token_id + 1`` (its positions count from the padding index)."""
    offset = config_int(config, "pad_token_id", default=1, minimum=0, maximum=MAX_CONTEXT) + 1
    positions = config_int(config, "max_position_embeddings", default=514, maximum=MAX_CONTEXT)
    if offset >= positions:
        raise SourceInvalid(
            f"config.json: pad_token_id {offset - 1} leaves no positions of max_position_embeddings {positions}"
        )
    return offset


@dataclass(frozen=True)
class TensorSpec:
    """A tensor an architecture expects: its shape (Hugging Face order), and whether it must be there."""

    shape: tuple[int, ...]
    required: bool = True


@dataclass(frozen=True)
class HfTensor:
    """What a safetensors header says of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer)\.(\d+)\.")


def check_hf_tensors(
    architecture: str,
    expected: Mapping[str, TensorSpec],
    tensors: Mapping[str, HfTensor],
    rename: Callable[[str], str | None],
    layers: int,
) -> None:
    """The folder's tensors against ``expected`` (from the architecture table): every required tensor
    present, every tensor of the expected shape and a float dtype, no tensor the converter does not know
    (``rename`` raises KeyError; None: dropped, so not checked) and no layer beyond ``layers``.
    SourceInvalid names the first problem."""
    for name, tensor in tensors.items():
        try:
            kept = rename(name)
        except KeyError:
            raise SourceInvalid(f"{architecture}: unexpected tensor {name}") from None
        if kept is None:
            continue
        if tensor.dtype not in FLOAT_DTYPES:
            raise SourceInvalid(
                f"{architecture}: tensor {name} is {tensor.dtype}; weights must be {'/'.join(FLOAT_DTYPES)}"
            )
        spec = expected.get(name)
        if spec is None:
            layer = _LAYER.search(name)
            if layer is not None and int(layer[1]) >= layers:
                raise SourceInvalid(
                    f"{architecture}: tensor {name} belongs to layer {layer[1]}, but num_hidden_layers is {layers}"
                )
            continue
        if tensor.shape != spec.shape:
            raise SourceInvalid(
                f"{architecture}: tensor {name} has shape {list(tensor.shape)}, config.json implies {list(spec.shape)}"
            )
    for name, spec in expected.items():
        if spec.required and name not in tensors:
            raise SourceInvalid(f"{architecture}: required tensor {name} is missing")


# ---------------------------------------------------------------------------------------------------
# GGUF sources


@dataclass(frozen=True)
class _GgufArch:
    """The tensors llama.cpp's loader requires of an architecture (shapes in ggml order, ne0 first)."""

    block: Callable[[int, int, int, int, int], dict[str, tuple[int, ...]]]  # (E, F, nh*hd, nkv*hd, hd) -> shapes
    output_required: bool = False
    attention_only: bool = False  # MoE feed-forward layouts are not checked


def _llama_block(e: int, f: int, q: int, kv: int, _hd: int) -> dict[str, tuple[int, ...]]:
    return {
        "attn_norm.weight": (e,),
        "attn_q.weight": (e, q),
        "attn_k.weight": (e, kv),
        "attn_v.weight": (e, kv),
        "attn_output.weight": (q, e),
        "ffn_norm.weight": (e,),
        "ffn_gate.weight": (e, f),
        "ffn_up.weight": (e, f),
        "ffn_down.weight": (f, e),
    }


def _qwen2_block(e: int, f: int, q: int, kv: int, hd: int) -> dict[str, tuple[int, ...]]:
    return _llama_block(e, f, q, kv, hd) | {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}


def _qwen3_block(e: int, f: int, q: int, kv: int, hd: int) -> dict[str, tuple[int, ...]]:
    return _llama_block(e, f, q, kv, hd) | {"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}


def _gemma2_block(e: int, f: int, q: int, kv: int, hd: int) -> dict[str, tuple[int, ...]]:
    return _llama_block(e, f, q, kv, hd) | {"post_attention_norm.weight": (e,), "post_ffw_norm.weight": (e,)}


def _bert_block(e: int, f: int, q: int, kv: int, _hd: int) -> dict[str, tuple[int, ...]]:
    return {
        "attn_q.weight": (e, q),
        "attn_q.bias": (q,),
        "attn_k.weight": (e, kv),
        "attn_k.bias": (kv,),
        "attn_v.weight": (e, kv),
        "attn_v.bias": (kv,),
        "attn_output.weight": (q, e),
        "attn_output.bias": (e,),
        "attn_output_norm.weight": (e,),
        "attn_output_norm.bias": (e,),
        "ffn_up.weight": (e, f),
        "ffn_up.bias": (f,),
        "ffn_down.weight": (f, e),
        "ffn_down.bias": (e,),
        "layer_output_norm.weight": (e,),
        "layer_output_norm.bias": (e,),
    }


_GGUF_ARCHITECTURES: dict[str, _GgufArch] = {
    "llama": _GgufArch(_llama_block),
    "qwen2": _GgufArch(_qwen2_block),
    "qwen3": _GgufArch(_qwen3_block),
    "gemma2": _GgufArch(_gemma2_block),
    "bert": _GgufArch(_bert_block),
}


def _gguf_int(metadata: Mapping[str, object], key: str, maximum: int, default: int | None = None) -> int:
    value = metadata.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise SourceInvalid(f"metadata key {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceInvalid(f"metadata key {key} must be an integer, not {_shown(value)}")
    if not 1 <= value <= maximum:
        raise SourceInvalid(f"metadata key {key} is {value}; it must lie in 1..{maximum}")
    return value


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without trailing unit dimensions, as llama.cpp's loader compares shapes."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return tuple(shape[:n])


def check_gguf_model(
    architecture: str | None, metadata: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """A GGUF model (``shapes``: tensor name -> ggml shape) against what llama.cpp requires of its
    architecture: hyper-parameters present and consistent, every block's tensors there with the shapes
    they imply, the vocabulary within bounds. Architectures not described here pass unchecked."""
    if architecture is None:
        return
    shapes = {name: _squeezed(shape) for name, shape in shapes.items()}
    arch = _GGUF_ARCHITECTURES.get(architecture)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > MAX_VOCAB_SIZE:
        raise SourceInvalid(f"the vocabulary holds {len(tokens)} tokens, more than {MAX_VOCAB_SIZE}")
    if arch is None:
        return
    a = architecture
    n_embd = _gguf_int(metadata, f"{a}.embedding_length", MAX_HIDDEN_SIZE)
    n_layer = _gguf_int(metadata, f"{a}.block_count", MAX_LAYERS)
    n_ff = _gguf_int(metadata, f"{a}.feed_forward_length", MAX_FFN_SIZE)
    n_head = _gguf_int(metadata, f"{a}.attention.head_count", MAX_HEADS)
    raw_kv = metadata.get(f"{a}.attention.head_count_kv")
    if isinstance(raw_kv, list):
        return  # per-layer head counts (hybrid models): not described here
    n_head_kv = _gguf_int(metadata, f"{a}.attention.head_count_kv", MAX_HEADS, default=n_head)
    if n_head % n_head_kv:
        raise SourceInvalid(
            f"{a}.attention.head_count {n_head} is not a multiple of {a}.attention.head_count_kv {n_head_kv}; "
            "llama.cpp cannot run such a model"
        )
    if metadata.get(f"{a}.attention.key_length") is not None:
        head_dim = _gguf_int(metadata, f"{a}.attention.key_length", MAX_HEAD_DIM)
    elif n_embd % n_head:
        raise SourceInvalid(f"{a}.embedding_length {n_embd} is not a multiple of {a}.attention.head_count {n_head}")
    else:
        head_dim = n_embd // n_head
    if metadata.get(f"{a}.expert_count"):
        return  # mixture of experts: the feed-forward tensors take other names and shapes
    n_vocab = len(tokens) if isinstance(tokens, list) and tokens else None
    embd = shapes.get("token_embd.weight")
    if embd is None:
        raise SourceInvalid("required tensor token_embd.weight is missing")
    expected_embd = (n_embd, n_vocab) if n_vocab is not None else (n_embd, embd[-1])
    if embd != expected_embd:
        raise SourceInvalid(
            f"tensor token_embd.weight has shape {list(embd)}, the metadata implies {list(expected_embd)}"
            + (f" ({n_vocab} tokens)" if n_vocab is not None else "")
        )
    if "output_norm.weight" not in shapes and a != "bert":
        raise SourceInvalid("required tensor output_norm.weight is missing")
    expected: dict[str, tuple[int, ...]] = {}
    if a != "bert":
        expected["output_norm.weight"] = (n_embd,)
        if "output.weight" in shapes:
            expected["output.weight"] = expected_embd
    else:
        expected["token_embd_norm.weight"] = (n_embd,)
    block = arch.block(n_embd, n_ff, n_head * head_dim, n_head_kv * head_dim, head_dim)
    for layer in range(n_layer):
        for suffix, shape in block.items():
            expected[f"blk.{layer}.{suffix}"] = shape
    for name, shape in expected.items():
        found = shapes.get(name)
        if found is None:
            raise SourceInvalid(f"required tensor {name} is missing")
        if found != shape:
            raise SourceInvalid(f"tensor {name} has shape {list(found)}, the metadata implies {list(shape)}")
    for name in shapes:
        match = re.match(r"blk\.(\d+)\.", name)
        if match is not None and int(match[1]) >= n_layer:
            raise SourceInvalid(f"tensor {name} belongs to block {match[1]}, but {a}.block_count is {n_layer}")


def check_gguf_source(header: GgufHeader) -> None:
    """:func:`check_gguf_model` for a parsed header; the error names the file."""
    try:
        check_gguf_model(header.architecture, header.metadata, {t.name: t.shape for t in header.tensors})
    except SourceInvalid as exc:
        name = os.path.basename(header.path) or header.path
        raise SourceInvalid(f"{name}: {exc.message}", path=header.path) from None
