"""What the recommender knows of a model: its tensors (names and shapes) and its attention layout.

A ``ModelShape`` comes from one of four places, most exact first:

- a GGUF header: every tensor as llama.cpp will see it, and the metadata llama.cpp reads;
- a Hugging Face folder: the safetensors headers renamed as the converter names them;
- a Hugging Face config.json alone (a hub id): the tensors a decoder of that configuration has;
- a description: explicit hyper-parameters, or a parameter count and a family, which picks the
  nearest published configuration of that family and scales its depth to the count.

Tensors are listed in ggml order (row length first), as in a GGUF file.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantledger.errors import InvalidArgument, UnsupportedArchitecture
from quantledger.gguf.reader import GgufHeader
from quantledger.json_files import hf_architecture

# ggml type ids of the stored (unquantized) tensors the recommender assumes when no file is at hand
F32, F16 = 0, 1
# Architectures without a KV cache (encoders): llama.cpp creates no memory module for them.
ENCODER_ARCHITECTURES = frozenset(
    {
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "jina-bert-v2",
        "jina-bert-v3",
        "t5encoder",
        "modern-bert",
        "neo-bert",
        "eurobert",
    }
)
# llama.cpp's sliding-window layer pattern when the file does not say: every n-th layer is global.
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "llama4": 4, "exaone4": 4}
# Families a description can name, with published configurations (parameters, hyper-parameters).
_FAMILIES: dict[str, list[dict[str, int]]] = {
    "llama": [
        dict(params=1_236_000_000, n_layer=16, n_embd=2048, n_ff=8192, n_head=32, n_head_kv=8, n_vocab=128256, tied=1),
        dict(params=3_213_000_000, n_layer=28, n_embd=3072, n_ff=8192, n_head=24, n_head_kv=8, n_vocab=128256, tied=1),
        dict(params=6_738_000_000, n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32, n_vocab=32000),
        dict(params=8_030_000_000, n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=128256),
        dict(params=13_016_000_000, n_layer=40, n_embd=5120, n_ff=13824, n_head=40, n_head_kv=40, n_vocab=32000),
        dict(params=70_554_000_000, n_layer=80, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=8, n_vocab=128256),
        dict(params=405_853_000_000, n_layer=126, n_embd=16384, n_ff=53248, n_head=128, n_head_kv=8, n_vocab=128256),
    ],
    "mistral": [
        dict(params=7_248_000_000, n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=32768),
        dict(
            params=12_248_000_000,
            n_layer=40,
            n_embd=5120,
            n_ff=14336,
            n_head=32,
            n_head_kv=8,
            n_vocab=131072,
            head_dim=128,
        ),
        dict(
            params=23_572_000_000,
            n_layer=40,
            n_embd=5120,
            n_ff=32768,
            n_head=32,
            n_head_kv=8,
            n_vocab=131072,
            head_dim=128,
        ),
        dict(params=122_600_000_000, n_layer=88, n_embd=12288, n_ff=28672, n_head=96, n_head_kv=8, n_vocab=32768),
    ],
    "qwen2": [
        dict(params=494_000_000, n_layer=24, n_embd=896, n_ff=4864, n_head=14, n_head_kv=2, n_vocab=151936, tied=1),
        dict(params=1_544_000_000, n_layer=28, n_embd=1536, n_ff=8960, n_head=12, n_head_kv=2, n_vocab=151936, tied=1),
        dict(params=3_086_000_000, n_layer=36, n_embd=2048, n_ff=11008, n_head=16, n_head_kv=2, n_vocab=151936, tied=1),
        dict(params=7_616_000_000, n_layer=28, n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4, n_vocab=152064),
        dict(params=14_770_000_000, n_layer=48, n_embd=5120, n_ff=13824, n_head=40, n_head_kv=8, n_vocab=152064),
        dict(params=32_764_000_000, n_layer=64, n_embd=5120, n_ff=27648, n_head=40, n_head_kv=8, n_vocab=152064),
        dict(params=72_706_000_000, n_layer=80, n_embd=8192, n_ff=29568, n_head=64, n_head_kv=8, n_vocab=152064),
    ],
}
_FAMILY_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
_FAMILY_ALIASES = {"llama2": "llama", "llama3": "llama", "llama-3": "llama", "qwen": "qwen2", "qwen2.5": "qwen2",
                   "mixtral": "mistral"}  # fmt: skip


@dataclass(frozen=True)
class TensorShape:
    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    ggml_type: int  # the type it is stored in before quantization

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @functools.cached_property
    def layer(self) -> int:
        """The block the tensor belongs to, -1 for tensors outside the blocks (as llama.cpp parses it)."""
        match = re.match(r"^blk\.(\d+)\.", self.name)
        return int(match[1]) if match else -1


@dataclass(frozen=True)
class ModelShape:
    """A model as sizes and memory are computed from it."""

    architecture: str  # llama.cpp's name: "llama", "qwen2", "bert", ...
    name: str
    tensors: tuple[TensorShape, ...]
    n_layer: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer; 0 = the layer keeps no KV
    n_ff: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    context_length: int  # what the model was trained for
    sliding_window: int = 0  # 0 = no sliding-window layers
    swa_layers: tuple[bool, ...] = ()
    n_expert: int = 0
    n_expert_used: int = 0
    is_70b_type: bool = False  # llama.cpp's LLM_TYPE_70B, which changes the attn_v rule
    metadata_bytes: int = 0  # bytes of the key-value section (estimated when no file is at hand)
    header: GgufHeader | None = field(default=None, compare=False, repr=False)
    origin: str = "gguf"  # gguf | hf-folder | hf-config | hyperparameters | description

    @functools.cached_property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def has_kv_cache(self) -> bool:
        return self.architecture not in ENCODER_ARCHITECTURES

    @property
    def exact(self) -> bool:
        """True when the tensor list is the real one (a file or safetensors headers), not derived."""
        return self.origin in ("gguf", "hf-folder")

    def n_gqa(self) -> int:
        heads, kv = self.n_head[0], self.n_head_kv[0]
        return heads // kv if kv else 0


def _per_layer(value: object, n_layer: int, what: str) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) != n_layer:
            raise InvalidArgument(f"{what} has {len(value)} entries for {n_layer} layers")
        return tuple(int(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n_layer
    raise InvalidArgument(f"the model's metadata has no usable {what}")


def _swa_layers(arch: str, meta: Mapping[str, object], n_layer: int) -> tuple[int, tuple[bool, ...]]:
    window = meta.get(f"{arch}.attention.sliding_window")
    if not isinstance(window, int) or window <= 0:
        return 0, (False,) * n_layer
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return window, tuple(bool(p) for p in pattern[:n_layer])
    period = pattern if isinstance(pattern, int) and pattern > 0 else _SWA_PERIOD.get(arch, 0)
    if period <= 1:  # every layer slides (mistral v0.1 style)
        return window, (True,) * n_layer
    return window, tuple(i % period < period - 1 for i in range(n_layer))


def from_gguf(header: GgufHeader) -> ModelShape:
    """The shape of a GGUF file as llama.cpp loads it (split files: pass the merged header)."""
    meta = header.metadata
    arch = header.architecture
    if not arch:
        raise InvalidArgument(f"{header.path} has no general.architecture")

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{header.path} lacks {arch}.{key}")
        return value

    n_layer = number("block_count")
    n_embd = number("embedding_length")
    n_head = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layer, "attention.head_count")
    head_count_kv = meta.get(f"{arch}.attention.head_count_kv", meta.get(f"{arch}.attention.head_count"))
    n_head_kv = _per_layer(head_count_kv, n_layer, "attention.head_count_kv")
    first_heads = max(n_head) or 1
    key_length = number("attention.key_length", n_embd // first_heads)
    value_length = number("attention.value_length", key_length)
    ff = meta.get(f"{arch}.feed_forward_length", 0)
    n_ff = _per_layer(ff, n_layer, "feed_forward_length")
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = number("vocab_size", len(tokens) if isinstance(tokens, list) else 0)
    if n_vocab <= 0:
        embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        n_vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0
    window, swa = _swa_layers(arch, meta, n_layer)
    tensors = tuple(TensorShape(t.name, t.shape, t.ggml_type) for t in header.tensors)
    return ModelShape(
        architecture=arch,
        name=str(meta.get("general.name") or header.path),
        tensors=tensors,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
        key_length=key_length,
        value_length=value_length,
        context_length=number("context_length", 0),
        sliding_window=window,
        swa_layers=swa,
        n_expert=number("expert_count", 0),
        n_expert_used=number("expert_used_count", 0),
        is_70b_type=_is_70b(arch, n_layer, n_head[0], n_head_kv[0]),
        metadata_bytes=header.data_offset - sum(tensor_info_bytes(t.name, t.shape) for t in header.tensors),
        header=header,
        origin="gguf",
    )


def _is_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int) -> bool:
    """llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped-query attention, or an 80-layer qwen2."""
    if n_layer != 80:
        return False
    return arch in ("qwen2", "deci", "olmo") or (arch == "llama" and n_head != n_head_kv)


def tensor_info_bytes(name: str, shape: Sequence[int]) -> int:
    """Bytes of one tensor's entry in the GGUF header (name, dims, type, offset)."""
    dims = len(shape)
    while dims > 1 and shape[dims - 1] == 1:
        dims -= 1
    return 8 + len(name.encode()) + 4 + 8 * dims + 4 + 8


