"""Random-weight cross-encoders (BertForSequenceClassification) with a trained WordPiece tokenizer, and an
independent numpy forward pass of them as transformers computes one (for the reranker tests)."""

from __future__ import annotations

import collections
import json
import math
import pathlib
from collections.abc import Callable

import numpy as np
from hf_models import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from quantledger.convert.safetensors_reader import SafetensorsFile
from quantledger.quality.evaluate import default_eval_text
from quantledger.quality.rerank import rank_set_text

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def add_encoder_blocks(add: Callable[..., None], prefix: str, layers: int, hidden: int, ffn: int) -> None:
    """Random weights of BERT's encoder blocks ``{prefix}.{0..layers-1}`` through ``add(name, shape, scale,
    ones=False)``."""
    for layer in range(layers):
        p = f"{prefix}.{layer}."
        for module, rows, cols in (("attention.self.query", hidden, hidden), ("attention.self.key", hidden, hidden),
                                   ("attention.self.value", hidden, hidden), ("attention.output.dense", hidden, hidden),
                                   ("intermediate.dense", ffn, hidden), ("output.dense", hidden, ffn)):  # fmt: skip
            add(p + module + ".weight", (rows, cols), 1.0 / math.sqrt(cols))
            add(p + module + ".bias", (rows,), 0.02)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            add(p + norm + ".weight", (hidden,), ones=True)
            add(p + norm + ".bias", (hidden,), 0.02)


def train_wordpiece(folder: pathlib.Path, vocab_size: int = 400) -> int:
    """An uncased BERT WordPiece tokenizer of ``vocab_size`` pieces (tokenizer.json, tokenizer_config.json)
    whose pairs are ``[CLS] A [SEP] B [SEP]`` with B as segment 1, as bert-base-uncased's. The vocabulary is
    chosen deterministically (tokenizers' own trainer is not): the special tokens, every character of the
    texts alone and as a "##" continuation, then their most frequent words (ties alphabetically)."""
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: collections.Counter[str] = collections.Counter()
    for text in (default_eval_text(), rank_set_text()):
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({c for word in words for c in word})
    pieces = [*SPECIAL, *characters, *(f"##{c}" for c in characters)]
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    pieces += frequent[: vocab_size - len(pieces)]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = pieces.index("[CLS]"), pieces.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n")
    config = {"do_lower_case": True, "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
              "pad_token": "[PAD]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tokenizer.get_vocab_size()


def write_cross_encoder(
    folder: pathlib.Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    ffn: int = 128,
    segment_rows_differ: bool = True,
    head: bool = True,
    seed: int = 16,
) -> pathlib.Path:
    """A random-weight BertForSequenceClassification with one label (a reranker); ``head=False`` leaves
    its classification head (pooler and classifier) out, ``segment_rows_differ=False`` makes the type-1
    segment embedding equal to type 0's."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_wordpiece(folder)
    config = {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn, "vocab_size": vocab,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "pad_token_id": 0, "torch_dtype": "float32",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], scale: float = 0.1, ones: bool = False) -> None:
        value = np.ones(shape) if ones else rng.standard_normal(shape) * scale
        tensors[name] = value.astype(np.float32)

    add("bert.embeddings.word_embeddings.weight", (vocab, hidden), 0.5)
    add("bert.embeddings.position_embeddings.weight", (512, hidden), 0.1)
    add("bert.embeddings.token_type_embeddings.weight", (2, hidden), 0.5)
    if not segment_rows_differ:
        tensors["bert.embeddings.token_type_embeddings.weight"][1] = tensors[
            "bert.embeddings.token_type_embeddings.weight"
        ][0]
    add("bert.embeddings.LayerNorm.weight", (hidden,), ones=True)
    add("bert.embeddings.LayerNorm.bias", (hidden,), 0.02)
    add_encoder_blocks(add, "bert.encoder.layer", layers, hidden, ffn)
    if head:
        add("bert.pooler.dense.weight", (hidden, hidden), 1.0 / math.sqrt(hidden))
        add("bert.pooler.dense.bias", (hidden,), 0.02)
        add("classifier.weight", (1, hidden), 1.0)
        add("classifier.bias", (1,), 0.1)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


class NumpyBert:
    """BERT's building blocks in float64 numpy over a model's weights ``w`` (the tests' independent forward
    passes): LayerNorm, dense layers and the post-norm encoder blocks with exact GELU."""

    def __init__(self, w: dict[str, np.ndarray], heads: int, eps: float) -> None:
        self.w, self.heads, self.eps = w, heads, eps
        self._erf = np.vectorize(math.erf)

    def norm(self, x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]

    def dense(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def encode(self, x: np.ndarray, prefix: str, layers: int) -> np.ndarray:
        """The encoder blocks ``{prefix}.{0..layers-1}`` over the embedded tokens ``x``."""
        n = x.shape[0]
        for layer in range(layers):
            p = f"{prefix}.{layer}"
            q, k, v = (
                self.dense(x, f"{p}.attention.self.{m}").reshape(n, self.heads, -1).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            attention = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
            attention = np.exp(attention - attention.max(-1, keepdims=True))
            context = (attention / attention.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, -1)
            x = self.norm(x + self.dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            hidden = self.dense(x, f"{p}.intermediate.dense")
            hidden = 0.5 * hidden * (1 + self._erf(hidden / np.sqrt(2)))
            x = self.norm(x + self.dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x


def numpy_scores(folder: pathlib.Path, pairs: list[tuple[str, str]], *, segments: bool) -> np.ndarray:
    """transformers' BertForSequenceClassification logits of each pair, written out in numpy from the
    folder's safetensors and tokenizer.json: ``segments=True`` types the passage as segment 1 (what
    transformers does), ``segments=False`` types every token 0 (what llama.cpp does)."""
    weights = SafetensorsFile(folder / "model.safetensors")
    w = {name: weights.read(name).astype(np.float64) for name in weights.tensors}
    config = json.loads((folder / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bert = NumpyBert(w, config["num_attention_heads"], config["layer_norm_eps"])
    scores = []
    for query, passage in pairs:
        encoding = tokenizer.encode(query, passage)
        ids, types = encoding.ids, encoding.type_ids if segments else [0] * len(encoding.ids)
        n = len(ids)
        x = w["bert.embeddings.word_embeddings.weight"][ids] + w["bert.embeddings.position_embeddings.weight"][:n]
        x = bert.norm(x + w["bert.embeddings.token_type_embeddings.weight"][types], "bert.embeddings.LayerNorm")
        x = bert.encode(x, "bert.encoder.layer", config["num_hidden_layers"])
        pooled = np.tanh(bert.dense(x[0], "bert.pooler.dense"))
        scores.append(float(bert.dense(pooled, "classifier")[0]))
    return np.array(scores)


def pair_token_ids(folder: pathlib.Path, query: str, passage: str) -> list[int]:
    """The tokenizer's own ids of a pair, [CLS] query [SEP] passage [SEP]."""
    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(query, passage).ids


