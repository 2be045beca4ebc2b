"""The llama-quantize flags that change what is written beyond the types: ``--override-kv``,
``--prune-layers`` and ``--include-weights``/``--exclude-weights``, each read and checked the way
llama-quantize reads it (tools/quantize/quantize.cpp, common/common.cpp) and applied the way
``llama_model_quantize`` applies it (src/llama-quant.cpp).

- ``KEY=TYPE:VALUE`` with TYPE int, float, bool or str: llama.cpp sets the key in the output (an int as
  u32 of its absolute value, a float as f32) and hands the same overrides to the loader of the source.
  Refused here rather than lost: a key of 128 bytes or more, a string value over 127 bytes, a bool other
  than true/false, a number that does not parse.
- Pruned layers: ``blk.N.`` tensors of those blocks are left out, later blocks renumbered down, and
  ``{arch}.block_count`` set to what remains (:func:`pruned_header` predicts the file).
- Include/exclude: the importance matrix entries whose name contains (include) or does not contain
  (exclude) one of the strings are the ones llama.cpp receives; the two cannot be combined.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from quantledger.errors import InvalidArgument, quote_client
from quantledger.gguf.reader import GgufHeader

KV_TYPES = ("int", "float", "bool", "str")
MAX_KV_KEY_BYTES = 127  # llama_model_kv_override.key is char[128]
MAX_KV_STR_BYTES = 127  # and val_str char[128]
MAX_KV_OVERRIDES = 64
MAX_WEIGHT_NAMES = 256
_BLOCK = re.compile(r"blk\.(\d+)\.")
_INT64 = 1 << 63

Value = int | float | bool | str


@dataclass(frozen=True)
class KvOverride:
    key: str
    kind: str  # one of KV_TYPES
    value: Value

    def request(self) -> list[Value]:
        """The worker's form: [key, kind, value]."""
        return [self.key, self.kind, self.value]


def parse_kv_override(text: str) -> KvOverride:
    """``KEY=TYPE:VALUE`` as llama-quantize's ``--override-kv`` reads it; INVALID_ARGUMENT (field
    kv_overrides) saying what is wrong otherwise."""
    key, sep, typed = text.partition("=")
    shown = quote_client(text, 80)
    if not sep or not key:
        raise InvalidArgument(f"kv_overrides {shown}: expected KEY=TYPE:VALUE", field="kv_overrides")
    if len(key.encode("utf-8")) > MAX_KV_KEY_BYTES or "\0" in key:
        raise InvalidArgument(
            f"kv_overrides {shown}: a key is at most {MAX_KV_KEY_BYTES} bytes (llama.cpp's limit), without NUL",
            field="kv_overrides",
        )
    kind, sep, raw = typed.partition(":")
    if not sep or kind not in KV_TYPES:
        raise InvalidArgument(
            f"kv_overrides {shown}: TYPE must be one of {', '.join(KV_TYPES)} (KEY=TYPE:VALUE)", field="kv_overrides"
        )
    value: Value
    try:
        if kind == "int":
            value = int(raw.strip(), 10)
            if not -_INT64 <= value < _INT64:
                raise ValueError("out of the int64 range")
        elif kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("not finite")
        elif kind == "bool":
            if raw not in ("true", "false"):
                raise ValueError("a bool is true or false")
            value = raw == "true"
        else:
            if len(raw.encode("utf-8")) > MAX_KV_STR_BYTES or "\0" in raw:
                raise ValueError(f"a string value is at most {MAX_KV_STR_BYTES} bytes, without NUL")
            value = raw
    except ValueError as exc:
        raise InvalidArgument(f"kv_overrides {shown}: {exc}", field="kv_overrides") from None
    return KvOverride(key, kind, value)


def parse_kv_overrides(items: Sequence[str]) -> list[KvOverride]:
    if len(items) > MAX_KV_OVERRIDES:
        raise InvalidArgument(f"at most {MAX_KV_OVERRIDES} kv_overrides per job", field="kv_overrides")
    parsed = [parse_kv_override(item) for item in items]
    keys = [o.key for o in parsed]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise InvalidArgument(f"kv_overrides sets {', '.join(twice)} more than once", field="kv_overrides")
    return parsed


