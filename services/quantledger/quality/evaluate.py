"""What quantization cost, measured with llama.cpp itself (docs/QUALITY.md).

Causal language models: both models read the same token chunks; for the second half of each chunk
(every position then has at least n_ctx/2 tokens of context, as llama.cpp's perplexity tool does) the
KL divergence KL(reference || quantized) of the next-token distributions with its standard error,
whether the most likely next token agrees, and the perplexity of each model on the real next tokens.
The reference's read of the text is kept in a folder (quality/reference.py), so a job reads it once and
each output costs one forward pass; a job reads it in rounds (jobs/stages.py, :func:`evaluate_more`).

Embedding models: the pooled embedding of every sentence by both models, their cosine similarity
(mean and minimum), for each query whether the top-k retrieved sentences agree, and recall@10 and
MRR@10 of the output's retrieval against the reference's (:func:`retrieval_against_reference`).

Rerankers (cross-encoders): quality/rerank.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.gguf.reader import GgufHeader, read_gguf_header
from quantledger.jobs.model import Quality as QualityReport
from quantledger.quality import ranking
from quantledger.quality.reference import (
    Comparison,
    ReferenceLogits,
    compare,
    compute_reference,
    start_reference,
    text_chunks,
)

FloatArray = npt.NDArray[np.float64]
# progress(done, total): chunks (causal) or texts (embedding) evaluated so far, of all
Progress = Callable[[int, int], None]
# tokens per chunk and chunks of the evaluation text a causal model reads (docs/QUALITY.md says why)
EVAL_CTX = 256
EVAL_CHUNKS = 64
RETRIEVAL_AT = 10  # the cut-off of an embedder's recall and MRR against the reference
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


def data_label(name: str, content: str) -> str:
    """An evaluation set's name: its own name and the first 16 hex digits of its SHA-256."""
    return f"{name}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"


def is_embedding_model(path: str | os.PathLike[str]) -> bool:
    return is_embedding_header(read_gguf_header(path))


def _pooling_type(header: GgufHeader) -> int:
    """The GGUF's ``{arch}.pooling_type`` (llama.cpp's LLAMA_POOLING_TYPE; 0 when it records none)."""
    value = header.metadata.get(f"{header.architecture}.pooling_type")
    return value if isinstance(value, int) else 0


def is_embedding_header(header: GgufHeader) -> bool:
    """Whether the model pools token embeddings (measured by cosine) rather than predicting tokens."""
    architecture = header.metadata.get("general.architecture")
    if architecture in EMBEDDING_ARCHITECTURES:
        return True
    return isinstance(architecture, str) and f"{architecture}.pooling_type" in header.metadata


def _require(path: str | os.PathLike[str]) -> str:
    if not (pathlib.Path(path).is_file() or is_hf_folder(path)):
        raise SourceNotFound(f"model {path} does not exist")
    return str(path)


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Hugging Face output folder (hf_export/), read with transformers, not llama.cpp."""
    return pathlib.Path(path, "config.json").is_file()


def _load(path: str, *, n_ctx: int, threads: int, embedding: bool = False, vocab_only: bool = False) -> Any:
    """The model at ``path``: a llama_cpp.Llama, or for an HF output folder its transformers stand-in."""
    if is_hf_folder(path) and not embedding and not vocab_only:
        from quantledger.hf_export.torch_models import TransformersCausal

        return TransformersCausal(path, threads)
    import llama_cpp

    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads or os.cpu_count() or 1,
        logits_all=not embedding,
        embedding=embedding,
        vocab_only=vocab_only,
        verbose=False,
    )


def begin_reference(
    reference_gguf: str | os.PathLike[str],
    text: str,
    folder: str | os.PathLike[str],
    *,
    n_ctx: int = EVAL_CTX,
    max_chunks: int = EVAL_CHUNKS,
    eval_set: str = "",
) -> int:
    """Cut ``text`` into the chunks the models will read (the reference's tokenizer) and record them in
    ``folder``; returns how many there are."""
    model = _load(_require(reference_gguf), n_ctx=n_ctx, threads=1, vocab_only=True)
    chunks = text_chunks(model, text, n_ctx, max_chunks)
    del model
    start_reference(folder, chunks, eval_set or data_label("text", text))
    return int(chunks.shape[0])


def read_reference(
    reference_gguf: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    start: int,
    stop: int,
    *,
    threads: int = 0,
    progress: Progress | None = None,
) -> ReferenceLogits:
    """The unquantized model reads chunks [start, stop) of the text recorded in ``folder``."""
    n_ctx = ReferenceLogits.load(folder).n_ctx
    model = _load(_require(reference_gguf), n_ctx=n_ctx, threads=threads)
    found = compute_reference(model, folder, start, stop, progress=progress)
    del model
    return found


def load_reference(
    reference_gguf: str | os.PathLike[str],
    text: str,
    folder: str | os.PathLike[str],
    *,
    n_ctx: int = EVAL_CTX,
    max_chunks: int = EVAL_CHUNKS,
    threads: int = 0,
    eval_set: str = "",
    progress: Progress | None = None,
) -> ReferenceLogits:
    """The unquantized model's read of all of ``text`` (quality/reference.py), written into ``folder``."""
    n_chunks = begin_reference(reference_gguf, text, folder, n_ctx=n_ctx, max_chunks=max_chunks, eval_set=eval_set)
    return read_reference(reference_gguf, folder, 0, n_chunks, threads=threads, progress=progress)


def causal_report(scored: Comparison, eval_set: str) -> QualityReport:
    positions = scored.positions
    ppl_reference = float(np.exp(scored.nll_reference / positions))
    ppl = float(np.exp(scored.nll_quantized / positions))
    return QualityReport(
        kind="causal",
        mean_kl_divergence=float(scored.kl.mean()),
        kl_divergence_stderr=scored.kl_standard_error,
        p99_kl_divergence=float(np.percentile(scored.kl, 99)),
        top1_agreement=scored.top1_agree / positions,
        perplexity_reference=ppl_reference,
        perplexity=ppl,
        perplexity_delta=(ppl - ppl_reference) / ppl_reference,
        items_evaluated=positions,
        eval_set=eval_set,
    )


def evaluate_causal(
    reference_gguf: str | os.PathLike[str],
    quantized_gguf: str | os.PathLike[str],
    text: str,
    *,
    n_ctx: int = EVAL_CTX,
    max_chunks: int = EVAL_CHUNKS,
    threads: int = 0,
    eval_set: str = "",
    progress: Progress | None = None,
    reference: ReferenceLogits | None = None,
) -> QualityReport:
    """KL divergence (with its standard error), top-1 agreement and perplexity of ``quantized_gguf``
    against ``reference_gguf`` over all of ``text``, or against the ``reference`` read of it computed
    before (one forward pass then); ``progress`` hears of the tokens read by both passes (one, given
    ``reference``)."""
    quantized_path = _require(quantized_gguf)
    passes = 1 if reference is not None else 2

    def counted(offset: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total: progress(offset + done, passes * total)

    with contextlib.ExitStack() as stack:
        if reference is None:  # kept for this output alone, in a folder gone when it is scored
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="quantledger-reference-"))
            reference = load_reference(
                reference_gguf, text, folder, n_ctx=n_ctx, max_chunks=max_chunks, threads=threads,
                eval_set=eval_set, progress=counted(0),
            )  # fmt: skip
        quantized = _load(quantized_path, n_ctx=reference.n_ctx, threads=threads)
        tokens = reference.read * reference.n_ctx
        scored = compare(quantized, reference, progress=counted((passes - 1) * tokens))
        del quantized
    return causal_report(scored, reference.eval_set)