def train_xlm_roberta_spm(folder: pathlib.Path, vocab_size: int = 400) -> int:
    """A SentencePiece Unigram model laid out as XLM-RoBERTa's sentencepiece.bpe.model (<unk> 0, <s> 1,
    </s> 2, NFKC normalization with its precompiled map); returns the model's vocabulary size in
    transformers' ids (the pieces, <pad> and <mask>)."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text(default_eval_text() + "\n" + "\n".join(json.loads(rank_set_text())["about"].split(". ")))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sentencepiece.bpe"), vocab_size=vocab_size,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (folder / "sentencepiece.bpe.vocab").unlink()
    config = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "mask_token": "<mask>", "tokenizer_class": "XLMRobertaTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return vocab_size + 2


def xlm_roberta_ids(folder: pathlib.Path, text: str) -> list[int]:
    """transformers' XLMRobertaTokenizer ids of ``text`` (no special tokens): the SentencePiece ids shifted
    by fairseq's offset of one, the unknown piece as <unk> (3)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
    return [3 if i == 0 else i + 1 for i in processor.encode(text)]


def xlm_roberta_pair_ids(folder: pathlib.Path, query: str, passage: str) -> list[int]:
    """<s> query </s></s> passage </s>, as XLMRobertaTokenizer pairs two texts."""
    return [0, *xlm_roberta_ids(folder, query), 2, 2, *xlm_roberta_ids(folder, passage), 2]


def write_xlm_roberta_cross_encoder(
    folder: pathlib.Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128, seed: int = 17
) -> pathlib.Path:
    """A random-weight XLMRobertaForSequenceClassification with one label (bge-reranker-base's architecture)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_xlm_roberta_spm(folder)
    config = {
        "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn, "vocab_size": vocab,
        "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0}, "torch_dtype": "float32",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], scale: float = 0.1, ones: bool = False) -> None:
        tensors[name] = (np.ones(shape) if ones else rng.standard_normal(shape) * scale).astype(np.float32)

    add("roberta.embeddings.word_embeddings.weight", (vocab, hidden), 0.5)
    add("roberta.embeddings.position_embeddings.weight", (514, hidden), 0.3)
    add("roberta.embeddings.token_type_embeddings.weight", (1, hidden), 0.1)
    add("roberta.embeddings.LayerNorm.weight", (hidden,), ones=True)
    add("roberta.embeddings.LayerNorm.bias", (hidden,), 0.02)
    add_encoder_blocks(add, "roberta.encoder.layer", layers, hidden, ffn)
    add("classifier.dense.weight", (hidden, hidden), 1.0 / math.sqrt(hidden))
    add("classifier.dense.bias", (hidden,), 0.02)
    add("classifier.out_proj.weight", (1, hidden), 1.0)
    add("classifier.out_proj.bias", (1,), 0.1)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def xlm_roberta_numpy_scores(folder: pathlib.Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """transformers' XLMRobertaForSequenceClassification logits, written out in numpy: positions from
    pad_token_id + 1, one token type, RobertaClassificationHead (dense, tanh, out_proj) on <s>."""
    weights = SafetensorsFile(folder / "model.safetensors")
    w = {name.removeprefix("roberta."): weights.read(name).astype(np.float64) for name in weights.tensors}
    config = json.loads((folder / "config.json").read_text())
    bert = NumpyBert(w, config["num_attention_heads"], config["layer_norm_eps"])
    offset = config["pad_token_id"] + 1
    scores = []
    for query, passage in pairs:
        ids = xlm_roberta_pair_ids(folder, query, passage)
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][offset : offset + n]
        )
        x = bert.norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        x = bert.encode(x, "encoder.layer", config["num_hidden_layers"])
        scores.append(float(bert.dense(np.tanh(bert.dense(x[0], "classifier.dense")), "classifier.out_proj")[0]))
    return np.array(scores)
