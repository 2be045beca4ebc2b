"""The reference side of a causal model's quality report, computed once per job and kept.

The unquantized model reads the evaluation text once, in chunks of ``n_ctx`` tokens (BOS first). For
the second half of every chunk (each position then has at least n_ctx/2 tokens of context, as
llama-perplexity scores) it keeps the log probabilities of the whole vocabulary at every position (as
llama-perplexity's ``--kl-divergence-base`` keeps them; here as float32, so nothing is approximated:
positions x vocabulary x 4 bytes, 130 MB for 1,016 positions of a 32k vocabulary, in a scratch folder
for the length of the stage) and the log probability of the token that really follows. Each output then
costs one forward pass of its own: :func:`compare` scores it against the kept distributions, one chunk
at a time (the files are memory-mapped).

The text is read in rounds (jobs/stages.py): the reference reads a range of chunks, each output still
being measured reads the same range and merges it into what it had (:class:`Comparison` is kept in the
folder between rounds), and an output stops once the standard error of its mean KL is below
``STDERR_TARGET`` of the mean: a close output is read further, a clearly measured one is not.

Keeping only the reference's top k tokens (plus a bucket for the rest) was measured and dropped: on a
random-weight model, whose distributions are broad, top-256 of a 384-token vocabulary gave a KL 27%
below the full one. The standard error of the mean KL is reported beside it (positions taken as
independent, as llama-perplexity reports it).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.errors import InvalidArgument

SUMMARY = "reference.npz"
MIN_CHUNKS = 2  # the first round: the standard error needs a few hundred positions to mean anything
STDERR_TARGET = 0.05  # an output is measured enough when the KL's standard error is below this share of it
# progress(done, total): tokens read so far by one pass over the text, of all
Progress = Callable[[int, int], None]
FloatArray = npt.NDArray[np.float64]


def _scored_per_chunk(n_ctx: int) -> int:
    """Positions scored in a chunk: from n_ctx/2 to the one before the last (its next token is known)."""
    return n_ctx - 1 - n_ctx // 2


def _logprobs_name(start: int) -> str:
    return f"logprobs-{start:06d}.npy"


@dataclass(frozen=True, eq=False)
class ReferenceLogits:
    """What the reference model predicted at every scored position of the chunks read so far."""

    chunks: npt.NDArray[np.int32]  # (n_chunks, n_ctx): every chunk of the text, token ids, BOS first
    ranges: tuple[tuple[int, int, npt.NDArray[np.float32], npt.NDArray[np.float64]], ...]
    # per range of chunks read: (start, stop, log probabilities (positions, vocabulary) memory-mapped,
    # log probability of the token that follows each position (float64: perplexity))
    eval_set: str

    @property
    def n_ctx(self) -> int:
        return int(self.chunks.shape[1])

    @property
    def n_chunks(self) -> int:
        return int(self.chunks.shape[0])

    @property
    def first(self) -> int:
        """The first scored position of a chunk."""
        return self.n_ctx // 2

    @property
    def per_chunk(self) -> int:
        return _scored_per_chunk(self.n_ctx)

    @property
    def read(self) -> int:
        """Chunks read so far (from the first)."""
        return max((stop for _, stop, _, _ in self.ranges), default=0)

    def rows(self, chunk: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """The log probabilities and target log probabilities of one chunk read."""
        for start, stop, logprobs, targets in self.ranges:
            if start <= chunk < stop:
                at = slice((chunk - start) * self.per_chunk, (chunk - start + 1) * self.per_chunk)
                return logprobs[at], targets[at]
        raise ValueError(f"chunk {chunk} has not been read by the reference")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ReferenceLogits:
        """What :func:`start_reference` and :func:`compute_reference` wrote into ``folder``."""
        base = pathlib.Path(folder)
        with np.load(base / SUMMARY, allow_pickle=False) as data:
            chunks, eval_set = data["chunks"], str(data["eval_set"])
        ranges = []
        for path in sorted(base.glob("logprobs-*.npy")):
            start = int(path.stem.split("-")[1])
            logprobs = np.load(path, mmap_mode="r", allow_pickle=False)
            targets = np.load(path.with_name(f"targets-{start:06d}.npy"), allow_pickle=False)
            ranges.append((start, start + len(targets) // _scored_per_chunk(chunks.shape[1]), logprobs, targets))
        return cls(chunks, tuple(ranges), eval_set)


def log_softmax(logits: npt.NDArray[np.float32]) -> FloatArray:
    values: FloatArray = logits.astype(np.float64)
    values -= values.max(axis=-1, keepdims=True)
    result: FloatArray = values - np.log(np.exp(values).sum(axis=-1, keepdims=True))
    return result


def rounded_log_softmax(logits: npt.NDArray[np.float32]) -> FloatArray:
    """Log probabilities rounded to float32, as the reference's are kept (a model against itself then
    differs by nothing), in float64 for the sums."""
    result: FloatArray = log_softmax(logits).astype(np.float32).astype(np.float64)
    return result


def chunk_logits(model: Any, chunk: list[int]) -> npt.NDArray[np.float32]:
    """The logits of every position of ``chunk``, read from an empty context."""
    model.reset()
    model.eval(chunk)
    return np.array(model.scores[: len(chunk)], dtype=np.float32)


def text_chunks(model: Any, text: str, n_ctx: int, max_chunks: int) -> npt.NDArray[np.int32]:
    """The text's tokens in whole chunks of ``n_ctx`` (at most ``max_chunks``), each starting with BOS."""
    tokens = model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    chunks = [tokens[i : i + n_ctx] for i in range(0, len(tokens) - n_ctx + 1, n_ctx)][:max_chunks]
    if not chunks:
        raise InvalidArgument(f"the evaluation text has {len(tokens)} tokens; at least {n_ctx} are needed")
    bos = model.token_bos()
    if bos >= 0:
        chunks = [[bos, *chunk[1:]] for chunk in chunks]
    return np.array(chunks, dtype=np.int32)


