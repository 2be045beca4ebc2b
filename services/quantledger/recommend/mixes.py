"""llama.cpp's per-tensor type choice for each quantization mix, from tensor names and shapes alone.

This follows ``llama_tensor_get_type`` of the installed llama.cpp (src/llama-quant.cpp, 0.3.36 of
llama-cpp-python): which tensors may be quantized at all, the default type of each ftype, the bumps a
mix gives attn_v / ffn_down / output and the token embeddings by layer position, and the fallback of a
tensor whose row length is not a multiple of the block size. Tensors are visited in llama.cpp's order
(block number, then name), because the attn_v rule counts the tensors it has seen.

tests/test_recommend_sizes.py checks the result against llama.cpp's own dry run for every type of
the catalogue on several model shapes, tensor by tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from quantledger.gguf.types import ggml_types, ggml_types_by_name
from quantledger.recommend.shape import ModelShape, TensorShape

# llama_ftype -> the type every quantizable tensor gets before the mix rules (llama_ftype_get_default_type)
_DEFAULT_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0",
    "Q5_1": "Q5_1", "Q8_0": "Q8_0", "Q1_0": "Q1_0", "Q2_0": "Q2_0", "MXFP4_MOE": "MXFP4",
    "Q2_K_S": "Q2_K", "Q2_K": "Q2_K", "IQ3_XS": "IQ3_S", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS",
    "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ3_XXS": "IQ3_XXS", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
}  # fmt: skip
_FLOAT = frozenset({"F32", "F16", "BF16"})
# tensor_type_fallback: a 256-block type whose rows do not divide goes to a 32-block one
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_0": "Q4_0", "Q2_K": "Q4_0",
    "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}  # fmt: skip
_IQ_LOW = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
# substrings of tensor names llama.cpp never quantizes (tensor_allows_quantization)
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
          "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
          "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
          "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
          "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
          "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
          "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
          ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")  # fmt: skip
_NEVER_EXACT = frozenset({"position_embd.weight", "token_types.weight"})
# types a real run refuses without an importance matrix (tensor_requires_imatrix)
_NEED_IMATRIX = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, category in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return category
    return "other"


def allows_quantization(tensor: TensorShape) -> bool:
    dims = len(tensor.shape)
    while dims > 1 and tensor.shape[dims - 1] == 1:
        dims -= 1
    name = tensor.name
    if dims < 2 or not name.endswith("weight") or name in _NEVER_EXACT:
        return False
    return not any(part in name for part in _NEVER)


def llama_order(tensors: tuple[TensorShape, ...]) -> list[TensorShape]:
    """llama.cpp's weights_map order: block number (-1 outside the blocks), then name."""
    return sorted(tensors, key=lambda t: (t.layer, t.name))


