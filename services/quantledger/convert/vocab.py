"""Tokenizers into GGUF metadata: SentencePiece (tokenizer.model), BPE (tokenizer.json), WordPiece (BERT).

Token types follow llama.cpp: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

from quantledger.errors import SourceInvalid
from quantledger.json_files import read_json_object as _json

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp's pre-tokenizer names by model family (tokenizer.ggml.pre); the regexes behind them live in llama.cpp
_PRE_BY_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama-bpe", "mistral": "llama-bpe"}
_SPECIAL_KEYS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "llama" | "gpt2" | "bert"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str = "default"
    special: dict[str, int] = field(default_factory=dict)  # "bos" -> id …
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None
    token_type_count: int | None = None


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _apply_config(vocab: Vocab, folder: pathlib.Path, lookup: dict[str, int]) -> None:
    """Special tokens, add_bos/add_eos and the chat template from tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    config = _json(path) if path.is_file() else {}
    for key in _SPECIAL_KEYS:
        text = _token_text(config.get(f"{key}_token"))
        if text is not None and text in lookup:
            vocab.special.setdefault(key, lookup[text])
    if isinstance(config.get("add_bos_token"), bool):
        vocab.add_bos = config["add_bos_token"]
    if isinstance(config.get("add_eos_token"), bool):
        vocab.add_eos = config["add_eos_token"]
    if isinstance(config.get("chat_template"), str):
        vocab.chat_template = config["chat_template"]


def sentencepiece_vocab(folder: pathlib.Path) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(folder / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise SourceInvalid(f"tokenizer.model cannot be read: {exc}") from exc
    tokens, scores, types = [], [], []
    for token_id in range(processor.vocab_size()):
        tokens.append(processor.IdToPiece(token_id))
        scores.append(float(processor.GetScore(token_id)))
        if processor.IsUnknown(token_id):
            types.append(UNKNOWN)
        elif processor.IsControl(token_id):
            types.append(CONTROL)
        elif processor.IsUnused(token_id):
            types.append(UNUSED)
        elif processor.IsByte(token_id):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    vocab = Vocab("llama", tokens, types, scores=scores, add_bos=True, add_eos=False)
    for key, token_id in (("bos", processor.bos_id()), ("eos", processor.eos_id()), ("unk", processor.unk_id())):
        if token_id >= 0:
            vocab.special[key] = token_id
    _apply_config(vocab, folder, {t: i for i, t in enumerate(tokens)})
    return vocab


def bpe_vocab(folder: pathlib.Path, model_type: str) -> Vocab:
    data = _json(folder / "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise SourceInvalid(f"tokenizer.json holds a {model.get('type')!r} model, not BPE")
    lookup: dict[str, int] = dict(model.get("vocab") or {})
    special = set()
    for added in data.get("added_tokens") or []:
        lookup[added["content"]] = int(added["id"])
        if added.get("special"):
            special.add(added["content"])
    size = max(lookup.values()) + 1 if lookup else 0
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, token_id in lookup.items():
        tokens[token_id] = text
        types[token_id] = (
            CONTROL if text in special else (USER_DEFINED if text not in (model.get("vocab") or {}) else NORMAL)
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    vocab = Vocab("gpt2", tokens, types, merges=merges, pre=_PRE_BY_MODEL_TYPE.get(model_type, "default"))
    _apply_config(vocab, folder, lookup)
    return vocab


def wordpiece_vocab(folder: pathlib.Path, config: dict[str, Any]) -> Vocab:
    """BERT vocabulary in llama.cpp's "phantom space" form: word starts get "▁", "##" continuations lose it."""
    path = folder / "tokenizer.json"
    if path.is_file():
        data = _json(path)
        lookup: dict[str, int] = dict((data.get("model") or {}).get("vocab") or {})
        special = {a["content"] for a in data.get("added_tokens") or [] if a.get("special")}
    else:
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        lookup = {line: i for i, line in enumerate(lines)}
        special = {t for t in lookup if t.startswith("[") and t.endswith("]")}
    tokens = [""] * (max(lookup.values()) + 1)
    types = [UNUSED] * len(tokens)
    for text, token_id in lookup.items():
        if text in special:
            tokens[token_id], types[token_id] = text, CONTROL
        elif text.startswith("##"):
            tokens[token_id], types[token_id] = text[2:], NORMAL
        else:
            tokens[token_id], types[token_id] = "\u2581" + text, NORMAL
    vocab = Vocab("bert", tokens, types, add_bos=True, add_eos=False)
    names = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
    for key, text in names.items():
        if text in lookup:
            vocab.special[key] = lookup[text]
    if "cls" in vocab.special:
        vocab.special["bos"] = vocab.special["cls"]
    _apply_config(vocab, folder, lookup)
    vocab.token_type_count = int(config.get("type_vocab_size", 2))
    return vocab


def tokenizer_kind(folder: pathlib.Path, architecture_kind: str, hf_architecture: str) -> str:
    if hf_architecture.startswith("Bert"):
        return "wordpiece"
    if (folder / "tokenizer.model").is_file():
        return "spm"
    if (folder / "tokenizer.json").is_file():
        return "bpe"
    raise SourceInvalid(f"{folder} has no tokenizer (tokenizer.model or tokenizer.json)")


def load_vocab(folder: pathlib.Path, kind: str, config: dict[str, Any]) -> Vocab:
    if kind == "spm":
        return sentencepiece_vocab(folder)
    if kind == "bpe":
        return bpe_vocab(folder, str(config.get("model_type", "")))
    return wordpiece_vocab(folder, config)
