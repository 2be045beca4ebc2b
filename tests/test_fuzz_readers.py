"""Fuzzed model files: every reader of client bytes either succeeds or raises a typed QuantledgerError.

Seeds are the files of tests/corpus/ (written by tests/fuzz_corpus.py: the valid minimal files and the
hostile ones the other tests build, plus regression seeds the fuzzer found). Each example takes a seed
and mutates it: bit flips, bytes set, truncation, inserted and removed runs, repeated chunks, 4- and
8-byte integers set to extremes anywhere in the file; JSON seeds are also mutated as structures (a value
anywhere replaced by an extreme number, a wrong type, a huge string, deep nesting; keys removed).

The only outcomes allowed per example: success, or a ``QuantledgerError``. Never another exception,
never more than ``EXAMPLE_SECONDS`` (Hypothesis ``deadline``, and a hard ``SIGALRM`` at
``HANG_SECONDS`` so a hang fails instead of stalling the run), never more than ``EXAMPLE_BYTES`` of
Python heap at its peak (tracemalloc, numpy's buffers included; memory-mapped file pages are not heap).

Budget (docs/SECURITY.md, "Fuzzing"): ``MAX_EXAMPLES`` (100) per target, eight targets, derandomized
(Hypothesis ``derandomize=True``: the same examples on every run, no example database), so CI is
reproducible; the whole file takes about 20 s of CPU (22-45 s wall on two shared, busy cores).
``QUANTLEDGER_FUZZ_EXAMPLES`` raises the count for a longer local hunt (other examples).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import pathlib
import shutil
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantledger.convert.converter import architecture_for
from quantledger.convert.lora import check_against_base, load_lora, merging_transform
from quantledger.convert.model_checks import check_gguf_source
from quantledger.convert.safetensors_reader import SafetensorsFile
from quantledger.convert.vocab import bpe_vocab, wordpiece_vocab
from quantledger.errors import QuantledgerError
from quantledger.gguf.reader import read_gguf_header
from quantledger.hf.pipeline import check_hf_config
from quantledger.json_files import read_hf_config
from quantledger.quantize.imatrix import check_covers, load_imatrix

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
MAX_EXAMPLES = int(os.environ.get("QUANTLEDGER_FUZZ_EXAMPLES", "100"))
EXAMPLE_SECONDS = 2.0  # Hypothesis deadline per example (a seed parses in milliseconds)
HANG_SECONDS = 10  # hard bound: SIGALRM fails the example
EXAMPLE_BYTES = 64 << 20  # peak Python heap per example
MERGE_ELEMENTS = 1 << 16  # a LoRA delta is merged when it is at most this big (the base weight's size)

FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=datetime.timedelta(seconds=EXAMPLE_SECONDS),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)


def seeds(folder: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / folder).iterdir()) if path.is_file()]


# ---------------------------------------------------------------------------------------------------
# mutations

_EXTREMES = (
    0,
    1,
    2**7,
    2**8 - 1,
    2**15,
    2**16 - 1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
)


@st.composite
def mutated_bytes(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed of ``pool`` with one to five byte-level mutations."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "remove", "repeat", "int")))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0, 0x7F, 0x80, 0xFF, ord("["), ord("{"), ord('"'), ord("\\"))))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            run = draw(st.one_of(st.binary(min_size=1, max_size=32), st.integers(1, 512).map(lambda n: b"\xff" * n)))
            data[at:at] = run
        elif op == "remove":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "repeat":
            chunk = bytes(data[at : at + draw(st.integers(1, 64))])
            data[at:at] = chunk * draw(st.integers(1, 8))
        elif op == "int":
            width, fmt = draw(st.sampled_from(((4, "<I"), (8, "<Q"))))
            value = draw(st.sampled_from(_EXTREMES)) & ((1 << (8 * width)) - 1)
            if at + width <= len(data):
                struct.pack_into(fmt, data, at, value)
    return bytes(data)


_JSON_VALUES = st.sampled_from(
    (0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 999_999, 1_000_000, 1.5, -0.0, 1e308, float("nan"), float("inf"),
     True, False, None, "", "x" * 5000, "\u0000\ud7ff", [], {}, [1, 2], {"a": "b"})
)  # fmt: skip


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:8]):
            yield from _paths(item, (*prefix, index))


def _replace(root: object, path: tuple[Any, ...], new: object, delete: bool = False) -> object:
    if not path:
        return new
    parent = root
    for step in path[:-1]:
        parent = parent[step]  # type: ignore[index]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = new  # type: ignore[index]
    return root


@st.composite
def mutated_json(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A JSON seed mutated as a structure (one to four edits), then maybe at the byte level too."""
    raw = draw(st.sampled_from(pool))
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if value is not None:
        for _ in range(draw(st.integers(1, 4))):
            path = draw(st.sampled_from(list(_paths(value))))
            op = draw(st.sampled_from(("value", "value", "delete", "deep", "wrap", "key")))
            if op == "value":  # a copy: the drawn list or object must not be changed by a later edit
                value = _replace(value, path, copy.deepcopy(draw(_JSON_VALUES)))
            elif op == "delete":
                value = _replace(value, path, None, delete=True)
            elif op == "deep":
                value = _replace(value, path, _nested(draw(st.sampled_from((10, 63, 64, 65, 500)))))
            elif op == "wrap":
                target = value
                for step in path:
                    target = target[step]  # type: ignore[index]
                value = _replace(value, path, [target])
            elif op == "key" and isinstance(value, dict):
                key = draw(st.sampled_from(("", "\u0000", "k" * 300, "architectures", "model", "r")))
                value[key] = copy.deepcopy(draw(_JSON_VALUES))
        raw = json.dumps(value).encode()
    if draw(st.booleans()):
        raw = draw(mutated_bytes([raw]))
    return raw


