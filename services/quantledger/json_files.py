"""Reading the small JSON files of model folders (config.json, tokenizer files, indexes, adapter configs).

One reader, so every such file is size-capped and a file that is not a JSON object is a typed error
naming it, never a ValueError or KeyError escaping as INTERNAL.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from quantledger.errors import QuantledgerError, SourceInvalid

MAX_JSON_BYTES = 64 << 20  # tokenizer.json of a 150k-token vocabulary is about 10 MB
MAX_CONFIG_BYTES = 4 << 20


def read_json_object(
    path: pathlib.Path, *, error: type[QuantledgerError] = SourceInvalid, max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (SourceInvalid by default) when it is too large or not one."""
    if path.stat().st_size > max_bytes:
        raise error(f"{path.name} is larger than {max_bytes} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path.name} does not hold a JSON object")
    return data


def read_hf_config(folder: pathlib.Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise SourceInvalid(f"{folder} has no config.json: not a Hugging Face model folder")
    return read_json_object(path, max_bytes=MAX_CONFIG_BYTES)


def hf_architecture(config: Mapping[str, Any]) -> str:
    """``architectures[0]`` of a Hugging Face config.json, or "" when it names none."""
    names = config.get("architectures") or []
    return str(names[0]) if isinstance(names, list) and names else ""