def start_reference(folder: str | os.PathLike[str], chunks: npt.NDArray[np.int32], eval_set: str) -> None:
    """Record the text's chunks in ``folder``, before any of them is read."""
    with open(pathlib.Path(folder) / SUMMARY, "wb") as out:
        np.savez(out, chunks=chunks, eval_set=np.array(eval_set))


def compute_reference(
    model: Any, folder: str | os.PathLike[str], start: int, stop: int, *, progress: Progress | None = None
) -> ReferenceLogits:
    """Run the reference ``model`` (a llama_cpp.Llama with every position's logits) over chunks
    [start, stop) of the text recorded in ``folder``, writing what it predicted there."""
    base = pathlib.Path(folder)
    kept = ReferenceLogits.load(base)
    if start != kept.read or not start < stop <= kept.n_chunks:
        raise ValueError(f"chunks {start}..{stop} do not follow the {kept.read} read of {kept.n_chunks}")
    first, n_ctx, per_chunk = kept.first, kept.n_ctx, kept.per_chunk
    logprobs = None
    targets = []
    for index in range(start, stop):
        chunk = kept.chunks[index]
        scored = rounded_log_softmax(chunk_logits(model, chunk.tolist())[first : n_ctx - 1])
        if logprobs is None:
            shape = ((stop - start) * per_chunk, scored.shape[1])
            path = base / _logprobs_name(start)
            logprobs = np.lib.format.open_memmap(path.with_suffix(".partial"), mode="w+", dtype=np.float32, shape=shape)
        logprobs[(index - start) * per_chunk : (index - start + 1) * per_chunk] = scored
        following = chunk[first + 1 : n_ctx]
        targets.append(scored[np.arange(len(following)), following])
        if progress is not None:
            progress((index - start + 1) * n_ctx, (stop - start) * n_ctx)
    assert logprobs is not None
    logprobs.flush()
    del logprobs
    np.save(base / f"targets-{start:06d}.npy", np.concatenate(targets))
    os.replace((base / _logprobs_name(start)).with_suffix(".partial"), base / _logprobs_name(start))
    return ReferenceLogits.load(base)


@dataclass(frozen=True)
class Comparison:
    """An output scored against the reference over the chunks read so far."""

    kl: FloatArray  # per scored position
    top1_agree: int
    nll_reference: float
    nll_quantized: float

    @property
    def positions(self) -> int:
        return int(self.kl.size)

    @property
    def kl_standard_error(self) -> float:
        n = self.positions
        return float(self.kl.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    @property
    def measured(self) -> bool:
        """Whether the mean KL is known to within STDERR_TARGET of itself."""
        mean = float(self.kl.mean()) if self.positions else 0.0
        return self.positions > 1 and self.kl_standard_error <= STDERR_TARGET * mean

    def merged(self, other: Comparison) -> Comparison:
        return Comparison(
            np.concatenate([self.kl, other.kl]),
            self.top1_agree + other.top1_agree,
            self.nll_reference + other.nll_reference,
            self.nll_quantized + other.nll_quantized,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as out:
            sums = np.array([self.top1_agree, self.nll_reference, self.nll_quantized], dtype=np.float64)
            np.savez(out, kl=self.kl, sums=sums)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Comparison:
        with np.load(path, allow_pickle=False) as data:
            agree, nll_reference, nll_quantized = data["sums"].tolist()
            return cls(data["kl"], int(agree), nll_reference, nll_quantized)


def compare(
    model: Any, reference: ReferenceLogits, start: int = 0, stop: int | None = None, *, progress: Progress | None = None
) -> Comparison:
    """One forward pass of the quantized ``model`` over chunks [start, stop) of the reference's (default:
    all it read), scored against it."""
    stop = reference.read if stop is None else stop
    first, n_ctx = reference.first, reference.n_ctx
    kl, agree, nll, nll_reference = [], 0, 0.0, 0.0
    for index in range(start, stop):
        chunk = reference.chunks[index]
        quant = rounded_log_softmax(chunk_logits(model, chunk.tolist())[first : n_ctx - 1])
        rows, targets = reference.rows(index)
        ref = rows.astype(np.float64)
        kl.append(np.maximum((np.exp(ref) * (ref - quant)).sum(axis=1), 0.0))
        agree += int((quant.argmax(axis=1) == ref.argmax(axis=1)).sum())
        following = chunk[first + 1 : n_ctx]
        nll -= float(quant[np.arange(len(following)), following].sum())
        nll_reference -= float(targets.sum())
        if progress is not None:
            progress((index - start + 1) * n_ctx, (stop - start) * n_ctx)
    return Comparison(np.concatenate(kl), agree, nll_reference, nll)