# ---------------------------------------------------------------------------------------------------
# the per-example bounds


class Hang(BaseException):
    """Raised by SIGALRM: a BaseException, so no reader's ``except Exception`` can swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang(f"an example ran past the hard bound of {HANG_SECONDS} s")


@pytest.fixture(scope="module", autouse=True)
def traced() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """The example's time (hard alarm) and heap peak bounds."""
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    peak = tracemalloc.get_traced_memory()[1] - before
    assert peak < EXAMPLE_BYTES, f"an example took {peak >> 20} MiB of heap (bound {EXAMPLE_BYTES >> 20} MiB)"


def outcome(read: Callable[[], object]) -> str:
    """Run one reader under the bounds: "ok" or the typed error's reason; anything else fails the test."""
    with bounded():
        try:
            read()
        except QuantledgerError as exc:
            return exc.reason
    return "ok"


# ---------------------------------------------------------------------------------------------------
# the readers, each on a file of a fresh folder


def _folder(tmp: pathlib.Path) -> pathlib.Path:
    folder = tmp / "case"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    return folder


def read_gguf(folder: pathlib.Path, data: bytes) -> None:
    path = folder / "model.gguf"
    path.write_bytes(data)
    check_gguf_source(read_gguf_header(path))


def read_safetensors(folder: pathlib.Path, data: bytes) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(data)
    weights = SafetensorsFile(path)
    for entry in weights.entries():
        weights.read(entry.name)


def read_imatrix(folder: pathlib.Path, data: bytes) -> None:
    path = folder / "imatrix.dat"
    path.write_bytes(data)
    imatrix = load_imatrix(path)
    check_covers(imatrix, {name: values.size for name, values in imatrix.entries.items()})


def read_config(folder: pathlib.Path, data: bytes) -> None:
    (folder / "config.json").write_bytes(data)
    config = read_hf_config(folder)
    architecture = architecture_for(config, folder.name)
    check_hf_config(config, architecture.hf_name)
    architecture.tensors(config, ())


def read_tokenizer(folder: pathlib.Path, data: bytes, *, config_file: bytes | None = None) -> None:
    from fuzz_corpus import BERT_CONFIG, TOKENIZER, TOKENIZER_CONFIG

    (folder / "tokenizer.json").write_bytes(data if config_file is None else json.dumps(TOKENIZER).encode())
    (folder / "tokenizer_config.json").write_bytes(config_file or json.dumps(TOKENIZER_CONFIG).encode())
    with contextlib.suppress(QuantledgerError):  # the BPE reading first; the WordPiece reading of the same file next
        bpe_vocab(folder, "qwen2")
    wordpiece_vocab(folder, dict(BERT_CONFIG))


