"""Per-architecture knowledge: Hugging Face tensor names to GGUF names, and hyper-parameters to GGUF keys.

Llama-family q/k weights are permuted back from Hugging Face's rotary layout (halves) to the
interleaved pairs llama.cpp's "llama" architecture expects, as llama.cpp's own converter does.
Qwen2/Qwen3 use llama.cpp's NEOX rope and are not permuted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]

_LLAMA_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LLAMA_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_BERT_BLOCK = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_BERT_GLOBAL = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_BERT_SKIP = re.compile(r"^(embeddings\.position_ids|pooler\..*|cls\..*)$")


def permute_rotary(weight: Array, n_head: int) -> Array:
    """Hugging Face rotary layout (two halves per head) to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class Architecture:
    hf_name: str
    gguf_name: str
    kind: str  # "causal" | "embedding"
    rename: Callable[[str], str | None]  # HF tensor name -> GGUF name, None to drop
    transform: Callable[[str, Array, dict[str, Any]], Array]
    hparams: Callable[[dict[str, Any]], dict[str, Any]]


def _llama_rename(name: str) -> str | None:
    if name in _LLAMA_GLOBAL:
        return _LLAMA_GLOBAL[name]
    match = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
    if match and match[2] in _LLAMA_BLOCK:
        return f"blk.{match[1]}.{_LLAMA_BLOCK[match[2]]}"
    if name.endswith("rotary_emb.inv_freq"):
        return None
    raise KeyError(name)


def _bert_rename(name: str) -> str | None:
    name = name.removeprefix("bert.")
    if _BERT_SKIP.match(name):
        return None
    if name in _BERT_GLOBAL:
        return _BERT_GLOBAL[name]
    match = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", name)
    if match and match[2] in _BERT_BLOCK:
        return f"blk.{match[1]}.{_BERT_BLOCK[match[2]]}.{match[3]}"
    raise KeyError(name)


def _llama_transform(name: str, weight: Array, config: dict[str, Any]) -> Array:
    heads = int(config["num_attention_heads"])
    if name.endswith("self_attn.q_proj.weight"):
        return permute_rotary(weight, heads)
    if name.endswith("self_attn.k_proj.weight"):
        return permute_rotary(weight, int(config.get("num_key_value_heads") or heads))
    return weight


def _keep(_name: str, weight: Array, _config: dict[str, Any]) -> Array:
    return weight


def _decoder_hparams(config: dict[str, Any]) -> dict[str, Any]:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    values: dict[str, Any] = {
        "context_length": int(config.get("max_position_embeddings", 2048)),
        "embedding_length": int(config["hidden_size"]),
        "block_count": int(config["num_hidden_layers"]),
        "feed_forward_length": int(config["intermediate_size"]),
        "attention.head_count": heads,
        "attention.head_count_kv": int(config.get("num_key_value_heads") or heads),
        "attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "rope.dimension_count": head_dim,
        "rope.freq_base": float(config.get("rope_theta", 10000.0)),
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
    }
    return values


def _bert_hparams(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "context_length": int(config.get("max_position_embeddings", 512)),
        "embedding_length": int(config["hidden_size"]),
        "block_count": int(config["num_hidden_layers"]),
        "feed_forward_length": int(config["intermediate_size"]),
        "attention.head_count": int(config["num_attention_heads"]),
        "attention.layer_norm_epsilon": float(config.get("layer_norm_eps", 1e-12)),
        "attention.causal": False,
    }


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(
        "LlamaForCausalLM", "llama", "causal", _llama_rename, _llama_transform, _decoder_hparams
    ),
    "MistralForCausalLM": Architecture(
        "MistralForCausalLM", "llama", "causal", _llama_rename, _llama_transform, _decoder_hparams
    ),
    "Qwen2ForCausalLM": Architecture("Qwen2ForCausalLM", "qwen2", "causal", _llama_rename, _keep, _decoder_hparams),
    "Qwen3ForCausalLM": Architecture("Qwen3ForCausalLM", "qwen3", "causal", _llama_rename, _keep, _decoder_hparams),
    "BertModel": Architecture("BertModel", "bert", "embedding", _bert_rename, _keep, _bert_hparams),
}
