"""Parsing JSON that comes from outside the process, bounded in size and nesting depth *before* parsing.

Python's JSON scanner recurses once per nesting level. py_ecc (imported by web3 and py-evm) raises the
interpreter's recursion limit to 100,000, and past a few tens of thousands of levels the C stack
overflows: one ``[[[[…`` body kills the process with SIGSEGV. So every JSON the services read from a
client, a model folder or the network goes through :func:`parse_bounded_json`, which measures the
nesting depth with a linear scan (no recursion) and refuses an over-deep or over-large document with
:class:`JsonRefused` (a ``ValueError``), which callers turn into their own typed error.

This module lives in ``registry_client`` (the lower of the two packages) so both packages share it.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

# Real configs and tokenizers nest a handful of levels (tokenizer.json about 6); 64 is generous.
DEFAULT_MAX_DEPTH = 64

_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonRefused(ValueError):
    """The document is larger or deeper than allowed, or is not JSON. Its message names no content."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data``, ignoring brackets inside strings."""
    # drop escaped characters (so an escaped quote cannot end a string), then every second
    # quote-delimited piece is inside a string
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structural = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if not structural:
        return 0
    return max(accumulate(_DEPTH_STEP[c] for c in structural))


def parse_bounded_json(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``json.loads(data)`` once ``data`` is known to be at most ``max_bytes`` long and ``max_depth`` deep."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonRefused(f"larger than {max_bytes} bytes")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonRefused(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except RecursionError as exc:  # cannot happen below max_depth, kept as a guard
        raise JsonRefused(f"nested deeper than {max_depth} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonRefused(f"not valid JSON (line {getattr(exc, 'lineno', '?')})") from exc
