"""The GGUF writer: every GGUF file the service and its tests make goes through it.

:class:`GgufMetadata` encodes key/value pairs in the order they are added; :func:`plan_tensors` lays
the tensors out (each one's data padded to the alignment, sizes from :mod:`quantledger.gguf.types`);
:func:`encode_header` gives the bytes before the data section and :func:`write_gguf` streams a whole
file, asking the caller for each tensor's data in turn, so a large model is never held in memory.
:func:`encode_gguf` is the same for a small file built in memory. Shapes are in ggml order (row length
first) and written as given.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy.typing as npt

from quantledger.gguf.format import (
    ARRAY,
    BOOL,
    DEFAULT_ALIGNMENT,
    FLOAT32,
    GGUF_MAGIC,
    GGUF_VERSION,
    STRING,
    UINT32,
    pad,
)
from quantledger.gguf.layout import tensor_nbytes


def encode_string(value: str | bytes) -> bytes:
    """A GGUF string: u64 byte length, then the (UTF-8) bytes."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<Q", len(raw)) + raw


class GgufMetadata:
    """Key/value pairs encoded as GGUF, in the order added."""

    def __init__(self) -> None:
        self.count = 0
        self._parts: list[bytes] = []

    def add(self, key: str | bytes, vtype: int, payload: bytes) -> None:
        """A pair whose value ``payload`` is already encoded for value type ``vtype``."""
        self._parts.append(encode_string(key) + struct.pack("<i", vtype) + payload)
        self.count += 1

    def u32(self, key: str, value: int) -> None:
        self.add(key, UINT32, struct.pack("<I", value))

    def f32(self, key: str, value: float) -> None:
        self.add(key, FLOAT32, struct.pack("<f", value))

    def boolean(self, key: str, value: bool) -> None:
        self.add(key, BOOL, struct.pack("<B", int(value)))

    def text(self, key: str, value: str) -> None:
        self.add(key, STRING, encode_string(value))

    def strings(self, key: str, values: Sequence[str]) -> None:
        payload = b"".join(encode_string(v) for v in values)
        self.add(key, ARRAY, struct.pack("<iQ", STRING, len(values)) + payload)

    def numbers(self, key: str, vtype: int, values: npt.NDArray[Any]) -> None:
        """An array of scalars of value type ``vtype`` (INT32, FLOAT32, ...), given as little-endian numpy."""
        self.add(key, ARRAY, struct.pack("<iQ", vtype, len(values)) + values.tobytes())

    def encoded(self) -> bytes:
        return b"".join(self._parts)


@dataclass(frozen=True)
class TensorLayout:
    """One tensor of a file being written: its info and where its data goes."""

    name: str
    shape: tuple[int, ...]  # ggml order
    ggml_type: int
    offset: int  # relative to the data section
    n_bytes: int


def plan_tensors(
    tensors: Iterable[tuple[str, tuple[int, ...], int]], alignment: int = DEFAULT_ALIGNMENT
) -> list[TensorLayout]:
    """(name, shape, ggml type) in file order -> their layout, each tensor's data padded to ``alignment``."""
    planned: list[TensorLayout] = []
    offset = 0
    for name, shape, ggml_type in tensors:
        n_bytes = tensor_nbytes(shape, ggml_type)
        planned.append(TensorLayout(name, tuple(shape), int(ggml_type), offset, n_bytes))
        offset += pad(n_bytes, alignment)
    return planned


def encode_header(metadata: GgufMetadata, tensors: Sequence[TensorLayout], alignment: int = DEFAULT_ALIGNMENT) -> bytes:
    """Everything before the data section, padded to ``alignment``."""
    infos = b"".join(
        encode_string(t.name) + struct.pack(f"<I{len(t.shape)}qiQ", len(t.shape), *t.shape, t.ggml_type, t.offset)
        for t in tensors
    )
    head = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), metadata.count) + metadata.encoded() + infos
    return head + bytes(pad(len(head), alignment) - len(head))


def write_gguf(
    out: BinaryIO,
    metadata: GgufMetadata,
    tensors: Sequence[TensorLayout],
    write_data: Callable[[TensorLayout, BinaryIO], int],
    alignment: int = DEFAULT_ALIGNMENT,
) -> int:
    """Stream a GGUF file to ``out``: the header, then each tensor's data from ``write_data(tensor, out)``
    (which returns the bytes it wrote), padded. Returns the file size; ValueError when a tensor's data
    does not have its planned size."""
    written = out.write(encode_header(metadata, tensors, alignment))
    for tensor in tensors:
        size = write_data(tensor, out)
        if size != tensor.n_bytes:
            raise ValueError(f"tensor {tensor.name}: {size} bytes written, {tensor.n_bytes} planned")
        written += size + out.write(bytes(pad(size, alignment) - size))
    return written


def encode_gguf(
    metadata: GgufMetadata,
    tensors: Sequence[tuple[str, tuple[int, ...], int, bytes]],
    alignment: int = DEFAULT_ALIGNMENT,
) -> bytes:
    """A whole small GGUF file in memory: (name, shape, ggml type, data) per tensor."""
    planned = plan_tensors(((name, shape, kind) for name, shape, kind, _ in tensors), alignment)
    parts = [encode_header(metadata, planned, alignment)]
    for layout, (_, _, _, data) in zip(planned, tensors, strict=True):
        if len(data) != layout.n_bytes:
            raise ValueError(f"tensor {layout.name}: {len(data)} bytes of data, {layout.n_bytes} planned")
        parts.append(data + bytes(pad(len(data), alignment) - len(data)))
    return b"".join(parts)


__all__ = [
    "GgufMetadata",
    "TensorLayout",
    "encode_gguf",
    "encode_header",
    "encode_string",
    "plan_tensors",
    "write_gguf",
]
