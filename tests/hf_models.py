"""Random-weight Hugging Face folders with real, trained tokenizer files (for the converter's tests)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from quantledger.quality.evaluate import default_eval_text


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors writer that stores uint16 arrays as BF16 bits (safetensors.numpy cannot express BF16)."""
    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": metadata or {}}
    offset = 0
    kinds = {
        np.dtype(np.float16): "F16",
        np.dtype(np.float32): "F32",
        np.dtype(np.uint16): "BF16",
        np.dtype(np.int32): "I32",
    }
    for name in names:
        size = tensors[name].nbytes
        header[name] = {
            "dtype": kinds[tensors[name].dtype],
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for name in names:
            handle.write(np.ascontiguousarray(tensors[name]).tobytes())


QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_sentencepiece(folder: pathlib.Path, vocab_size: int = 400) -> int:
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text(default_eval_text())
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
        # as Llama's own tokenizer.model: no normalization (llama.cpp applies none either)
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    return vocab_size


def train_qwen2_bpe(folder: pathlib.Path, vocab_size: int = 600) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator([default_eval_text()], trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "add_bos_token": False}))
    return tokenizer.get_vocab_size()


def write_causal_folder(
    folder: pathlib.Path,
    architecture: str,
    *,
    dtype: str = "F16",
    shards: int = 1,
    hidden: int = 256,
    ffn: int = 512,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
) -> pathlib.Path:
    """A small random-weight model of ``architecture`` (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_sentencepiece(folder) if architecture == "LlamaForCausalLM" else train_qwen2_bpe(folder)
    head_dim = hidden // heads
    model_type = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}[architecture]
    config = {
        "architectures": [architecture], "model_type": model_type, "hidden_size": hidden, "intermediate_size": ffn,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "vocab_size": vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": head_dim,
        "tie_word_embeddings": False, "torch_dtype": "float16" if dtype == "F16" else "bfloat16",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(len(architecture))
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], scale: float = 0.05, ones: bool = False) -> None:
        value = np.ones(shape, np.float32) if ones else rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        if dtype == "BF16":
            tensors[name] = (value.view(np.uint32) >> 16).astype(np.uint16)
        else:
            tensors[name] = value.astype(np.float16)

    add("model.embed_tokens.weight", (vocab, hidden))
    add("model.norm.weight", (hidden,), ones=True)
    add("lm_head.weight", (vocab, hidden))
    for layer in range(layers):
        p = f"model.layers.{layer}."
        add(p + "input_layernorm.weight", (hidden,), ones=True)
        add(p + "post_attention_layernorm.weight", (hidden,), ones=True)
        add(p + "self_attn.q_proj.weight", (heads * head_dim, hidden))
        add(p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden))
        add(p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden))
        add(p + "self_attn.o_proj.weight", (hidden, heads * head_dim))
        add(p + "mlp.gate_proj.weight", (ffn, hidden))
        add(p + "mlp.up_proj.weight", (ffn, hidden))
        add(p + "mlp.down_proj.weight", (hidden, ffn))
        if architecture == "Qwen2ForCausalLM":
            for m in ("q", "k", "v"):
                add(p + f"self_attn.{m}_proj.bias", (tensors[p + f"self_attn.{m}_proj.weight"].shape[0],))
        if architecture == "Qwen3ForCausalLM":
            add(p + "self_attn.q_norm.weight", (head_dim,), ones=True)
            add(p + "self_attn.k_norm.weight", (head_dim,), ones=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for index in range(shards):
        part = names[index::shards]
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
