"""What quantization cost, measured with llama.cpp itself.

Causal language models: both models read the same token chunks; for the second half of each chunk
(every position then has at least n_ctx/2 tokens of context, as llama.cpp's perplexity tool does) the
KL divergence KL(reference || quantized) of the next-token distributions, whether the most likely next
token agrees, and the perplexity of each model on the real next tokens. Both models stay loaded and the
text is processed chunk by chunk, so memory is the two models plus one chunk of logits of each
(n_ctx * vocabulary * 4 bytes) — never the whole text's distributions.

Embedding models: the pooled embedding of every sentence by both models, their cosine similarity
(mean and minimum), and for each query whether the top-k retrieved sentences agree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.gguf.reader import read_gguf_header
from quantledger.jobs.model import Quality as QualityReport

FloatArray = npt.NDArray[np.float64]
# progress(done, total): chunks (causal) or texts (embedding) evaluated so far, of all
Progress = Callable[[int, int], None]
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "jina-bert-v2", "modern-bert", "t5encoder"})


def _data(name: str) -> str:
    return resources.files("quantledger.quality").joinpath("data", name).read_text(encoding="utf-8")


@functools.cache
def default_eval_text() -> str:
    """The evaluation text that ships with quantledger (written for it)."""
    return _data("eval_text.txt")


@functools.cache
def default_embedding_set() -> tuple[list[str], list[str]]:
    """(corpus sentences, queries) that ship with quantledger."""
    data = json.loads(_data("embedding_set.json"))
    return list(data["corpus"]), list(data["queries"])


def _label(name: str, content: str) -> str:
    return f"{name}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"


def is_embedding_model(path: str | os.PathLike[str]) -> bool:
    header = read_gguf_header(path)
    architecture = header.metadata.get("general.architecture")
    if architecture in EMBEDDING_ARCHITECTURES:
        return True
    return isinstance(architecture, str) and f"{architecture}.pooling_type" in header.metadata


def _require(path: str | os.PathLike[str]) -> str:
    if not pathlib.Path(path).is_file():
        raise SourceNotFound(f"model {path} does not exist")
    return str(path)


def _load(path: str, *, n_ctx: int, threads: int, embedding: bool = False) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads or os.cpu_count() or 1,
        logits_all=not embedding,
        embedding=embedding,
        verbose=False,
    )


def _log_softmax(logits: npt.NDArray[np.float32]) -> FloatArray:
    values: FloatArray = logits.astype(np.float64)
    values -= values.max(axis=-1, keepdims=True)
    result: FloatArray = values - np.log(np.exp(values).sum(axis=-1, keepdims=True))
    return result


def _chunk_logits(model: Any, chunk: list[int]) -> npt.NDArray[np.float32]:
    model.reset()
    model.eval(chunk)
    return np.array(model.scores[: len(chunk)], dtype=np.float32)


def evaluate_causal(
    reference_gguf: str | os.PathLike[str],
    quantized_gguf: str | os.PathLike[str],
    text: str,
    *,
    n_ctx: int = 256,
    max_chunks: int = 8,
    threads: int = 0,
    eval_set: str = "",
    progress: Progress | None = None,
) -> QualityReport:
    """KL divergence, top-1 agreement and perplexity of ``quantized_gguf`` against ``reference_gguf``;
    ``progress`` hears of every chunk both models have read."""
    reference_path, quantized_path = _require(reference_gguf), _require(quantized_gguf)
    reference = _load(reference_path, n_ctx=n_ctx, threads=threads)
    tokens = reference.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    chunks = [tokens[i : i + n_ctx] for i in range(0, len(tokens) - n_ctx + 1, n_ctx)][:max_chunks]
    if len(chunks) < 1:
        raise InvalidArgument(f"the evaluation text has {len(tokens)} tokens; at least {n_ctx} are needed")
    quantized = _load(quantized_path, n_ctx=n_ctx, threads=threads)
    bos = reference.token_bos()
    first = n_ctx // 2
    kld: list[FloatArray] = []
    agree = 0
    nll_reference = 0.0
    nll_quantized = 0.0
    positions = 0
    if progress is not None:
        progress(0, len(chunks))
    for done, chunk in enumerate(chunks, 1):
        if bos >= 0:
            chunk = [bos, *chunk[1:]]
        ref = _log_softmax(_chunk_logits(reference, chunk)[first : n_ctx - 1])
        quant = _log_softmax(_chunk_logits(quantized, chunk)[first : n_ctx - 1])
        targets = np.asarray(chunk[first + 1 : n_ctx])
        rows = np.arange(len(targets))
        kld.append((np.exp(ref) * (ref - quant)).sum(axis=-1))
        agree += int((ref.argmax(axis=-1) == quant.argmax(axis=-1)).sum())
        nll_reference -= float(ref[rows, targets].sum())
        nll_quantized -= float(quant[rows, targets].sum())
        positions += len(targets)
        if progress is not None:
            progress(done, len(chunks))
    divergences = np.maximum(np.concatenate(kld), 0.0)
    ppl_reference = float(np.exp(nll_reference / positions))
    ppl = float(np.exp(nll_quantized / positions))
    del reference, quantized
    return QualityReport(
        kind="causal",
        mean_kl_divergence=float(divergences.mean()),
        p99_kl_divergence=float(np.percentile(divergences, 99)),
        top1_agreement=agree / positions,
        perplexity_reference=ppl_reference,
        perplexity=ppl,
        perplexity_delta=(ppl - ppl_reference) / ppl_reference,
        items_evaluated=positions,
        eval_set=eval_set or _label("text", text),
    )


def _embeddings(path: str, texts: Sequence[str], threads: int, embedded: Callable[[], None]) -> FloatArray:
    model = _load(path, n_ctx=512, threads=threads, embedding=True)
    rows = []
    for text in texts:
        rows.append(model.embed(text))
        embedded()
    vectors = np.array(rows, dtype=np.float64)
    del model
    if vectors.ndim != 2:
        raise InvalidArgument(f"{path} does not pool token embeddings into one vector per text")
    normalized: FloatArray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


def evaluate_embedding(
    reference_gguf: str | os.PathLike[str],
    quantized_gguf: str | os.PathLike[str],
    sentences: Sequence[str],
    queries: Sequence[str],
    *,
    k: int = 3,
    threads: int = 0,
    eval_set: str = "",
    progress: Progress | None = None,
) -> QualityReport:
    """Cosine similarity of embeddings and top-k retrieval agreement against ``reference_gguf``;
    ``progress`` hears of every text embedded (by either model: twice the texts in all)."""
    reference_path, quantized_path = _require(reference_gguf), _require(quantized_gguf)
    if len(sentences) <= k or not queries:
        raise InvalidArgument(f"need more than {k} sentences and at least one query")
    texts = [*sentences, *queries]
    done = 0

    def embedded() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, 2 * len(texts))

    if progress is not None:
        progress(0, 2 * len(texts))
    ref = _embeddings(reference_path, texts, threads, embedded)
    quant = _embeddings(quantized_path, texts, threads, embedded)
    cosines = (ref * quant).sum(axis=1)
    corpus = len(sentences)

    def top_k(vectors: FloatArray) -> list[set[int]]:
        scores = vectors[corpus:] @ vectors[:corpus].T
        return [set(np.argsort(-row)[:k].tolist()) for row in scores]

    agreement = np.mean([len(a & b) / k for a, b in zip(top_k(ref), top_k(quant), strict=True)])
    return QualityReport(
        kind="embedding",
        mean_cosine_similarity=float(cosines.mean()),
        min_cosine_similarity=float(cosines.min()),
        topk_retrieval_agreement=float(agreement),
        items_evaluated=len(texts),
        eval_set=eval_set or _label("sentences", json.dumps([list(sentences), list(queries)])),
    )