def read_adapter(folder: pathlib.Path, config: bytes | None = None, weights: bytes | None = None) -> None:
    from fuzz_corpus import ADAPTER_CONFIG

    (folder / "adapter_config.json").write_bytes(config or json.dumps(ADAPTER_CONFIG).encode())
    (folder / "adapter_model.safetensors").write_bytes(
        weights or (CORPUS / "safetensors/valid-lora.safetensors").read_bytes()
    )
    adapter = load_lora(folder)
    shapes = {name: adapter.expected_base_shape(name) for name in adapter.pairs}
    check_against_base(adapter, shapes)
    merge = merging_transform(adapter)
    for name, shape in shapes.items():
        if shape[0] * shape[1] <= MERGE_ELEMENTS:
            merge(name, np.zeros(shape, np.float32))


# ---------------------------------------------------------------------------------------------------
# the corpus itself: valid seeds read, hostile seeds are typed errors


@pytest.mark.parametrize(
    ("folder", "read"),
    [
        ("gguf", read_gguf),
        ("safetensors", read_safetensors),
        ("imatrix", read_imatrix),
        ("config", read_config),
        ("tokenizer", read_tokenizer),
        ("tokenizer_config", lambda f, d: read_tokenizer(f, b"", config_file=d)),
        ("adapter_config", lambda f, d: read_adapter(f, config=d)),
    ],
)
def test_corpus_seeds_read_or_fail_typed(tmp_path: pathlib.Path, folder: str, read: Callable[..., None]) -> None:
    """Valid seeds (``valid*``) and harmless hostile ones (``accepted*``: RE2 runs a catastrophic pattern in
    linear time, ignored fields of the wrong type) read; every other seed is a typed error, never a crash."""
    for path in sorted((CORPUS / folder).iterdir()):
        result = outcome(lambda: read(_folder(tmp_path), path.read_bytes()))  # noqa: B023 - called at once
        if path.name.startswith(("valid", "accepted")):
            assert result == "ok", f"{folder}/{path.name}: {result}"
        elif "-regression-" not in path.name:
            assert result != "ok", f"{folder}/{path.name} was accepted"


# ---------------------------------------------------------------------------------------------------
# fuzzing


@FUZZ
@given(data=mutated_bytes(seeds("gguf")))
def test_fuzzed_gguf_headers(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_gguf(_folder(tmp_path), data))


@FUZZ
@given(data=mutated_bytes(seeds("imatrix")))
def test_fuzzed_imatrix_files(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_imatrix(_folder(tmp_path), data))


@FUZZ
@given(
    data=st.one_of(
        mutated_bytes(seeds("safetensors")),
        mutated_json([s[8:] for s in seeds("safetensors")]).map(lambda h: struct.pack("<Q", len(h)) + h + bytes(128)),
    )
)
def test_fuzzed_safetensors_headers(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_safetensors(_folder(tmp_path), data))


@FUZZ
@given(data=mutated_json(seeds("config")))
def test_fuzzed_hf_configs(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_config(_folder(tmp_path), data))


@FUZZ
@given(data=mutated_json(seeds("tokenizer")))
def test_fuzzed_tokenizers(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_tokenizer(_folder(tmp_path), data))


@FUZZ
@given(data=mutated_json(seeds("tokenizer_config")))
def test_fuzzed_tokenizer_configs(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_tokenizer(_folder(tmp_path), b"", config_file=data))


@FUZZ
@given(data=mutated_json(seeds("adapter_config")))
def test_fuzzed_adapter_configs(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_adapter(_folder(tmp_path), config=data))


@FUZZ
@given(data=mutated_bytes(seeds("safetensors")))
def test_fuzzed_lora_weights(tmp_path: pathlib.Path, data: bytes) -> None:
    outcome(lambda: read_adapter(_folder(tmp_path), weights=data))
