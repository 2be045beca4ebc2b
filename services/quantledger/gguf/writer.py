"""The GGUF writer: every GGUF file the service and its tests make goes through it.

:class:`GgufMetadata` encodes key/value pairs of any value type in the order they are added;
:func:`plan_tensors` lays the tensors out (each one's data padded to the alignment, sizes from
:mod:`quantledger.gguf.types`); :func:`encode_header` gives the bytes before the data section and
:func:`write_gguf` streams a whole file, asking the caller for each tensor's data in turn, so a large
model is never held in memory; :func:`write_array` and :func:`copy_from_file` (a kernel copy from
another file, such as a safetensors source) are what such a callback uses. :func:`encode_gguf` is the
same for a small file built in memory. Shapes are in ggml order (row length first) and written as given.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from quantledger.gguf.format import (
    ARRAY,
    BOOL,
    DEFAULT_ALIGNMENT,
    DTYPES,
    FLOAT32,
    GGUF_MAGIC,
    GGUF_VERSION,
    SCALARS,
    STRING,
    UINT32,
    pad,
)
from quantledger.gguf.layout import tensor_nbytes

_COPY_CHUNK = 1 << 20
# copy_file_range refusals that mean "not here" (another file system, an old kernel), not a failed copy
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF})


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

    def encoded_pairs(self, encoded: bytes, count: int) -> None:
        """``count`` pairs already encoded as GGUF (another file's key/value section, copied as it is)."""
        self._parts.append(encoded)
        self.count += count

    def scalar(self, key: str, vtype: int, value: float) -> None:
        """A number of any scalar value type (UINT8 ... FLOAT64, BOOL)."""
        self.add(key, vtype, SCALARS[vtype].pack(value))

    def u32(self, key: str, value: int) -> None:
        self.scalar(key, UINT32, value)

    def f32(self, key: str, value: float) -> None:
        self.scalar(key, FLOAT32, value)

    def boolean(self, key: str, value: bool) -> None:
        self.scalar(key, BOOL, int(value))

    def text(self, key: str, value: str) -> None:
        self.add(key, STRING, encode_string(value))

    def strings(self, key: str, values: Sequence[str | bytes]) -> None:
        payload = b"".join(encode_string(v) for v in values)
        self.add(key, ARRAY, struct.pack("<iQ", STRING, len(values)) + payload)

    def numbers(self, key: str, vtype: int, values: npt.ArrayLike) -> None:
        """An array of scalars of value type ``vtype`` (INT32, FLOAT32, ...), converted to its dtype."""
        array = np.ascontiguousarray(values, dtype=DTYPES[vtype]).reshape(-1)
        self.add(key, ARRAY, struct.pack("<iQ", vtype, len(array)) + array.tobytes())

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
    """(name, shape, ggml type) in file order -> their layout, each tensor's data padded to ``alignment``.

    ValueError for a name given twice; InvalidArgument for an unknown type or a row it cannot hold."""
    planned: list[TensorLayout] = []
    names: set[str] = set()
    offset = 0
    for name, shape, ggml_type in tensors:
        if name in names:
            raise ValueError(f"tensor {name} is given twice")
        names.add(name)
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


def write_array(out: BinaryIO, array: npt.NDArray[Any]) -> int:
    """Write a numpy array's bytes (row order, no copy when it is contiguous); returns their count."""
    data = np.ascontiguousarray(array)
    out.write(data.data.cast("B"))
    return data.nbytes


def copy_from_file(out: BinaryIO, source_fd: int, offset: int, size: int) -> int:
    """Append ``size`` bytes of the file ``source_fd`` from ``offset`` to ``out``; returns ``size``.

    The bytes are copied by the kernel (``os.copy_file_range``, never through Python) where the system
    and the file systems allow it, else read and written in 1 MiB chunks. ``out`` is written at its end.
    OSError when the source ends early.
    """
    out.flush()
    target = out.fileno()
    remaining = size
    use_kernel = hasattr(os, "copy_file_range")
    while remaining:
        if use_kernel:
            try:
                copied = os.copy_file_range(source_fd, target, remaining, offset)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                use_kernel = False
                continue
        else:
            chunk = os.pread(source_fd, min(remaining, _COPY_CHUNK), offset)
            copied = len(chunk) and os.write(target, chunk)
        if copied <= 0:
            raise OSError(errno.EIO, f"the source ended with {remaining} of {size} bytes left to copy")
        offset += copied
        remaining -= copied
    out.seek(0, os.SEEK_END)  # the buffered file learns where the copy left the descriptor
    return size


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
    "copy_from_file",
    "encode_gguf",
    "encode_header",
    "encode_string",
    "plan_tensors",
    "write_array",
    "write_gguf",
]