def evaluate_more(
    quantized_gguf: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    start: int,
    stop: int,
    state: str | os.PathLike[str],
    *,
    threads: int = 0,
    progress: Progress | None = None,
) -> tuple[QualityReport, bool]:
    """Score ``quantized_gguf`` on chunks [start, stop) the reference read into ``folder``, merged with
    what ``state`` kept of the chunks before (and kept there again); the report over all of them and
    whether its mean KL is measured closely enough to stop (reference.STDERR_TARGET)."""
    reference = ReferenceLogits.load(folder)
    quantized = _load(_require(quantized_gguf), n_ctx=reference.n_ctx, threads=threads)
    scored = compare(quantized, reference, start, stop, progress=progress)
    del quantized
    if start > 0:
        scored = Comparison.load(state).merged(scored)
    scored.save(state)
    return causal_report(scored, reference.eval_set), scored.measured


def _embeddings(
    path: str, texts: Sequence[str], threads: int, embedded: Callable[[], None], pooling: int = 0
) -> FloatArray:
    """Every text's embedding, unit length; an HF output folder pools as ``pooling`` (the reference's)."""
    if is_hf_folder(path):
        from quantledger.hf_export.torch_models import TransformersEmbedder

        model: Any = TransformersEmbedder(path, pooling, threads)
    else:
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


def retrieval_against_reference(
    reference: FloatArray, output: FloatArray, at: int = RETRIEVAL_AT
) -> tuple[float, float]:
    """(recall@at, MRR@at) of the output's retrieval, query by query (rows: queries, columns: corpus
    sentences, values: similarities), against the reference's: the relevant sentences are the
    reference's top ``at`` for recall and its first result for the reciprocal rank (quality/ranking.py)."""
    recall = [ranking.recall_at_k(out, ranking.top_n(ref, at), at) for ref, out in zip(reference, output, strict=True)]
    rr = [
        ranking.reciprocal_rank_at_k(out, ranking.top_n(ref, 1), at) for ref, out in zip(reference, output, strict=True)
    ]
    return float(np.mean(recall)), float(np.mean(rr))


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
    pooling = _pooling_type(read_gguf_header(reference_path))
    quant = _embeddings(quantized_path, texts, threads, embedded, pooling)
    cosines = (ref * quant).sum(axis=1)
    corpus = len(sentences)

    def top_k(vectors: FloatArray) -> list[set[int]]:
        scores = vectors[corpus:] @ vectors[:corpus].T
        return [set(np.argsort(-row)[:k].tolist()) for row in scores]

    agreement = np.mean([len(a & b) / k for a, b in zip(top_k(ref), top_k(quant), strict=True)])
    recall, mrr = retrieval_against_reference(ref[corpus:] @ ref[:corpus].T, quant[corpus:] @ quant[:corpus].T)
    return QualityReport(
        kind="embedding",
        mean_cosine_similarity=float(cosines.mean()),
        min_cosine_similarity=float(cosines.min()),
        topk_retrieval_agreement=float(agreement),
        recall_at_10=recall,
        mrr_at_10=mrr,
        items_evaluated=len(texts),
        eval_set=eval_set or data_label("sentences", json.dumps([list(sentences), list(queries)])),
    )
