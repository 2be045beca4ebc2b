"""Per-architecture knowledge: Hugging Face tensor names to GGUF names, and hyper-parameters to GGUF keys.

Llama-family q/k weights are permuted back from Hugging Face's rotary layout (halves) to the
interleaved pairs llama.cpp's "llama" architecture expects, as llama.cpp's own converter does.
Qwen2/Qwen3 use llama.cpp's NEOX rope and are not permuted.

Cross-encoders (kind "reranker": BertForSequenceClassification, XLMRobertaForSequenceClassification)
keep their classification head under the names llama.cpp's bert graph reads for rank pooling
(``build_pooling``, LLAMA_POOLING_TYPE_RANK): the first token's hidden state goes through ``cls``
(weight, bias, then tanh) and ``cls.output`` (weight, bias), one score per label. BERT's head is its
pooler (``bert.pooler.dense``, tanh) then ``classifier``; RoBERTa's is ``classifier.dense`` (tanh) then
``classifier.out_proj``: both map onto the same two tensors. (llama.cpp's own converter drops BERT's
pooler, so its BERT cross-encoders score the first token's state without the pooler's dense + tanh.)
RoBERTa position embeddings start at ``pad_token_id + 1``; the rows before are dropped, as llama.cpp's
converter does, so llama.cpp's position 0 reads HF's position ``pad_token_id + 1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.convert.model_checks import (
    MAX_CONTEXT,
    TensorSpec,
    bert_shape,
    config_float,
    config_int,
    decoder_shape,
    reranker_labels,
    roberta_position_offset,
)

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
# the classification heads of cross-encoders (names under the model's body prefix or beside it, as
# Hugging Face writes them), as llama.cpp's LLM_TENSOR_CLS ("cls") and LLM_TENSOR_CLS_OUT ("cls.output")
_BERT_HEAD = {  # BertForSequenceClassification: the pooler (dense, tanh), then classifier
    "pooler.dense.weight": "cls.weight",
    "pooler.dense.bias": "cls.bias",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
}
_ROBERTA_HEAD = {  # RobertaClassificationHead: classifier.dense (tanh), then classifier.out_proj
    "classifier.dense.weight": "cls.weight",
    "classifier.dense.bias": "cls.bias",
    "classifier.out_proj.weight": "cls.output.weight",
    "classifier.out_proj.bias": "cls.output.bias",
}


def permute_rotary(weight: Array, n_head: int) -> Array:
    """Hugging Face rotary layout (two halves per head) to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _no_rows_dropped(_name: str, _config: dict[str, Any]) -> int:
    return 0


@dataclass(frozen=True)
class Architecture:
    hf_name: str
    gguf_name: str
    kind: str  # "causal" | "embedding" | "reranker"
    rename: Callable[[str], str | None]  # HF tensor name -> GGUF name, None to drop
    transform: Callable[[str, Array, dict[str, Any]], Array]
    # hyper-parameters -> GGUF keys under the architecture's prefix (bool, int as u32, float as f32,
    # a list of strings as a string array)
    hparams: Callable[[dict[str, Any]], dict[str, Any]]
    # config.json and the folder's tensor names -> the tensors the converter expects (model_checks.py)
    tensors: Callable[[dict[str, Any], Collection[str]], dict[str, TensorSpec]]
    # leading rows (first dimension) of a tensor left out of the GGUF: RoBERTa's unused positions
    dropped_rows: Callable[[str, dict[str, Any]], int] = _no_rows_dropped


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


def _reranker_rename(body: str, heads: dict[str, str]) -> Callable[[str], str | None]:
    """A cross-encoder's names: its classification head (``heads``: HF name without the ``body``
    prefix -> GGUF name) and a BERT body under ``body`` ("bert." or "roberta.")."""

    def rename(name: str) -> str | None:
        if name in heads:
            return heads[name]
        if name.startswith(body) and name.removeprefix(body) in heads:
            return heads[name.removeprefix(body)]
        if not name.startswith(body):
            raise KeyError(name)
        return _bert_rename(name.removeprefix(body))

    return rename


def _llama_transform(name: str, weight: Array, config: dict[str, Any]) -> Array:
    if name.endswith("self_attn.q_proj.weight"):
        return permute_rotary(weight, decoder_shape(config).heads)
    if name.endswith("self_attn.k_proj.weight"):
        return permute_rotary(weight, decoder_shape(config).kv_heads)
    return weight


