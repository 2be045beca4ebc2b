"""Byte layout of GGUF files: tensor sizes and the exact size of the file llama.cpp quantizes to.

:func:`predict_quantized_file_size` reproduces the layout ``llama_model_quantize`` writes (llama.cpp
``src/llama-quant.cpp`` with ``ggml/src/gguf.cpp``): every source key copied, the given u32 keys
(re)set, the split keys removed, one tensor info per tensor with trailing unit dimensions dropped,
the metadata padded to 32 bytes and every tensor's data padded to 32 bytes. llama.cpp always pads to
the default alignment of 32 there, whatever ``general.alignment`` the source declares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from quantledger.errors import InvalidArgument
from quantledger.gguf.format import DEFAULT_ALIGNMENT, HEADER_BYTES, cut_at_nul, pad
from quantledger.gguf.reader import GgufHeader
from quantledger.gguf.types import ggml_types

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """Bytes of a tensor of ``shape`` (ggml order, row length first) stored as ``ggml_type``.

    Raises InvalidArgument for an unknown type or one whose block size does not divide a row.
    """
    kind = ggml_types().get(ggml_type)
    if kind is None:
        raise InvalidArgument(f"unknown ggml type {ggml_type}")
    if shape and shape[0] % kind.block_size:
        raise InvalidArgument(
            f"row length {shape[0]} is not a multiple of the {kind.name} block size {kind.block_size}"
        )
    return kind.row_bytes(math.prod(shape))


def n_dims_written(shape: tuple[int, ...]) -> int:
    """Dimensions llama.cpp writes for a tensor: trailing dimensions of size 1 are dropped."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def tensor_info_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes of one tensor's info as llama.cpp writes it: name (cut at a NUL), dimensions, type, offset."""
    return 8 + cut_at_nul(name.encode("utf-8")) + 4 + 8 * n_dims_written(shape) + 4 + 8


def predict_quantized_file_size(
    header: GgufHeader,
    new_types: Mapping[str, int],
    set_values: Mapping[str, int | float | bool | str],
    extra_kv: Mapping[str, int] | None = None,
) -> int:
    """The exact size of the file ``llama_model_quantize`` writes for this source.

    ``new_types`` gives the ggml type of each tensor in the output (tensors not named keep their type);
    ``set_values`` the keys llama.cpp sets: ints are written as u32 (``general.quantization_version``,
    ``general.file_type``, integer kv_overrides), floats as f32, bools as bool, strings as strings.
    ``extra_kv`` adds keys set after the split keys are dropped, as key -> bytes of the typed value
    (type tag included): the split keys of a keep_split output shard.
    Raises InvalidArgument for an unknown type or one whose block size does not divide a row.
    """
    meta = HEADER_BYTES + predicted_kv_bytes(header, set_values, extra_kv)

    table = ggml_types()
    data = 0
    for tensor in header.tensors:
        meta += tensor_info_bytes(tensor.name, tensor.shape)
        type_id = new_types.get(tensor.name, tensor.ggml_type)
        kind = table.get(type_id)
        if kind is None:
            raise InvalidArgument(f"unknown ggml type {type_id} for tensor {tensor.name}")
        type_name, block, block_bytes = kind.name, kind.block_size, kind.block_bytes
        if tensor.shape[0] % block:
            raise InvalidArgument(
                f"tensor {tensor.name}: row length {tensor.shape[0]} is not a multiple of the "
                f"{type_name} block size {block}"
            )
        data += pad(tensor.n_elements // block * block_bytes, DEFAULT_ALIGNMENT)
    return pad(meta, DEFAULT_ALIGNMENT) + data


def predicted_kv_bytes(
    header: GgufHeader,
    set_values: Mapping[str, int | float | bool | str],
    extra_kv: Mapping[str, int] | None = None,
) -> int:
    """Bytes of the key/value section llama.cpp writes for this source (see predict_quantized_file_size)."""
    if header.metadata and not header.kv_layout:
        raise InvalidArgument("the header carries no key layout: read it with read_gguf_header")
    keys: dict[bytes, int] = {}
    for raw_key, value_bytes in header.kv_layout:
        keys.pop(raw_key, None)  # llama.cpp's gguf_set_* removes an existing key and appends
        keys[raw_key] = value_bytes
    for key, value in set_values.items():
        raw_key = key.encode("utf-8")
        raw_key = raw_key[: cut_at_nul(raw_key)]
        keys.pop(raw_key, None)
        if isinstance(value, str):
            raw_value = value.encode("utf-8")
            keys[raw_key] = 4 + 8 + cut_at_nul(raw_value)  # type tag, length, bytes up to a NUL
        elif isinstance(value, bool):
            keys[raw_key] = 4 + 1  # type tag, bool
        else:
            keys[raw_key] = 4 + 4  # type tag, u32 or f32
    for key in SPLIT_KEYS:
        keys.pop(key.encode(), None)
    for key, value_bytes in (extra_kv or {}).items():
        keys.pop(key.encode(), None)
        keys[key.encode()] = value_bytes
    return sum(8 + len(raw_key) + value_bytes for raw_key, value_bytes in keys.items())