@dataclass(frozen=True)
class Hyperparameters:
    """A decoder described by its numbers; what a config.json or a person can give."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    head_dim: int = 0  # 0 = n_embd / n_head
    context_length: int = 4096
    tied_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    sliding_window: int = 0
    architecture: str = "llama"
    name: str = ""

    @classmethod
    def given(
        cls,
        n_layer: int,
        n_embd: int,
        n_ff: int,
        n_head: int,
        n_head_kv: int,
        n_vocab: int,
        *,
        head_dim: int = 0,
        context_length: int = 0,
        tied_embeddings: bool = False,
        n_expert: int = 0,
        n_expert_used: int = 0,
        architecture: str = "",
    ) -> Hyperparameters:
        """Numbers as a request gives them, 0 or empty meaning the default: n_head_kv = n_head,
        context_length = 4096, architecture = llama."""
        return cls(
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=n_ff,
            n_head=n_head,
            n_head_kv=n_head_kv or n_head,
            n_vocab=n_vocab,
            head_dim=head_dim,
            context_length=context_length or 4096,
            tied_embeddings=tied_embeddings,
            n_expert=n_expert,
            n_expert_used=n_expert_used,
            architecture=architecture or "llama",
        )

    def check(self) -> None:
        numbers = {"n_layer": self.n_layer, "n_embd": self.n_embd, "n_ff": self.n_ff, "n_head": self.n_head,
                   "n_head_kv": self.n_head_kv, "n_vocab": self.n_vocab}  # fmt: skip
        bad = [f"{k} = {v}" for k, v in numbers.items() if v <= 0]
        if bad:
            raise InvalidArgument(f"hyper-parameters must be positive: {', '.join(bad)}")
        if self.head_dim < 0 or self.context_length <= 0 or self.n_expert < 0 or self.n_expert_used < 0:
            raise InvalidArgument("head_dim, n_expert and n_expert_used must not be negative; context_length > 0")
        if self.n_head % self.n_head_kv:
            raise InvalidArgument(f"n_head_kv ({self.n_head_kv}) must divide n_head ({self.n_head})")
        if not self.head_dim and self.n_embd % self.n_head:
            raise InvalidArgument(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd}) or give head_dim")
        if self.n_layer > 512:
            raise InvalidArgument(f"n_layer {self.n_layer} is more than llama.cpp's 512 layers")


def from_hyperparameters(hp: Hyperparameters, origin: str = "hyperparameters") -> ModelShape:
    """The tensors llama.cpp's converter writes for a llama-style decoder with these numbers."""
    hp.check()
    head_dim = hp.head_dim or hp.n_embd // hp.n_head
    q_rows, kv_rows = hp.n_head * head_dim, hp.n_head_kv * head_dim
    tensors = [TensorShape("token_embd.weight", (hp.n_embd, hp.n_vocab), F16)]
    if not hp.tied_embeddings:
        tensors.append(TensorShape("output.weight", (hp.n_embd, hp.n_vocab), F16))
    tensors.append(TensorShape("output_norm.weight", (hp.n_embd,), F32))
    for i in range(hp.n_layer):
        blk = f"blk.{i}."
        layer = [
            TensorShape(blk + "attn_norm.weight", (hp.n_embd,), F32),
            TensorShape(blk + "attn_q.weight", (hp.n_embd, q_rows), F16),
            TensorShape(blk + "attn_k.weight", (hp.n_embd, kv_rows), F16),
            TensorShape(blk + "attn_v.weight", (hp.n_embd, kv_rows), F16),
            TensorShape(blk + "attn_output.weight", (q_rows, hp.n_embd), F16),
            TensorShape(blk + "ffn_norm.weight", (hp.n_embd,), F32),
        ]
        if hp.qkv_bias:
            layer += [
                TensorShape(blk + f"attn_{p}.bias", (n,), F32)
                for p, n in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))
            ]
        if hp.qk_norm:
            layer += [
                TensorShape(blk + "attn_q_norm.weight", (head_dim,), F32),
                TensorShape(blk + "attn_k_norm.weight", (head_dim,), F32),
            ]
        if hp.n_expert > 1:
            layer += [
                TensorShape(blk + "ffn_gate_inp.weight", (hp.n_embd, hp.n_expert), F32),
                TensorShape(blk + "ffn_gate_exps.weight", (hp.n_embd, hp.n_ff, hp.n_expert), F16),
                TensorShape(blk + "ffn_up_exps.weight", (hp.n_embd, hp.n_ff, hp.n_expert), F16),
                TensorShape(blk + "ffn_down_exps.weight", (hp.n_ff, hp.n_embd, hp.n_expert), F16),
            ]
        else:
            layer += [
                TensorShape(blk + "ffn_gate.weight", (hp.n_embd, hp.n_ff), F16),
                TensorShape(blk + "ffn_up.weight", (hp.n_embd, hp.n_ff), F16),
                TensorShape(blk + "ffn_down.weight", (hp.n_ff, hp.n_embd), F16),
            ]
        tensors += layer
    n_layer = hp.n_layer
    window, swa = (hp.sliding_window, (True,) * n_layer) if hp.sliding_window else (0, (False,) * n_layer)
    return ModelShape(
        architecture=hp.architecture,
        name=hp.name or f"{hp.architecture} {n_layer}x{hp.n_embd}",
        tensors=tuple(tensors),
        n_layer=n_layer,
        n_embd=hp.n_embd,
        n_vocab=hp.n_vocab,
        n_head=(hp.n_head,) * n_layer,
        n_head_kv=(hp.n_head_kv,) * n_layer,
        n_ff=(hp.n_ff,) * n_layer,
        key_length=head_dim,
        value_length=head_dim,
        context_length=hp.context_length,
        sliding_window=window,
        swa_layers=swa,
        n_expert=hp.n_expert,
        n_expert_used=hp.n_expert_used,
        is_70b_type=_is_70b(hp.architecture, n_layer, hp.n_head, hp.n_head_kv),
        metadata_bytes=estimated_metadata_bytes(hp.n_vocab),
        origin=origin,
    )


