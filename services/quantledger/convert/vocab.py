"""Tokenizers into GGUF metadata: SentencePiece (tokenizer.model), BPE (tokenizer.json), WordPiece (BERT),
XLM-RoBERTa's SentencePiece Unigram (sentencepiece.bpe.model).

Token types follow llama.cpp: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

from quantledger.client_files import folder_file, folder_has, read_capped
from quantledger.convert.model_checks import MAX_TOKEN_TYPES, MAX_VOCAB_SIZE, config_int
from quantledger.errors import SourceInvalid, quote_client
from quantledger.json_files import read_json_object as _json

MAX_TOKENIZER_MODEL_BYTES = 64 << 20
MAX_VOCAB_TXT_BYTES = 16 << 20

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
    # SentencePiece Unigram ("t5", llama.cpp's UGM tokenizer): the model's normalizer
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    precompiled_charsmap: bytes | None = None


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _apply_config(vocab: Vocab, folder: pathlib.Path, lookup: dict[str, int]) -> None:
    """Special tokens, add_bos/add_eos and the chat template from tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    config = _json(path) if folder_has(folder, path.name) else {}
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
    with folder_file(folder, "tokenizer.model") as handle:
        proto = read_capped(handle, MAX_TOKENIZER_MODEL_BYTES)
    if len(proto) > MAX_TOKENIZER_MODEL_BYTES:
        raise SourceInvalid(f"tokenizer.model is larger than {MAX_TOKENIZER_MODEL_BYTES} bytes")
    try:
        processor.LoadFromSerializedProto(proto)
    except (OSError, RuntimeError, TypeError) as exc:
        raise SourceInvalid("tokenizer.model cannot be read: it is not a SentencePiece model") from exc
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


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SourceInvalid(f"{what} must be an object, not {type(value).__name__}")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SourceInvalid(f"{what} must be a list, not {type(value).__name__}")
    return value


def _token_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_VOCAB_SIZE:
        raise SourceInvalid(f"{what} must be a token id in 0..{MAX_VOCAB_SIZE - 1}, not {value!r}"[:200])
    return value


def _vocab_map(value: object, what: str) -> dict[str, int]:
    """A token -> id object (tokenizer.json model.vocab), typed and within MAX_VOCAB_SIZE."""
    mapping = _object(value, what)
    if len(mapping) > MAX_VOCAB_SIZE:
        raise SourceInvalid(f"{what} holds {len(mapping)} tokens, more than {MAX_VOCAB_SIZE}")
    return {str(text): _token_id(token_id, f"{what}[{text!r}]") for text, token_id in mapping.items()}