def _keep(_name: str, weight: Array, _config: dict[str, Any]) -> Array:
    return weight


def _decoder_hparams(config: dict[str, Any]) -> dict[str, Any]:
    shape = decoder_shape(config)
    values: dict[str, Any] = {
        "context_length": config_int(config, "max_position_embeddings", default=2048, maximum=MAX_CONTEXT),
        "embedding_length": shape.hidden,
        "block_count": shape.layers,
        "feed_forward_length": shape.ffn,
        "attention.head_count": shape.heads,
        "attention.head_count_kv": shape.kv_heads,
        "attention.layer_norm_rms_epsilon": config_float(config, "rms_norm_eps", default=1e-6, maximum=1.0),
        "rope.dimension_count": shape.head_dim,
        "rope.freq_base": config_float(config, "rope_theta", default=10000.0),
        "attention.key_length": shape.head_dim,
        "attention.value_length": shape.head_dim,
    }
    return values


def _bert_hparams(config: dict[str, Any]) -> dict[str, Any]:
    shape = bert_shape(config)
    return {
        "context_length": shape.positions,
        "embedding_length": shape.hidden,
        "block_count": shape.layers,
        "feed_forward_length": shape.ffn,
        "attention.head_count": shape.heads,
        "attention.layer_norm_epsilon": config_float(config, "layer_norm_eps", default=1e-12, maximum=1.0),
        "attention.causal": False,
    }


def _decoder_tensors(biases: str) -> Callable[[dict[str, Any], Collection[str]], dict[str, TensorSpec]]:
    """The tensors of a Llama-family decoder, in Hugging Face order ([out, in]). ``biases``: "required"
    (Qwen2: llama.cpp loads q/k/v biases), "optional" (Llama, Mistral) or "qk_norm" (Qwen3: no biases,
    per-head q/k norms required)."""

    def tensors(config: dict[str, Any], _names: Collection[str]) -> dict[str, TensorSpec]:
        s = decoder_shape(config)
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        specs = {
            "model.embed_tokens.weight": TensorSpec((s.vocab, s.hidden)),
            "model.norm.weight": TensorSpec((s.hidden,)),
            "lm_head.weight": TensorSpec((s.vocab, s.hidden), required=False),
        }
        block = {
            "input_layernorm.weight": TensorSpec((s.hidden,)),
            "post_attention_layernorm.weight": TensorSpec((s.hidden,)),
            "self_attn.q_proj.weight": TensorSpec((q, s.hidden)),
            "self_attn.k_proj.weight": TensorSpec((kv, s.hidden)),
            "self_attn.v_proj.weight": TensorSpec((kv, s.hidden)),
            "self_attn.o_proj.weight": TensorSpec((s.hidden, q)),
            "mlp.gate_proj.weight": TensorSpec((s.ffn, s.hidden)),
            "mlp.up_proj.weight": TensorSpec((s.ffn, s.hidden)),
            "mlp.down_proj.weight": TensorSpec((s.hidden, s.ffn)),
        }
        if biases in ("required", "optional"):
            for proj, rows in (("q", q), ("k", kv), ("v", kv)):
                block[f"self_attn.{proj}_proj.bias"] = TensorSpec((rows,), required=biases == "required")
        if biases == "qk_norm":
            block["self_attn.q_norm.weight"] = TensorSpec((s.head_dim,))
            block["self_attn.k_norm.weight"] = TensorSpec((s.head_dim,))
        for layer in range(s.layers):
            specs.update({f"model.layers.{layer}.{name}": spec for name, spec in block.items()})
        return specs

    return tensors