def estimated_metadata_bytes(n_vocab: int) -> int:
    """The key-value section of a converted model: mostly the vocabulary (pieces, scores, types, merges)."""
    return 4096 + n_vocab * 40


_HF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3", "MixtralForCausalLM": "llama", "Qwen2MoeForCausalLM": "qwen2moe"}  # fmt: skip


def hyperparameters_from_config(config: Mapping[str, Any], label: str) -> Hyperparameters:
    """A decoder's numbers from its Hugging Face config.json."""
    hf_name = hf_architecture(config)
    if hf_name not in _HF_ARCH:
        raise UnsupportedArchitecture(
            f"{label} is a {hf_name or 'model without config.architectures'}; from config.json alone the "
            f"recommender knows {', '.join(sorted(_HF_ARCH))}",
            architecture=hf_name,
        )
    try:
        heads = int(config["num_attention_heads"])
        return Hyperparameters(
            n_layer=int(config["num_hidden_layers"]),
            n_embd=int(config["hidden_size"]),
            n_ff=int(config.get("moe_intermediate_size") or config["intermediate_size"]),
            n_head=heads,
            n_head_kv=int(config.get("num_key_value_heads") or heads),
            n_vocab=int(config["vocab_size"]),
            head_dim=int(config.get("head_dim") or 0),
            context_length=int(config.get("max_position_embeddings") or 4096),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=hf_name.startswith("Qwen2"),
            qk_norm=hf_name.startswith("Qwen3"),
            n_expert=int(config.get("num_local_experts") or config.get("num_experts") or 0),
            n_expert_used=int(config.get("num_experts_per_tok") or 0),
            # llama.cpp's llama and qwen2/qwen3 graphs attend to the whole context: a config's
            # sliding_window (Mistral v0.1, Qwen2) does not shrink their KV cache
            sliding_window=0,
            architecture=_HF_ARCH[hf_name],
            name=str(config.get("_name_or_path") or label),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{label}: config.json lacks a usable {exc}") from exc


def from_description(parameters: int, family: str) -> ModelShape:
    """A model of ``family`` with about ``parameters`` weights: the nearest published configuration,
    its depth scaled to the count when none is within 10 %."""
    key = _FAMILY_ALIASES.get(family.lower(), family.lower()) if family else "llama"
    if key not in _FAMILIES:
        raise InvalidArgument(f"unknown family {family!r}; known: {', '.join(sorted(_FAMILIES))}")
    if parameters < 10_000_000 or parameters > 2_000_000_000_000:
        raise InvalidArgument(f"a parameter count of {parameters} is outside 10 million to 2 trillion")
    known = min(_FAMILIES[key], key=lambda c: abs(math.log(c["params"] / parameters)))
    n_layer = known["n_layer"]
    if abs(known["params"] / parameters - 1) > 0.10:
        per_layer = (known["params"] - _outside_layers(known)) / n_layer
        n_layer = max(1, min(512, round((parameters - _outside_layers(known)) / per_layer)))
    hp = Hyperparameters(
        n_layer=n_layer,
        n_embd=known["n_embd"],
        n_ff=known["n_ff"],
        n_head=known["n_head"],
        n_head_kv=known["n_head_kv"],
        n_vocab=known["n_vocab"],
        head_dim=known.get("head_dim", 0),
        context_length=8192,
        tied_embeddings=bool(known.get("tied", 0)),
        qkv_bias=key == "qwen2",
        architecture=_FAMILY_ARCH[key],
        name=f"{family or 'llama'} ~{parameters / 1e9:.1f}B",
    )
    return from_hyperparameters(hp, origin="description")


def _outside_layers(config: Mapping[str, int]) -> int:
    return config["n_embd"] * config["n_vocab"] * (1 if config.get("tied") else 2)
