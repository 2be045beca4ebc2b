"""Resolve what a client names as a source to a GGUF file the service may read.

Local paths must lie under the allowed roots after every symlink and ``..`` is resolved, so a link
inside a root that points outside it is refused like the outside path itself. The check comes
before any existence test, so the service never tells whether a file exists outside its roots.
Every file is opened through ``client_files`` (no FIFO, device or swapped-in link is ever opened) and
its header read from that open file; a split model's shards must lie in the first shard's directory.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from quantledger.client_files import allowed_path, folder_file, folder_has, folder_names, open_client_file, reopen_path
from quantledger.errors import SourceInvalid, SourceNotFound, quote_client
from quantledger.gguf.reader import GgufHeader, read_gguf_header
from quantledger.jobs.model import SourceInfo

_FIRST_SPLIT = re.compile(r"-00001-of-\d{5}\.gguf$")
_SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 9999


def resolve_allowed(raw: str, roots: Sequence[pathlib.Path], what: str = "source") -> pathlib.Path:
    """The real path of ``raw``; PathNotAllowed unless it lies under one of ``roots`` (client_files)."""
    return allowed_path(raw, roots, what)


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
        raise SourceNotFound(f"source {quote_client(raw)} does not exist", path=str(path))
    if path.is_dir():
        path = _model_in_directory(path, roots)
    with open_client_file(path, roots, what="source") as handle:
        header = _read_header(handle, path)
    shards: tuple[pathlib.Path, ...] = (path,)
    shard_headers: tuple[GgufHeader, ...] = (header,)
    if _split_count(header) > 1:
        header, shards, shard_headers = _merge_shards(path, header)
    if not header.architecture:
        raise SourceInvalid(f"{path.name} has no general.architecture: not a model GGUF", path=str(path))
    if not header.tensors:
        raise SourceInvalid(f"{path.name} holds no tensors", path=str(path))
    return GgufSource(path=path, header=header, shards=shards, shard_headers=shard_headers)


def _read_header(handle: BinaryIO, path: pathlib.Path) -> GgufHeader:
    """The validated header of the open GGUF file ``handle`` (whose real path is ``path``)."""
    if handle.read(4) != b"GGUF":
        raise SourceInvalid(f"{path.name} is not a GGUF file (no GGUF magic)", path=str(path))
    opened = reopen_path(handle)
    try:
        header = read_gguf_header(opened)
    except SourceInvalid as exc:  # the parser names the file it read: /proc/self/fd/N
        shown = os.path.basename(opened)
        message = exc.message.replace(opened, path.name).replace(f"{shown}:", f"{path.name}:", 1)
        raise SourceInvalid(message, path=str(path)) from exc
    return dataclasses.replace(header, path=str(path))


def _split_count(header: GgufHeader) -> int:
    count = header.metadata.get("split.count", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def _merge_shards(
    first: pathlib.Path, header: GgufHeader
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
        # llama.cpp finds the shards by name next to the first one: they must really be there
        if not folder_has(first.parent, shard.name):
            raise SourceInvalid(f"split model {first.name}: shard {shard.name} is missing", path=str(shard))
        with folder_file(first.parent, shard.name, missing=SourceInvalid) as handle:
            shard_header = _read_header(handle, shard)
        if shard_header.metadata.get("split.no") != number - 1:
            raise SourceInvalid(f"{shard.name} does not say it is shard {number} of {count}", path=str(shard))
        shards.append(shard)
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


def _model_in_directory(directory: pathlib.Path, roots: Sequence[pathlib.Path]) -> pathlib.Path:
    ggufs = [name for name in folder_names(directory, ".gguf") if (directory / name).is_file()]
    firsts = [name for name in ggufs if _FIRST_SPLIT.search(name)]
    whole = [name for name in ggufs if "-of-" not in name]
    candidates = whole + firsts
    if len(candidates) == 1:
        # a link in the directory is followed only where it stays inside the allowed roots
        return resolve_allowed(str(directory / candidates[0]), roots)
    if len(candidates) > 1:
        names = ", ".join(quote_client(name, 80) for name in candidates[:20])
        raise SourceInvalid(f"directory {directory} holds several models ({names}); name the file")
    raise SourceInvalid(f"directory {directory} holds no model (no .gguf file)", path=str(directory))
