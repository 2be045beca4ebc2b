"""Resolve a model reference of a Recommend request to a ``ModelShape``.

References are resolved the way the quantize service resolves sources (the same allowed roots, the
same hub cache), and nothing but headers and config files is read: a 70 GB model costs a few
kilobytes. The key of a reference includes the file's size and modification time, so a replaced
file is read again.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from quantledger.errors import InvalidArgument, RecordNotFound, SourceInvalid, SourceNotFound
from quantledger.json_files import hf_architecture, read_hf_config
from quantledger.quantize.sources import open_source, resolve_allowed
from quantledger.recommend.shape import (
    F16,
    F32,
    Hyperparameters,
    ModelShape,
    TensorShape,
    estimated_metadata_bytes,
    from_description,
    from_gguf,
    from_hyperparameters,
    hyperparameters_from_config,
)

_SHA256 = re.compile(r"^(?:files/)?(?P<sha>[0-9a-f]{64})$")


@dataclass(frozen=True)
class ModelRef:
    """One of the ways a request names a model (exactly one field set)."""

    gguf_path: str = ""
    hf_folder: str = ""
    hf_repo: str = ""
    registry_file: str = ""
    hyperparameters: Hyperparameters | None = None
    parameter_count: int = 0
    family: str = ""

    @classmethod
    def described(cls, parameter_count: int, family: str = "") -> ModelRef:
        """A model known by its parameter count and family (default llama) only."""
        if parameter_count <= 0:
            raise InvalidArgument(f"parameter_count must be positive, not {parameter_count}", field="parameter_count")
        return cls(parameter_count=parameter_count, family=family or "llama")

    def kind(self) -> str:
        set_fields = [name for name in ("gguf_path", "hf_folder", "hf_repo", "registry_file") if getattr(self, name)]
        if self.hyperparameters is not None:
            set_fields.append("hyperparameters")
        if self.parameter_count or self.family:
            set_fields.append("description")
        if len(set_fields) != 1:
            got = ", ".join(set_fields) or "none"
            raise InvalidArgument(
                "name the model exactly one way: a GGUF path, an HF folder or repo, a registry file, "
                f"hyper-parameters or a description (got {got})"
            )
        return set_fields[0]


def _stat_key(path: pathlib.Path) -> str:
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


class ModelResolver:
    """Turns references into shapes; ``find_artifact`` maps a file digest to a path this deployment wrote."""

    def __init__(self, roots: Sequence[pathlib.Path], find_artifact: Callable[[str], str | None]) -> None:
        self._roots = tuple(roots)
        self._find_artifact = find_artifact

    def key(self, ref: ModelRef) -> str:
        """A cache key that changes when what the reference names changes."""
        kind = ref.kind()
        if kind == "gguf_path":
            path = resolve_allowed(ref.gguf_path, self._roots)
            return "gguf:" + (_stat_key(path) if path.exists() else str(path))
        if kind == "hf_folder":
            folder = resolve_allowed(ref.hf_folder, self._roots)
            config = folder / "config.json"
            return "hf:" + (_stat_key(config) if config.exists() else str(folder))
        if kind == "hf_repo":
            return "hub:" + ref.hf_repo.strip()
        if kind == "registry_file":
            return "file:" + self._digest(ref.registry_file)
        if kind == "hyperparameters":
            return f"hp:{ref.hyperparameters!r}"
        return f"desc:{ref.family.lower()}:{ref.parameter_count}"

    @staticmethod
    def _digest(raw: str) -> str:
        match = _SHA256.match(raw.strip().lower())
        if match is None:
            raise InvalidArgument(f"{raw!r} is not a file digest: give 64 hex characters or files/{{sha256}}")
        return match["sha"]

    def resolve(self, ref: ModelRef) -> ModelShape:
        kind = ref.kind()
        if kind == "gguf_path":
            return from_gguf(open_source(ref.gguf_path, self._roots).header)
        if kind == "hf_folder":
            folder = resolve_allowed(ref.hf_folder, self._roots)
            if not folder.is_dir():
                raise SourceNotFound(f"{ref.hf_folder!r} is not a folder", path=str(folder))
            return from_hf_folder(folder)
        if kind == "hf_repo":
            from quantledger.hf.hub import fetch_config, parse_hub_id

            hub = parse_hub_id(ref.hf_repo)
            if hub is None:
                raise InvalidArgument(f"{ref.hf_repo!r} is not a Hugging Face repo id (owner/name[@revision])")
            config = read_hf_config(fetch_config(hub))
            return from_hyperparameters(hyperparameters_from_config(config, hub.repo_id), origin="hf-config")
        if kind == "registry_file":
            digest = self._digest(ref.registry_file)
            path = self._find_artifact(digest)
            if path is None or not os.path.exists(path):
                raise RecordNotFound(
                    f"no file with SHA-256 {digest} made by this deployment is still on the server; "
                    "name the model by path, repo or description",
                    sha256=digest,
                )
            return from_gguf(open_source(path, [pathlib.Path(path).parent]).header)
        if kind == "hyperparameters":
            assert ref.hyperparameters is not None
            return from_hyperparameters(ref.hyperparameters)
        return from_description(ref.parameter_count, ref.family)


def from_hf_folder(folder: pathlib.Path) -> ModelShape:
    """A Hugging Face folder: the converter's tensor names over the safetensors headers when it knows
    the architecture (decoders, BERT embedders, BERT and XLM-RoBERTa rerankers), else the tensors a
    decoder of its config.json has."""
    from quantledger.convert.architectures import ARCHITECTURES
    from quantledger.convert.converter import weight_files
    from quantledger.convert.safetensors_reader import SafetensorsFile

    config = read_hf_config(folder)
    hf_name = hf_architecture(config)
    architecture = ARCHITECTURES.get(hf_name)
    if architecture is not None and architecture.kind in ("embedding", "reranker"):
        derived = from_hyperparameters(_encoder_hyperparameters(config, folder.name), origin="hf-config")
    else:
        derived = from_hyperparameters(hyperparameters_from_config(config, folder.name), origin="hf-config")
    if architecture is None or architecture.kind not in ("causal", "embedding", "reranker"):
        return derived
    try:
        files = weight_files(folder)
    except SourceInvalid:
        return derived  # config.json only: the derived tensor list
    tensors: list[TensorShape] = []
    for path in files:
        for entry in SafetensorsFile(path).entries():
            name = architecture.rename(entry.name)
            if name is None:
                continue
            shape = tuple(reversed(entry.shape))
            tensors.append(TensorShape(name, shape, F16 if len(shape) > 1 and name.endswith("weight") else F32))
    return _with_tensors(derived, tensors, config)


def _encoder_hyperparameters(config: dict[str, Any], label: str) -> Hyperparameters:
    """A BERT-family encoder's numbers (llama.cpp runs embedders and rerankers as "bert": no KV cache)."""
    from quantledger.convert.model_checks import bert_shape

    shape = bert_shape(config)
    return Hyperparameters(
        n_layer=shape.layers,
        n_embd=shape.hidden,
        n_ff=shape.ffn,
        n_head=shape.heads,
        n_head_kv=shape.heads,
        n_vocab=shape.vocab,
        context_length=shape.positions,
        tied_embeddings=True,
        architecture="bert",
        name=label,
    )


def _with_tensors(derived: ModelShape, tensors: list[TensorShape], config: dict[str, Any]) -> ModelShape:
    vocab = int(config.get("vocab_size") or derived.n_vocab)
    return replace(derived, tensors=tuple(tensors), origin="hf-folder", metadata_bytes=estimated_metadata_bytes(vocab))
