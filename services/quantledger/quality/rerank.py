"""Cross-encoders (rerankers) scored with llama.cpp, and what quantization cost them (docs/QUALITY.md).

A reranker GGUF is a BERT-family model whose ``{arch}.pooling_type`` is LLAMA_POOLING_TYPE_RANK: llama.cpp
runs the classification head on the first token and returns one score per sequence. A (query, passage)
pair is laid out by the model's ``tokenizer.chat_template.rerank`` when it has one (the built-in
converter writes it: ``[CLS]{query}[SEP]{document}[SEP]`` for BERT, ``<s>{query}</s></s>{document}</s>``
for RoBERTa), tokenized with special tokens parsed, exactly as llama.cpp's server does for /rerank;
without one, as the server does then (BOS, query, EOS, SEP, passage, EOS, each where the vocabulary adds
it). llama.cpp adds the token-type (segment) embedding of type 0 to every token: a BERT cross-encoder
trained with its passage as segment 1 is scored as if the passage were segment 0 (the converter marks
such a model with ``quantledger.token_types_dropped``).

:func:`score_pairs` runs in a worker process (quantize/worker.py, modes ``evaluate`` and ``score_pairs``),
like every llama.cpp call. :func:`evaluate_reranker` scores the shipped rank set (``data/rank_set.json``)
with the reference and the output and reports, per query then averaged:

- against the reference: NDCG@5 with the reference's scores as graded relevance (ranking.reference_gains),
  MAP and precision@5 with the reference's top 5 passages as the relevant ones, and Kendall's tau-b of the
  two score lists (rank agreement);
- against the labels: NDCG@5 (the labels 0/1/2 as gains), MAP and precision@5 (label >= 1 relevant) of the
  output, and the reference's NDCG@5 (what the output is to be compared with).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.gguf.reader import GgufHeader, read_gguf_header
from quantledger.jobs.model import Quality as QualityReport
from quantledger.quality import ranking

RANK_POOLING = 4  # llama.h LLAMA_POOLING_TYPE_RANK
RERANK_CTX = 512  # tokens a pair may take at most (the context of BERT-family models), and a batch
AT = 5  # the cut-off of the report's NDCG and precision, and the reference's relevant passages
FloatArray = npt.NDArray[np.float64]
# progress(done, total): pairs scored so far (by either model), of all
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RankQuery:
    """One query of a rank set: its candidate passages and their graded relevance labels."""

    query: str
    passages: tuple[str, ...]
    relevance: tuple[int, ...]


def is_reranker_header(header: GgufHeader) -> bool:
    """Whether llama.cpp pools this model with its classification head (one score per sequence)."""
    architecture = header.metadata.get("general.architecture")
    return isinstance(architecture, str) and header.metadata.get(f"{architecture}.pooling_type") == RANK_POOLING


def is_reranker_model(path: str | os.PathLike[str]) -> bool:
    return pathlib.Path(path).is_file() and is_reranker_header(read_gguf_header(path))


def parse_rank_set(text: str) -> tuple[RankQuery, ...]:
    """A rank set in the JSON form of ``data/rank_set.json``; InvalidArgument names what is wrong."""
    try:
        data = json.loads(text)
        queries = tuple(
            RankQuery(
                str(item["query"]),
                tuple(str(p["text"]) for p in item["passages"]),
                tuple(int(p["relevance"]) for p in item["passages"]),
            )
            for item in data["queries"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"the rank set is not queries with passages and relevance labels: {exc}") from None
    if not queries or any(len(q.passages) < 2 or min(q.relevance) < 0 for q in queries):
        raise InvalidArgument("a rank set needs queries with at least two passages each and labels >= 0")
    return queries


@functools.cache
def default_rank_set() -> tuple[RankQuery, ...]:
    """The queries and graded passages that ship with quantledger (written for it)."""
    return parse_rank_set(rank_set_text())


@functools.cache
def rank_set_text() -> str:
    return resources.files("quantledger.quality").joinpath("data", "rank_set.json").read_text(encoding="utf-8")


def _load(path: str | os.PathLike[str], threads: int) -> Any:
    """The reranker at ``path``, its context the smaller of RERANK_CTX and the positions it was trained on."""
    import llama_cpp

    if not pathlib.Path(path).is_file():
        raise SourceNotFound(f"model {path} does not exist")
    header = read_gguf_header(path)
    if not is_reranker_header(header):
        raise InvalidArgument(f"{pathlib.Path(path).name} is not a reranker (its pooling type is not rank)")
    trained = header.metadata.get(f"{header.architecture}.context_length")
    n_ctx = min(RERANK_CTX, trained) if isinstance(trained, int) and trained > 0 else RERANK_CTX
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads or os.cpu_count() or 1,
        embedding=True,
        pooling_type=RANK_POOLING,
        verbose=False,
    )


def pair_tokens(model: Any, query: str, passage: str) -> list[int]:
    """The tokens llama.cpp's server feeds a reranker for (query, passage) (see the module docstring). As
    there, the texts go into the template with special tokens parsed: a passage holding the text "[SEP]"
    gets the separator token."""
    import llama_cpp

    template = llama_cpp.llama_model_chat_template(model.model, b"rerank")
    if template:
        texts = {"{query}": query, "{document}": passage}  # one pass: a query holding "{document}" stays as is
        prompt = re.sub(r"\{query\}|\{document\}", lambda m: texts[m.group()], template.decode("utf-8"))
        return list(model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    eos = llama_cpp.llama_vocab_eos(vocab)
    if eos < 0:
        eos = llama_cpp.llama_vocab_sep(vocab)
    add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    tokens = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
    tokens += model.tokenize(query.encode("utf-8"), add_bos=False, special=False)
    tokens += [eos] if add_eos else []
    tokens += [llama_cpp.llama_vocab_sep(vocab)] if llama_cpp.llama_vocab_get_add_sep(vocab) else []
    tokens += model.tokenize(passage.encode("utf-8"), add_bos=False, special=False)
    tokens += [eos] if add_eos else []
    return tokens


def score_pairs(
    path: str | os.PathLike[str],
    pairs: Sequence[tuple[str, str]],
    *,
    threads: int = 0,
    scored: Callable[[int], None] | None = None,
) -> FloatArray:
    """llama.cpp's relevance score of every (query, passage) pair by the reranker at ``path`` (the first
    output of rank pooling). Pairs are decoded several at a time, one sequence each (attention never
    crosses sequences); ``scored`` hears how many pairs each batch scored. Call it in a worker process."""
    import llama_cpp

    model = _load(path, threads)
    try:
        if llama_cpp.llama_model_n_cls_out(model.model) < 1:
            raise InvalidArgument(f"{pathlib.Path(path).name} has no classifier output")
        scores: list[float] = []
        batch: list[list[int]] = []
        max_sequences, n_ctx = int(model.context_params.n_seq_max), int(model.n_ctx())

        def decode() -> None:
            model._batch.reset()  # llama-cpp-python's batch and context, as Llama.embed uses them
            for seq_id, tokens in enumerate(batch):
                model._batch.add_sequence(tokens, seq_id, True)
            model._ctx.kv_cache_clear()
            model._ctx.decode(model._batch)
            for seq_id in range(len(batch)):
                scores.append(float(llama_cpp.llama_get_embeddings_seq(model._ctx.ctx, seq_id)[0]))
            if scored is not None:
                scored(len(batch))
            batch.clear()

        for index, (query, passage) in enumerate(pairs):
            tokens = pair_tokens(model, query, passage)
            if len(tokens) > n_ctx:
                raise InvalidArgument(f"pair {index} takes {len(tokens)} tokens, more than the model's {n_ctx}")
            if batch and (sum(map(len, batch)) + len(tokens) > n_ctx or len(batch) >= max_sequences):
                decode()
            batch.append(tokens)
        if batch:
            decode()
    finally:
        model.close()
    return np.array(scores, dtype=np.float64)


def rank_report(
    queries: Sequence[RankQuery], reference: FloatArray, output: FloatArray, eval_set: str
) -> QualityReport:
    """The reranker report of ``output``'s scores against ``reference``'s (both in the order of the
    queries' passages, query after query); see the module docstring."""
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    start = 0
    for query in queries:
        stop = start + len(query.passages)
        ref, out, labels = reference[start:stop], output[start:stop], np.array(query.relevance, dtype=np.float64)
        start = stop
        reference_top = ranking.top_n(ref, AT)
        add("ndcg_at_5", ranking.ndcg_at_k(out, ranking.reference_gains(ref), AT))
        add("mean_average_precision", ranking.average_precision(out, reference_top))
        add("precision_at_5", ranking.precision_at_k(out, reference_top, AT))
        add("rank_agreement", ranking.kendall_tau_b(out, ref))
        add("label_ndcg_at_5", ranking.ndcg_at_k(out, labels, AT))
        add("label_mean_average_precision", ranking.average_precision(out, labels))
        add("label_precision_at_5", ranking.precision_at_k(out, labels, AT))
        add("reference_label_ndcg_at_5", ranking.ndcg_at_k(ref, labels, AT))
    if start != reference.size or start != output.size:
        raise ValueError(f"{reference.size} and {output.size} scores for {start} pairs")
    mean = {name: float(np.mean(values)) for name, values in figures.items()}
    return QualityReport(
        kind="reranker",
        ndcg_at_5=mean["ndcg_at_5"],
        mean_average_precision=mean["mean_average_precision"],
        precision_at_5=mean["precision_at_5"],
        rank_agreement=mean["rank_agreement"],
        label_ndcg_at_5=mean["label_ndcg_at_5"],
        label_mean_average_precision=mean["label_mean_average_precision"],
        label_precision_at_5=mean["label_precision_at_5"],
        reference_label_ndcg_at_5=mean["reference_label_ndcg_at_5"],
        items_evaluated=start,
        eval_set=eval_set,
    )


def evaluate_reranker(
    reference_gguf: str | os.PathLike[str],
    quantized_gguf: str | os.PathLike[str],
    queries: Sequence[RankQuery],
    *,
    threads: int = 0,
    eval_set: str = "",
    progress: Progress | None = None,
    reference_scores: str | os.PathLike[str] | None = None,
) -> QualityReport:
    """Score every pair of ``queries`` with both models and report the output against the reference;
    ``progress`` hears of every pair scored (twice the pairs in all). ``reference_scores`` names a file
    that keeps the reference's scores for the job's other outputs: read when it is there (its pairs then
    count as scored at once), written when it is not."""
    if not pathlib.Path(quantized_gguf).is_file():
        raise InvalidArgument(
            f"{quantized_gguf} is not a GGUF file: the quality of a reranker is measured in llama.cpp"
        )
    pairs = [(q.query, passage) for q in queries for passage in q.passages]
    done = 0

    def scored(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, 2 * len(pairs))

    if progress is not None:
        progress(0, 2 * len(pairs))
    kept = pathlib.Path(reference_scores) if reference_scores else None
    reference = np.load(kept, allow_pickle=False) if kept is not None and kept.is_file() else None
    if reference is not None and reference.shape == (len(pairs),):
        scored(len(pairs))
    else:
        reference = score_pairs(reference_gguf, pairs, threads=threads, scored=scored)
        if kept is not None:  # written whole or not at all: a killed worker leaves no half file
            partial = kept.with_name(f".{kept.name}.{os.getpid()}.partial")
            with open(partial, "wb") as out:
                np.save(out, reference, allow_pickle=False)
            os.replace(partial, kept)
    output = score_pairs(quantized_gguf, pairs, threads=threads, scored=scored)
    return rank_report(queries, reference, output, eval_set)