def _bert_tensors(config: dict[str, Any], names: Collection[str]) -> dict[str, TensorSpec]:
    s = bert_shape(config)
    prefix = "bert." if any(name.startswith("bert.") for name in names) else ""
    h, f = s.hidden, s.ffn
    specs = {
        "embeddings.word_embeddings.weight": TensorSpec((s.vocab, h)),
        "embeddings.position_embeddings.weight": TensorSpec((s.positions, h)),
        "embeddings.token_type_embeddings.weight": TensorSpec((s.token_types, h)),
        "embeddings.LayerNorm.weight": TensorSpec((h,)),
        "embeddings.LayerNorm.bias": TensorSpec((h,)),
    }
    block = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
             "attention.output.dense": (h, h), "attention.output.LayerNorm": (h,), "intermediate.dense": (f, h),
             "output.dense": (h, f), "output.LayerNorm": (h,)}  # fmt: skip
    for layer in range(s.layers):
        for module, shape in block.items():
            specs[f"encoder.layer.{layer}.{module}.weight"] = TensorSpec(shape)
            specs[f"encoder.layer.{layer}.{module}.bias"] = TensorSpec((shape[0],))
    return {prefix + name: spec for name, spec in specs.items()}


RANK_POOLING = 4  # llama.h LLAMA_POOLING_TYPE_RANK: the classification head scores the sequence


def _reranker_hparams(family: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A cross-encoder's keys: BERT's, the context less RoBERTa's unused positions, rank pooling and the
    classifier's one label (``{arch}.classifier.output_labels``, as llama.cpp's converter writes it)."""

    def hparams(config: dict[str, Any]) -> dict[str, Any]:
        values = _bert_hparams(config)
        if family == "roberta":
            values["context_length"] -= roberta_position_offset(config)
        values["pooling_type"] = RANK_POOLING
        values["classifier.output_labels"] = reranker_labels(config)
        return values

    return hparams


TensorTable = Callable[[dict[str, Any], Collection[str]], dict[str, TensorSpec]]


def _reranker_tensors(body: str, heads: dict[str, str]) -> TensorTable:
    """A cross-encoder's tensors: the BERT body under ``body`` and its classification head, every one
    required (a folder without its head is not a reranker)."""

    def tensors(config: dict[str, Any], _names: Collection[str]) -> dict[str, TensorSpec]:
        hidden, labels = bert_shape(config).hidden, len(reranker_labels(config))
        specs = {body + name: spec for name, spec in _bert_tensors(config, ()).items()}
        for name in heads:
            rows = labels if heads[name].startswith("cls.output") else hidden
            shape = (rows, hidden) if name.endswith(".weight") else (rows,)
            specs[(body if name.startswith("pooler.") else "") + name] = TensorSpec(shape)
        return specs

    return tensors


def _roberta_dropped_rows(name: str, config: dict[str, Any]) -> int:
    """RoBERTa numbers positions from ``pad_token_id + 1``: the rows before it are never read."""
    return roberta_position_offset(config) if name.endswith("embeddings.position_embeddings.weight") else 0


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(
        "LlamaForCausalLM",
        "llama",
        "causal",
        _llama_rename,
        _llama_transform,
        _decoder_hparams,
        _decoder_tensors("optional"),
    ),
    "MistralForCausalLM": Architecture(
        "MistralForCausalLM",
        "llama",
        "causal",
        _llama_rename,
        _llama_transform,
        _decoder_hparams,
        _decoder_tensors("optional"),
    ),
    "Qwen2ForCausalLM": Architecture(
        "Qwen2ForCausalLM", "qwen2", "causal", _llama_rename, _keep, _decoder_hparams, _decoder_tensors("required")
    ),
    "Qwen3ForCausalLM": Architecture(
        "Qwen3ForCausalLM", "qwen3", "causal", _llama_rename, _keep, _decoder_hparams, _decoder_tensors("qk_norm")
    ),
    "BertModel": Architecture("BertModel", "bert", "embedding", _bert_rename, _keep, _bert_hparams, _bert_tensors),
    "BertForSequenceClassification": Architecture(
        "BertForSequenceClassification",
        "bert",
        "reranker",
        _reranker_rename("bert.", _BERT_HEAD),
        _keep,
        _reranker_hparams("bert"),
        _reranker_tensors("bert.", _BERT_HEAD),
    ),
    "XLMRobertaForSequenceClassification": Architecture(
        "XLMRobertaForSequenceClassification",
        "bert",
        "reranker",
        _reranker_rename("roberta.", _ROBERTA_HEAD),
        _keep,
        _reranker_hparams("roberta"),
        _reranker_tensors("roberta.", _ROBERTA_HEAD),
        _roberta_dropped_rows,
    ),
}