def _more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or _cmod(i_layer - n_layer // 8, 3) == 2


def _cmod(a: int, b: int) -> int:
    """C's % (the sign follows the dividend)."""
    return int(math.fmod(a, b))


@dataclass
class _State:
    shape: ModelShape
    ftype: str
    has_imatrix: bool
    n_attention_wv: int
    tied: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0

    def layer(self, counter: int, tensor: TensorShape) -> tuple[int, int]:
        n_layer = self.shape.n_layer
        if self.shape.n_expert > 1:  # experts may be spread over the file: the block number decides
            return tensor.layer, n_layer
        return counter, n_layer


def _mix(st: _State, new: str, tensor: TensorShape, category: str) -> str:
    """llama_tensor_get_type_impl: the mix's choice for one quantizable tensor."""
    ft, shape, gqa = st.ftype, st.shape, st.shape.n_gqa()
    n_expert = shape.n_expert
    arch = shape.architecture
    if category == "output" or (st.tied and category == "token_embd"):
        block = _block(new)
        if ft == "MXFP4_MOE" or arch == "falcon" or tensor.shape[0] % block:
            return "Q8_0"
        if ft in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if ft == "MXFP4_MOE":
        three_d = len(tensor.shape) > 2 and tensor.shape[2] > 1
        expert_role = category in ("ffn_up", "ffn_gate", "ffn_down")
        return "MXFP4" if three_d and (arch != "bailingmoe3" or expert_role) else "Q8_0"
    if category == "token_embd":
        if ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if ft in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "Q4_K"
        return new
    attn_v = category in ("attn_v", "attn_qkv", "attn_kv_b")
    if ft in _IQ_LOW:
        if attn_v:
            st.i_attention_wv += 1
            if gqa >= 4 or n_expert >= 4:
                return "Q4_K"
            return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
        if n_expert == 8 and category == "attn_k":
            return "Q4_K"
        if category == "ffn_down":
            low = st.i_ffn_down < shape.n_layer // 8
            st.i_ffn_down += 1
            if low:
                return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
            return new
        if category == "attn_output":
            if n_expert == 8:
                return "Q5_K"
            if ft in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS"
            if ft in ("IQ2_S", "IQ2_M"):
                return "IQ3_S"
        return new
    if attn_v:
        i = st.i_attention_wv
        if ft == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif ft == "Q2_K_S" and gqa >= 4:
            new = "Q4_K"
        elif ft == "IQ3_XXS":
            new = "Q4_K" if gqa >= 4 else ("IQ3_S" if not st.has_imatrix else "IQ3_XXS")
        elif (ft in ("IQ3_XS", "IQ3_S") and gqa >= 4) or ft == "IQ3_M":
            new = "Q4_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ft == "Q3_K_L" or (ft in ("IQ4_NL", "IQ4_XS") and gqa >= 4):
            new = "Q5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and _more_bits(i, st.n_attention_wv):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if shape.is_70b_type and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if n_expert == 8:
            new = "Q8_0"
        st.i_attention_wv += 1
        return new
    if category == "attn_k":
        if n_expert == 8:
            return "Q8_0"
        if ft == "IQ3_XS":
            return "IQ3_XXS"
        if ft == "IQ3_XXS":
            return "IQ2_S"
        return new
    if category == "attn_q":
        if ft == "IQ3_XS":
            return "IQ3_XXS"
        if ft == "IQ3_XXS":
            return "IQ2_S"
        return new
    if category == "ffn_down":
        i_layer, n_layer = st.layer(st.i_ffn_down, tensor)
        st.i_ffn_down += 1
        return _ffn_down(st, new, i_layer, n_layer)
    if category == "attn_output":
        return _attn_output(ft, new, arch, n_expert)
    if category in ("ffn_gate", "ffn_up"):
        counter = st.i_ffn_gate if category == "ffn_gate" else st.i_ffn_up
        i_layer, n_layer = st.layer(counter, tensor)
        if category == "ffn_gate":
            st.i_ffn_gate += 1
        else:
            st.i_ffn_up += 1
        if ft == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            return "IQ3_XXS"
    return new


def _ffn_down(st: _State, new: str, i_layer: int, n_layer: int) -> str:
    ft, falcon, n_expert = st.ftype, st.shape.architecture == "falcon", st.shape.n_expert
    if ft == "Q2_K":
        return "Q3_K"
    if ft == "Q2_K_S":
        return "Q4_K" if i_layer < n_layer // 8 else new
    if ft == "IQ3_XXS" and not st.has_imatrix:
        return "Q4_K" if i_layer < n_layer // 8 else "Q3_K"
    if ft == "Q3_K_M":
        if i_layer < n_layer // 16:
            return "Q5_K"
        return "Q4_K" if not falcon or _more_bits(i_layer, n_layer) else "Q3_K"
    if ft == "IQ3_M" and (i_layer < n_layer // 8 or (n_expert == 8 and _more_bits(i_layer, n_layer))):
        return "Q4_K"
    if ft == "Q3_K_L":
        return "Q4_K" if falcon else "Q5_K"
    if ft == "Q4_K_M":
        if falcon:
            if i_layer < n_layer // 16:
                return "Q6_K"
            return "Q5_K" if _more_bits(i_layer, n_layer) else "Q4_K"
        return "Q6_K" if _more_bits(i_layer, n_layer) else new
    if i_layer < n_layer // 8 and ft in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
        return "Q5_K"
    if ft == "Q5_K_M" and _more_bits(i_layer, n_layer):
        return "Q6_K"
    if ft == "Q4_K_S" and not falcon and i_layer < n_layer // 8:
        return "Q5_K"
    if ft in ("Q4_0", "Q5_0") and st.has_imatrix and i_layer < n_layer // 8:
        return "Q4_1" if ft == "Q4_0" else "Q5_1"
    return new


def _attn_output(ft: str, new: str, arch: str, n_expert: int) -> str:
    if arch == "falcon":
        return "Q4_K" if ft == "Q3_K_L" else new
    if n_expert == 8:
        bumped = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
                  "IQ4_XS")  # fmt: skip
        return "Q5_K" if ft in bumped else new
    return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ft, new)


def _block(type_name: str) -> int:
    return ggml_types_by_name()[type_name].block_size


def _fallback(tensor: TensorShape, wanted: str) -> tuple[str, bool]:
    """tensor_type_fallback: (the type that fits the row length, whether it fell back)."""
    if tensor.shape[0] % _block(wanted) == 0:
        return wanted, False
    chosen = _FALLBACK.get(wanted, wanted)
    if tensor.shape[0] % _block(chosen):
        chosen = "F16"
    return chosen, True


@dataclass(frozen=True)
class TensorPlan:
    """The type of every tensor after a quantization to ``ftype``."""

    ftype: str
    types: Mapping[str, int]  # tensor name -> ggml type id, for every tensor
    fallbacks: int
    needs_imatrix: bool


def is_known_mix(ftype: str) -> bool:
    return ftype in _DEFAULT_TYPE


def plan_types(shape: ModelShape, ftype: str, *, has_imatrix: bool = False) -> TensorPlan:
    """What llama.cpp gives every tensor of ``shape`` when quantizing to ``ftype`` (a mix name)."""
    by_name = ggml_types_by_name()
    default = _DEFAULT_TYPE[ftype]
    tensors = llama_order(shape.tensors)
    names = {t.name for t in tensors}
    st = _State(
        shape,
        ftype,
        has_imatrix,
        n_attention_wv=sum(_category(t.name) in ("attn_v", "attn_qkv", "attn_kv_b") for t in tensors),
        tied="output.weight" not in names,
    )
    types: dict[str, int] = {}
    fallbacks = 0
    needs_imatrix = False
    for tensor in tensors:
        if not allows_quantization(tensor):
            types[tensor.name] = tensor.ggml_type
            continue
        new = default
        if default not in _FLOAT:
            new = _mix(st, default, tensor, _category(tensor.name))
            new, fell_back = _fallback(tensor, new)
            fallbacks += fell_back
        types[tensor.name] = by_name[new].id
        category = _category(tensor.name)
        if category not in ("output", "token_embd") and (new in _NEED_IMATRIX or (new == "Q2_K" and ftype == "Q2_K_S")):
            needs_imatrix = True
    return TensorPlan(ftype, types, fallbacks, needs_imatrix)


def weight_bytes(shape: ModelShape, plan: TensorPlan) -> dict[str, int]:
    """Bytes of every tensor's data after quantization (unpadded)."""
    table = ggml_types()
    out = {}
    for tensor in shape.tensors:
        kind = table[plan.types[tensor.name]]
        out[tensor.name] = tensor.n_elements // kind.block_size * kind.block_bytes
    return out