def written_value(kind: str, value: Value) -> Value:
    """What llama.cpp writes into the output for an override (an int as the u32 of its absolute value)."""
    if kind == "int":
        return abs(int(value)) & 0xFFFFFFFF
    return value


def check_prune_layers(layers: Sequence[int], block_count: int | None) -> list[int]:
    """The layers to prune, sorted and unique as llama-quantize keeps them; each must be a block of the
    source and at least one block must remain."""
    chosen = sorted(set(layers))
    if not chosen:
        return []
    if chosen[0] < 0:
        raise InvalidArgument(f"prune_layers: {chosen[0]} is not a layer number", field="prune_layers")
    if block_count is None:
        raise InvalidArgument(
            "prune_layers: the source does not say how many blocks it has ({arch}.block_count)", field="prune_layers"
        )
    outside = [n for n in chosen if n >= block_count]
    if outside:
        raise InvalidArgument(
            f"prune_layers: the source has blocks 0..{block_count - 1}, not {', '.join(map(str, outside))}",
            field="prune_layers",
        )
    if len(chosen) >= block_count:
        raise InvalidArgument("prune_layers would remove every block", field="prune_layers")
    return chosen


def block_count(header: GgufHeader) -> int | None:
    value = header.metadata.get(f"{header.architecture}.block_count")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def layer_map(prune: Sequence[int], block_count: int) -> dict[int, int | None]:
    """Old block number -> new one (None: pruned), as llama.cpp's remap_layer numbers what remains."""
    dropped = set(prune)
    mapping: dict[int, int | None] = {}
    next_id = 0
    for block in range(block_count):
        if block in dropped:
            mapping[block] = None
        else:
            mapping[block] = next_id
            next_id += 1
    return mapping


def renamed(name: str, mapping: Mapping[int, int | None]) -> str | None:
    """``name`` after pruning: its block renumbered, None when its block is pruned."""
    found = _BLOCK.search(name)
    if found is None:
        return name
    new = mapping.get(int(found.group(1)), int(found.group(1)))
    if new is None:
        return None
    return name[: found.start(1)] + str(new) + name[found.end(1) :]


def pruned_header(header: GgufHeader, prune: Sequence[int], count: int | None) -> GgufHeader:
    """``header`` (the source, or one shard of it) as llama.cpp quantizes it with ``prune`` of the
    source's ``count`` blocks: the pruned blocks' tensors gone, the others renamed. (block_count, a u32 it
    sets, is among the values the caller writes.)"""
    if not prune or count is None:
        return header
    mapping = layer_map(prune, count)
    tensors = []
    for tensor in header.tensors:
        name = renamed(tensor.name, mapping)
        if name is not None:
            tensors.append(dataclasses.replace(tensor, name=name))
    return dataclasses.replace(header, tensors=tuple(tensors))


def check_weight_names(include: Sequence[str], exclude: Sequence[str], has_imatrix: bool) -> None:
    if include and exclude:
        raise InvalidArgument(
            "imatrix_include_weights and imatrix_exclude_weights cannot be used together (as in llama-quantize)",
            field="imatrix_include_weights",
        )
    names = list(include) or list(exclude)
    field = "imatrix_include_weights" if include else "imatrix_exclude_weights"
    if names and not has_imatrix:
        raise InvalidArgument(f"{field} chooses importance matrix entries: it needs imatrix_path", field=field)
    if len(names) > MAX_WEIGHT_NAMES:
        raise InvalidArgument(f"at most {MAX_WEIGHT_NAMES} names in {field}", field=field)
    if any(not name for name in names):
        raise InvalidArgument(f"{field}: an empty name would match every tensor", field=field)


T = TypeVar("T")


def chosen_entries(entries: Mapping[str, T], include: Iterable[str], exclude: Iterable[str]) -> dict[str, T]:
    """The entries llama-quantize keeps: with ``include``, those whose name contains one of them; with
    ``exclude``, those whose name contains none of them (substring matches, as prepare_imatrix does)."""
    include, exclude = list(include), list(exclude)
    kept = {name: v for name, v in entries.items() if not any(part in name for part in exclude)}
    if include:
        kept = {name: v for name, v in kept.items() if any(part in name for part in include)}
    return kept