def _added_tokens(data: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """tokenizer.json added_tokens as (content, id, special)."""
    found = []
    entries = _list(data.get("added_tokens"), "tokenizer.json added_tokens")
    if len(entries) > MAX_VOCAB_SIZE:
        raise SourceInvalid(f"tokenizer.json added_tokens holds more than {MAX_VOCAB_SIZE} entries")
    for index, added in enumerate(entries):
        where = f"tokenizer.json added_tokens[{index}]"
        entry = _object(added, where)
        content = entry.get("content")
        if not isinstance(content, str):
            raise SourceInvalid(f"{where}.content must be a string")
        found.append((content, _token_id(entry.get("id"), f"{where}.id"), bool(entry.get("special"))))
    return found


def bpe_vocab(folder: pathlib.Path, model_type: str) -> Vocab:
    data = _json(folder / "tokenizer.json")
    model = _object(data.get("model"), "tokenizer.json model")
    if model.get("type") != "BPE":
        raise SourceInvalid(f"tokenizer.json holds a {quote_client(model.get('type'), 40)} model, not BPE")
    base = _vocab_map(model.get("vocab"), "tokenizer.json model.vocab")
    lookup: dict[str, int] = dict(base)
    special = set()
    for content, token_id, is_special in _added_tokens(data):
        lookup[content] = token_id
        if is_special:
            special.add(content)
    size = max(lookup.values()) + 1 if lookup else 0
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, token_id in lookup.items():
        tokens[token_id] = text
        types[token_id] = CONTROL if text in special else (USER_DEFINED if text not in base else NORMAL)
    merges = []
    for index, merge in enumerate(_list(model.get("merges"), "tokenizer.json model.merges")):
        if isinstance(merge, str):
            merges.append(merge)
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
            merges.append(" ".join(merge))
        else:
            raise SourceInvalid(f"tokenizer.json model.merges[{index}] must be a string or a pair of strings")
    if len(merges) > MAX_VOCAB_SIZE:
        raise SourceInvalid(f"tokenizer.json model.merges holds more than {MAX_VOCAB_SIZE} merges")
    vocab = Vocab("gpt2", tokens, types, merges=merges, pre=_PRE_BY_MODEL_TYPE.get(model_type, "default"))
    _apply_config(vocab, folder, lookup)
    return vocab


def wordpiece_vocab(folder: pathlib.Path, config: dict[str, Any]) -> Vocab:
    """BERT vocabulary in llama.cpp's "phantom space" form: word starts get "▁", "##" continuations lose it."""
    path = folder / "tokenizer.json"
    if folder_has(folder, path.name):
        data = _json(path)
        model = _object(data.get("model"), "tokenizer.json model")
        lookup = _vocab_map(model.get("vocab"), "tokenizer.json model.vocab")
        special = {content for content, _, is_special in _added_tokens(data) if is_special}
    else:
        with folder_file(folder, "vocab.txt") as handle:
            raw = read_capped(handle, MAX_VOCAB_TXT_BYTES)
        if len(raw) > MAX_VOCAB_TXT_BYTES:
            raise SourceInvalid(f"vocab.txt is larger than {MAX_VOCAB_TXT_BYTES} bytes")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise SourceInvalid("vocab.txt is not UTF-8 text") from exc
        if len(lines) > MAX_VOCAB_SIZE:
            raise SourceInvalid(f"vocab.txt holds {len(lines)} tokens, more than {MAX_VOCAB_SIZE}")
        lookup = {line: i for i, line in enumerate(lines)}
        special = {t for t in lookup if t.startswith("[") and t.endswith("]")}
    if not lookup:
        raise SourceInvalid("the WordPiece vocabulary is empty")
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
    vocab.token_type_count = config_int(config, "type_vocab_size", default=2, maximum=MAX_TOKEN_TYPES)
    return vocab


XLM_ROBERTA_SPM = "sentencepiece.bpe.model"
_UNIGRAM = 1  # sentencepiece TrainerSpec.ModelType UNIGRAM


def xlm_roberta_vocab(folder: pathlib.Path, config: dict[str, Any]) -> Vocab:
    """XLM-RoBERTa's SentencePiece Unigram model (sentencepiece.bpe.model) for llama.cpp's UGM tokenizer
    ("t5"), in the ids transformers gives it (fairseq's): ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
    the model's own pieces from its id 3 on shifted up by one, ``<mask>`` last; the normalizer (its
    precompiled character map, the dummy prefix, whitespace folding) as the model defines it."""
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    with folder_file(folder, XLM_ROBERTA_SPM) as handle:
        proto = read_capped(handle, MAX_TOKENIZER_MODEL_BYTES)
    if len(proto) > MAX_TOKENIZER_MODEL_BYTES:
        raise SourceInvalid(f"{XLM_ROBERTA_SPM} is larger than {MAX_TOKENIZER_MODEL_BYTES} bytes")
    model = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated, no stubs
    processor = SentencePieceProcessor()
    try:
        model.ParseFromString(proto)
        processor.LoadFromSerializedProto(proto)
    except Exception as exc:  # protobuf's DecodeError and sentencepiece's RuntimeError share no base
        raise SourceInvalid(f"{XLM_ROBERTA_SPM} cannot be read: it is not a SentencePiece model") from exc
    if model.trainer_spec.model_type != _UNIGRAM:
        raise SourceInvalid(f"{XLM_ROBERTA_SPM} is not a Unigram model, as XLM-RoBERTa's is")
    if (processor.unk_id(), processor.bos_id(), processor.eos_id()) != (0, 1, 2):
        raise SourceInvalid(f"{XLM_ROBERTA_SPM} does not number <unk>, <s>, </s> 0, 1, 2 as XLM-RoBERTa's does")
    size = processor.vocab_size()
    tokens, scores, types = ["<s>", "<pad>", "</s>", "<unk>"], [0.0] * 4, [CONTROL, CONTROL, CONTROL, UNKNOWN]
    for piece_id in range(3, size):
        tokens.append(processor.IdToPiece(piece_id))
        scores.append(float(processor.GetScore(piece_id)))
        types.append(
            CONTROL if processor.IsControl(piece_id) else
            UNUSED if processor.IsUnused(piece_id) else
            BYTE if processor.IsByte(piece_id) else
            UNKNOWN if processor.IsUnknown(piece_id) else NORMAL
        )  # fmt: skip
    tokens.append("<mask>")
    scores.append(0.0)
    types.append(CONTROL)
    vocab = Vocab("t5", tokens, types, scores=scores, add_bos=True, add_eos=True)
    vocab.special = {"bos": 0, "cls": 0, "pad": 1, "eos": 2, "sep": 2, "unk": 3, "mask": len(tokens) - 1}
    normalizer = model.normalizer_spec
    vocab.add_space_prefix = bool(normalizer.add_dummy_prefix)
    vocab.remove_extra_whitespaces = bool(normalizer.remove_extra_whitespaces)
    vocab.precompiled_charsmap = bytes(normalizer.precompiled_charsmap) or None
    vocab.token_type_count = config_int(config, "type_vocab_size", default=1, maximum=MAX_TOKEN_TYPES)
    return vocab


def tokenizer_kind(folder: pathlib.Path, architecture_kind: str, hf_architecture: str) -> str:
    if hf_architecture.startswith("Bert"):
        return "wordpiece"
    if hf_architecture.startswith("XLMRoberta"):
        if not folder_has(folder, XLM_ROBERTA_SPM):
            raise SourceInvalid(
                f"{folder.name} has no {XLM_ROBERTA_SPM}: an XLM-RoBERTa tokenizer is read from its SentencePiece "
                "model (tokenizer.json alone is not converted)"
            )
        return "xlm-roberta"
    if folder_has(folder, "tokenizer.model"):
        return "spm"
    if folder_has(folder, "tokenizer.json"):
        return "bpe"
    raise SourceInvalid(f"{folder} has no tokenizer (tokenizer.model or tokenizer.json)")


def load_vocab(folder: pathlib.Path, kind: str, config: dict[str, Any]) -> Vocab:
    """The folder's vocabulary; SourceInvalid when it is malformed or larger than the model's embedding
    (config.json vocab_size): llama.cpp needs one embedding row per token."""
    if kind == "spm":
        vocab = sentencepiece_vocab(folder)
    elif kind == "bpe":
        vocab = bpe_vocab(folder, str(config.get("model_type", "")))
    elif kind == "xlm-roberta":
        vocab = xlm_roberta_vocab(folder, config)
    else:
        vocab = wordpiece_vocab(folder, config)
    rows = config_int(config, "vocab_size", maximum=MAX_VOCAB_SIZE)
    if len(vocab.tokens) > rows:
        raise SourceInvalid(
            f"the tokenizer has {len(vocab.tokens)} tokens but config.json vocab_size (the embedding rows) is {rows}"
        )
    return vocab
