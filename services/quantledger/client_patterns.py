"""Regular expressions that clients send, compiled with a linear-time engine.

Clients send patterns in two places: tensor-type overrides (``options.tensor_type_overrides``, matched
against GGUF tensor names) and a LoRA adapter's ``rank_pattern`` / ``alpha_pattern`` (matched against
module names). Python's ``re`` and C++ ``std::regex`` (which llama.cpp uses for its ``tt_overrides``)
both backtrack: ``(a|a)*b`` against a 28-character name takes seconds in ``re`` (while holding the
GIL, so every RPC of the server stops) and ``(.|.|.)*x`` never finishes in ``std::regex``. So:

- every client pattern is compiled and matched here with RE2 (PyPI ``google-re2``), whose matching
  time is linear in the text and whose compiled program is bounded in memory. What RE2 refuses
  (backreferences, lookaround, a program over :data:`MAX_PROGRAM_BYTES`) is an error naming the field,
  and so are patterns over :data:`MAX_PATTERN_CHARS` characters or more than :data:`MAX_PATTERNS`;
- a client pattern never reaches ``std::regex``: the tensor names of the source are known before
  llama.cpp runs, so :func:`literal_overrides` resolves the client's overrides against them with RE2
  and hands llama.cpp anchored alternations of escaped literal names, which ``std::regex`` matches in
  one pass without backtracking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import re2  # type: ignore[import-untyped]

from quantledger.errors import InvalidArgument, QuantledgerError

MAX_PATTERN_CHARS = 1_000  # one pattern; real ones are a few dozen characters
MAX_PATTERNS = 256  # patterns of one field
MAX_PROGRAM_BYTES = 8 << 20  # RE2's memory budget for one compiled pattern
LITERAL_NAMES_PER_PATTERN = 32  # tensor names per anchored alternation handed to llama.cpp

# characters with a meaning in ECMAScript regular expressions (std::regex's default grammar)
_ECMA_SPECIAL = frozenset("^$\\.*+?()[]{}|/")


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False
    return options


class ClientPattern:
    """One client regular expression, compiled with RE2; ``search`` and ``fullmatch`` are linear time."""

    def __init__(self, text: str, compiled: Any, anchored: Any) -> None:
        self.text = text
        self._compiled = compiled
        self._anchored = anchored

    def search(self, value: str) -> bool:
        """Whether the pattern matches somewhere in ``value`` (std::regex_search semantics)."""
        return self._compiled.search(value) is not None

    def fullmatch(self, value: str) -> bool:
        """Whether the pattern matches the whole of ``value``."""
        return self._anchored.fullmatch(value) is not None

    def __repr__(self) -> str:
        return f"ClientPattern({self.text!r})"


def compile_client_pattern(
    text: object,
    what: str,
    *,
    error: type[QuantledgerError] = InvalidArgument,
    wrap: str = "{}",
) -> ClientPattern:
    """Compile the client pattern ``text`` with RE2; ``error`` (InvalidArgument unless given) names ``what``.

    ``wrap`` (a format string with one ``{}``) builds the expression ``fullmatch`` uses, such as
    ``r"(?:.*\\.)?(?:{})"``; the pattern is compiled alone first, so it cannot unbalance the wrapping.
    """
    if not isinstance(text, str):
        raise error(f"{what}: a pattern must be a string, not {type(text).__name__}")
    if not text:
        raise error(f"{what}: a pattern must not be empty")
    if len(text) > MAX_PATTERN_CHARS:
        raise error(f"{what}: pattern of {len(text)} characters is over the limit of {MAX_PATTERN_CHARS}")
    if "\0" in text:
        raise error(f"{what}: pattern contains a NUL character")
    try:
        compiled = re2.compile(text, _options())
        anchored = re2.compile(wrap.format(text), _options())
    except re2.error as exc:
        raise error(
            f"{what}: pattern {_shown(text)} is not a regular expression RE2 accepts ({_reason(exc)}); "
            "patterns use RE2 syntax: no backreferences or lookaround"
        ) from exc
    return ClientPattern(text, compiled, anchored)


def compile_client_patterns(
    texts: Sequence[object],
    what: str,
    *,
    error: type[QuantledgerError] = InvalidArgument,
    wrap: str = "{}",
) -> list[ClientPattern]:
    """:func:`compile_client_pattern` for each of ``texts``, at most :data:`MAX_PATTERNS` of them."""
    if len(texts) > MAX_PATTERNS:
        raise error(f"{what}: {len(texts)} patterns is over the limit of {MAX_PATTERNS}")
    return [compile_client_pattern(text, what, error=error, wrap=wrap) for text in texts]


def first_match(patterns: Iterable[ClientPattern], value: str) -> int | None:
    """Index of the first pattern that finds a match in ``value`` (llama.cpp's override rule)."""
    for index, pattern in enumerate(patterns):
        if pattern.search(value):
            return index
    return None


def ecma_literal(name: str) -> str:
    """``name`` escaped so that an ECMAScript regular expression matches exactly those characters."""
    return "".join("\\" + c if c in _ECMA_SPECIAL else c for c in name)


def literal_overrides(
    overrides: Sequence[tuple[ClientPattern, int]], tensor_names: Iterable[str]
) -> list[tuple[str, int]]:
    """The client's overrides as llama.cpp ``tt_overrides`` that name each tensor literally.

    llama.cpp gives a tensor the type of the first override whose pattern ``regex_search``-es its name.
    That choice is made here with RE2, for every tensor of the source; the result is, per type, anchored
    alternations ``^(?:name|name…)$`` of escaped names, :data:`LITERAL_NAMES_PER_PATTERN` at a time,
    so std::regex never sees a client pattern and each of its matches is a single pass.
    """
    patterns = [pattern for pattern, _ in overrides]
    by_type: dict[int, list[str]] = {}
    for name in tensor_names:
        index = first_match(patterns, name)
        if index is not None:
            by_type.setdefault(overrides[index][1], []).append(name)
    result: list[tuple[str, int]] = []
    for type_id, names in by_type.items():
        for start in range(0, len(names), LITERAL_NAMES_PER_PATTERN):
            chunk = names[start : start + LITERAL_NAMES_PER_PATTERN]
            result.append(("^(?:" + "|".join(ecma_literal(n) for n in chunk) + ")$", type_id))
    return result


def _reason(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
