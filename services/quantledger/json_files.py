"""Reading the small JSON files of model folders (config.json, tokenizer files, indexes, adapter configs).

One reader, so every such file is size-capped, opened through ``client_files`` (inside its folder, a
regular file, never a FIFO or a link out of it), and a file that is not a JSON object is a typed error
naming it (never quoting its bytes), never a ValueError or KeyError escaping as INTERNAL.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from quantledger.client_files import folder_file, folder_has, read_capped
from quantledger.errors import QuantledgerError, SourceInvalid
from registry_client.bounded_json import JsonRefused, parse_bounded_json

MAX_JSON_BYTES = 64 << 20  # tokenizer.json of a 150k-token vocabulary is about 10 MB
MAX_CONFIG_BYTES = 4 << 20


def read_json_object(
    path: pathlib.Path,
    *,
    error: type[QuantledgerError] = SourceInvalid,
    max_bytes: int = MAX_JSON_BYTES,
    subfolders: bool = False,
) -> dict[str, Any]:
    """The JSON object in ``path`` (a file of the folder ``path.parent``; with ``subfolders`` a
    ``sub/name`` of ``path.parent.parent``); ``error`` (SourceInvalid by default) when it is too large,
    not one, or not a regular file inside its folder."""
    folder, name = (path.parent.parent, f"{path.parent.name}/{path.name}") if subfolders else (path.parent, path.name)
    with folder_file(folder, name, subfolders=subfolders, error=error) as handle:
        raw = read_capped(handle, max_bytes)
    if len(raw) > max_bytes:
        raise error(f"{path.name} is larger than {max_bytes} bytes")
    try:
        data = parse_bounded_json(raw, max_bytes=max_bytes)
    except JsonRefused as exc:  # size, depth or syntax: the message names no content
        raise error(f"{path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path.name} does not hold a JSON object")
    return data


def read_hf_config(folder: pathlib.Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder."""
    if not folder_has(folder, "config.json"):
        raise SourceInvalid(f"{folder} has no config.json: not a Hugging Face model folder")
    return read_json_object(folder / "config.json", max_bytes=MAX_CONFIG_BYTES)


def hf_architecture(config: Mapping[str, Any]) -> str:
    """``architectures[0]`` of a Hugging Face config.json, or "" when it names none."""
    names = config.get("architectures") or []
    return str(names[0]) if isinstance(names, list) and names else ""
