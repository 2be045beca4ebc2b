"""Resolve what a client names as a source to a GGUF file the service may read.

Local paths must lie under the allowed roots after every symlink and ``..`` is resolved, so a link
inside a root that points outside it is refused like the outside path itself. The check comes
before any existence test, so the service never tells whether a file exists outside its roots.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from quantledger.errors import PathNotAllowed, SourceInvalid, SourceNotFound
from quantledger.gguf_header import GgufHeader, is_gguf_file, read_gguf_header
from quantledger.jobs.model import SourceInfo

_FIRST_SPLIT = re.compile(r"-00001-of-\d{5}\.gguf$")
_SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 9999


def resolve_allowed(raw: str, roots: Sequence[pathlib.Path], what: str = "source") -> pathlib.Path:
    """The real path of ``raw``; PathNotAllowed unless it lies under one of ``roots``."""
    if not raw or not raw.strip():
        raise SourceInvalid(f"no {what} path given")
    if "\x00" in raw:
        raise SourceInvalid(f"{what} path contains a NUL byte")
    real = pathlib.Path(os.path.realpath(pathlib.Path(raw).expanduser()))
    for root in roots:
        real_root = pathlib.Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return real
    allowed = os.pathsep.join(str(r) for r in roots)
    raise PathNotAllowed(
        f"{what} {raw!r} resolves to {real}, outside the allowed roots ({allowed}); "
        "set QUANTLEDGER_ALLOWED_ROOTS to allow it",
        path=str(real),
    )


@dataclass(frozen=True)
class GgufSource:
    """A validated local GGUF source.

    For a split model (``split.count`` > 1), ``path`` is the first shard and ``header`` merges every
    shard: metadata of the first, tensors and sizes of all (llama.cpp reads the other shards itself
    and writes one merged output unless keep_split is set).
    """

    path: pathlib.Path
    header: GgufHeader
    shards: tuple[pathlib.Path, ...] = ()
    shard_headers: tuple[GgufHeader, ...] = ()

    @property
    def info(self) -> SourceInfo:
        name = self.header.metadata.get("general.name")
        return SourceInfo(
            path=str(self.path),
            architecture=self.header.architecture or "",
            size_bytes=self.header.file_size,
            parameter_count=self.header.n_parameters,
            file_type=self.header.file_type if self.header.file_type is not None else -1,
            tensor_count=len(self.header.tensors),
            model_name=name if isinstance(name, str) else "",
            tensor_bytes=self.header.tensor_bytes,
        )

    @property
    def stem(self) -> str:
        """File name without extension and without a trailing precision tag (model-f16 -> model)."""
        stem = self.path.name.removesuffix(".gguf")
        stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
        return re.sub(r"[-_.](f32|f16|bf16|F32|F16|BF16)$", "", stem) or stem


def open_source(raw: str, roots: Sequence[pathlib.Path]) -> GgufSource:
    """Resolve ``raw`` (a GGUF file or a directory with one) and validate its header."""
    path = resolve_allowed(raw, roots)
    if not path.exists():
        raise SourceNotFound(f"source {raw!r} does not exist", path=str(path))
    if path.is_dir():
        path = _model_in_directory(path)
    if not path.is_file():
        raise SourceInvalid(f"source {raw!r} is not a regular file", path=str(path))
    if not os.access(path, os.R_OK):
        raise SourceInvalid(f"source {raw!r} is not readable by the service", path=str(path))
    if not is_gguf_file(path):
        raise SourceInvalid(f"{path.name} is not a GGUF file (no GGUF magic)", path=str(path))
    header = read_gguf_header(path)
    shards: tuple[pathlib.Path, ...] = (path,)
    shard_headers: tuple[GgufHeader, ...] = (header,)
    if _split_count(header) > 1:
        header, shards, shard_headers = _merge_shards(path, header, roots)
    if not header.architecture:
        raise SourceInvalid(f"{path.name} has no general.architecture: not a model GGUF", path=str(path))
    if not header.tensors:
        raise SourceInvalid(f"{path.name} holds no tensors", path=str(path))
    return GgufSource(path=path, header=header, shards=shards, shard_headers=shard_headers)


def _split_count(header: GgufHeader) -> int:
    count = header.metadata.get("split.count", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def _merge_shards(
    first: pathlib.Path, header: GgufHeader, roots: Sequence[pathlib.Path]
) -> tuple[GgufHeader, tuple[pathlib.Path, ...], tuple[GgufHeader, ...]]:
    """Validate every shard of a split model and merge their tensors into one header."""
    count = _split_count(header)
    named = _SHARD_NAME.match(first.name)
    if header.metadata.get("split.no", 0) != 0 or named is None or int(named["no"]) != 1:
        raise SourceInvalid(
            f"{first.name} is not the first shard of its split model; name the first shard (…-00001-of-NNNNN.gguf)",
            path=str(first),
        )
    if count > MAX_SHARDS or int(named["count"]) != count:
        raise SourceInvalid(f"{first.name}: split.count {count} does not match its file name", path=str(first))
    shards = [first]
    headers = [header]
    for number in range(2, count + 1):
        shard = first.with_name(f"{named['prefix']}-{number:05d}-of-{count:05d}.gguf")
        real = resolve_allowed(str(shard), roots)
        if not real.is_file():
            raise SourceInvalid(f"split model {first.name}: shard {shard.name} is missing", path=str(shard))
        shard_header = read_gguf_header(real)
        if shard_header.metadata.get("split.no") != number - 1:
            raise SourceInvalid(f"{shard.name} does not say it is shard {number} of {count}", path=str(shard))
        shards.append(real)
        headers.append(shard_header)
    tensors = tuple(t for h in headers for t in h.tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise SourceInvalid(f"split model {first.name}: a tensor appears in more than one shard", path=str(first))
    declared = header.metadata.get("split.tensors.count")
    if isinstance(declared, int) and declared != len(tensors):
        raise SourceInvalid(
            f"split model {first.name}: split.tensors.count says {declared}, the shards hold {len(tensors)}",
            path=str(first),
        )
    merged = dataclasses.replace(header, tensors=tensors, file_size=sum(h.file_size for h in headers))
    return merged, tuple(shards), tuple(headers)


def _model_in_directory(directory: pathlib.Path) -> pathlib.Path:
    ggufs = sorted(p for p in directory.glob("*.gguf") if p.is_file())
    firsts = [p for p in ggufs if _FIRST_SPLIT.search(p.name)]
    whole = [p for p in ggufs if "-of-" not in p.name]
    candidates = whole + firsts
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise SourceInvalid(f"directory {directory} holds several models ({names}); name the file")
    raise SourceInvalid(f"directory {directory} holds no model (no .gguf file)", path=str(directory))
