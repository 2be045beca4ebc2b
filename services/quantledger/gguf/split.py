"""Split a GGUF file into shards as llama.cpp's llama-gguf-split writes them (tools/gguf-split).

Tensors keep their order. With a byte limit a new shard starts when the shard's tensor data (each
tensor padded to 32 bytes; metadata not counted) would pass the limit; with a tensor limit, every
``max_tensors`` tensors. The first shard carries every key of the file, byte for byte, then
``split.no`` (u16), ``split.count`` (u16) and ``split.tensors.count`` (i32); the others carry only
those three. Shards are named ``{prefix}-{i:05d}-of-{n:05d}.gguf`` (llama_split_path) and llama.cpp
loads the set from the first. A limit that leaves a shard without tensors is refused, as
llama-gguf-split refuses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

from quantledger.errors import InvalidArgument
from quantledger.gguf.format import DEFAULT_ALIGNMENT, HEADER_BYTES, INT32, UINT16, pad
from quantledger.gguf.layout import tensor_info_bytes
from quantledger.gguf.reader import GgufHeader
from quantledger.gguf.writer import GgufMetadata, TensorLayout, copy_from_file, plan_tensors, write_gguf

_SPLIT_KEYS = (("split.no", 2), ("split.count", 2), ("split.tensors.count", 4))  # value bytes: u16, u16, i32
SPLIT_KEYS_BYTES = sum(8 + len(key) + 4 + size for key, size in _SPLIT_KEYS)


def shard_counts(tensor_bytes: Sequence[int], max_bytes: int = 0, max_tensors: int = 0) -> list[int]:
    """How many tensors (in file order, of these data sizes) each shard takes, as llama-gguf-split groups
    them: by size, each tensor counted padded to 32 bytes."""
    if bool(max_bytes) == bool(max_tensors):
        raise ValueError("give exactly one of max_bytes and max_tensors")
    counts = [0]
    current = 0
    for index, raw in enumerate(tensor_bytes):
        size = pad(raw, DEFAULT_ALIGNMENT)
        by_size = current + size > max_bytes
        starts = by_size if max_bytes else 0 < index < len(tensor_bytes) and index % max_tensors == 0
        if starts:
            if counts[-1] == 0:
                raise InvalidArgument(
                    f"split_max_bytes {max_bytes} is smaller than the first tensor ({size} bytes): "
                    "a shard would hold no tensor",
                    field="split_max_bytes",
                )
            counts.append(0)
            current = size
        else:
            current += size
        counts[-1] += 1
    return counts


def shard_paths(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _split_keys(metadata: GgufMetadata, number: int, count: int, n_tensors: int) -> None:
    metadata.scalar("split.no", UINT16, number)
    metadata.scalar("split.count", UINT16, count)
    metadata.scalar("split.tensors.count", INT32, n_tensors)


def predict_shard_sizes(
    kv_bytes: int, tensors: Sequence[tuple[str, tuple[int, ...], int]], counts: Sequence[int]
) -> list[int]:
    """Sizes of the shards of a file whose keys take ``kv_bytes`` and whose tensors, in order, are
    (name, shape, data bytes), grouped by ``counts``."""
    sizes = []
    start = 0
    for number, count in enumerate(counts):
        group = tensors[start : start + count]
        start += count
        meta = HEADER_BYTES + (kv_bytes if number == 0 else 0) + SPLIT_KEYS_BYTES
        meta += sum(tensor_info_bytes(name, shape) for name, shape, _ in group)
        sizes.append(pad(meta, DEFAULT_ALIGNMENT) + sum(pad(size, DEFAULT_ALIGNMENT) for _, _, size in group))
    return sizes


def _raw_keys(header: GgufHeader, source_fd: int) -> tuple[bytes, int]:
    """The key/value section of the file, as it is, and its key count; ValueError when the header's
    layout does not add up to where its tensor infos end (a file not written by llama.cpp's rules)."""
    kv_bytes = sum(8 + len(key) + value_bytes for key, value_bytes in header.kv_layout)
    infos = sum(8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8 for t in header.tensors)
    if pad(HEADER_BYTES + kv_bytes + infos, header.alignment) != header.data_offset:
        raise ValueError(f"{header.path}: the key layout does not end where the tensor infos begin")
    return os.pread(source_fd, kv_bytes, HEADER_BYTES), len(header.kv_layout)


def write_shards(header: GgufHeader, counts: Sequence[int], targets: Sequence[BinaryIO]) -> list[int]:
    """Write the shards of the file ``header`` describes into ``targets`` (open for writing, one per
    shard) through the project's GGUF writer; returns each shard's size."""
    if header.alignment != DEFAULT_ALIGNMENT:
        raise ValueError(f"{header.path}: alignment {header.alignment}; llama.cpp's outputs use {DEFAULT_ALIGNMENT}")
    written = []
    with open(header.path, "rb") as source:
        fd = source.fileno()
        raw_keys, n_keys = _raw_keys(header, fd)
        start = 0
        for number, (count, out) in enumerate(zip(counts, targets, strict=True)):
            group = header.tensors[start : start + count]
            start += count
            metadata = GgufMetadata()
            if number == 0:
                metadata.encoded_pairs(raw_keys, n_keys)
            _split_keys(metadata, number, len(counts), len(header.tensors))
            layout = plan_tensors((t.name, t.shape, t.ggml_type) for t in group)
            offsets = {t.name: t.offset for t in group}

            def copy(tensor: TensorLayout, sink: BinaryIO, offsets: dict[str, int] = offsets) -> int:
                return copy_from_file(sink, fd, offsets[tensor.name], tensor.n_bytes)

            written.append(write_gguf(out, metadata, layout, copy))
            out.flush()
    return written
