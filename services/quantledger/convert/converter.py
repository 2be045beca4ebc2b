"""Convert a Hugging Face folder (config.json + safetensors + tokenizer) to a GGUF file, without torch.

Memory stays bounded: the GGUF header (with every tensor's type and shape) is written first, then the
tensors one at a time, each read from its memory-mapped safetensors file, transformed (LoRA merge,
rotary permutation), converted and written before the next is read. The output is written under a
temporary name and renamed; a failure leaves nothing behind. Nothing from the folder is executed.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from quantledger.client_files import check_member_name, folder_has, folder_names
from quantledger.convert.architectures import ARCHITECTURES, Architecture
from quantledger.convert.safetensors_reader import SafetensorsFile, TensorEntry
from quantledger.convert.vocab import Vocab, load_vocab, tokenizer_kind
from quantledger.errors import ConversionFailed, SourceInvalid, UnsupportedArchitecture, quote_client
from quantledger.gguf.bf16 import bf16_bits_to_float32, float32_to_bf16_bits
from quantledger.gguf.format import FLOAT32, INT32, UINT8
from quantledger.gguf.q8_0 import quantize_q8_0
from quantledger.gguf.types import ggml_types, ggml_types_by_name
from quantledger.gguf.writer import GgufMetadata, TensorLayout, copy_from_file, plan_tensors, write_array, write_gguf
from quantledger.json_files import hf_architecture, read_hf_config, read_json_object
from registry_client.atomic_files import AtomicFile

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)
# part of the conversion cache key: bump it whenever the bytes a conversion writes change
# 2: written by gguf/writer.py instead of gguf-py; 3: unknown/padding token ids under llama.cpp's key names
# (they were written as unk_/pad_token_id, which llama.cpp does not read), rerankers
CONVERTER_VERSION = "quantledger-convert-3"
OUT_TYPES = ("F32", "F16", "BF16", "Q8_0")  # ggml type names (gguf/types.py)
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7}
POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}
# Vocab.special keys -> llama.cpp's names (tokenizer.ggml.{name}_token_id, llama-arch.cpp LLM_KV_TOKENIZER_*_ID)
_SPECIAL_KEY_NAMES = {"unk": "unknown", "pad": "padding", "sep": "seperator"}
# a cross-encoder's pair layout (llama.cpp: llama_model_chat_template(model, "rerank"))
RERANK_TEMPLATE_KEY = "tokenizer.chat_template.rerank"
# true when the model's segment embedding for token type 1 differs from type 0's, which llama.cpp uses
# for every token: its scores are those of the model with every token typed 0 (docs/QUALITY.md)
TOKEN_TYPES_DROPPED_KEY = "quantledger.token_types_dropped"
# llama.cpp reads these as F32 only (its own converter keeps them so)
ALWAYS_F32 = frozenset({"position_embd.weight", "token_types.weight"})

TensorTransform = Callable[[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]


@dataclass(frozen=True)
class HfModelInfo:
    folder: pathlib.Path
    architecture: str
    gguf_architecture: str
    config: dict[str, Any]
    weight_files: tuple[pathlib.Path, ...]
    weight_bytes: int
    parameter_count: int
    torch_dtype: str
    tokenizer_kind: str


@dataclass(frozen=True)
class ConversionResult:
    path: pathlib.Path
    out_type: str
    architecture: str
    gguf_architecture: str
    tensor_count: int
    parameter_count: int
    bytes_written: int
    seconds: float


def architecture_for(config: Mapping[str, Any], label: str) -> Architecture:
    """The converter's knowledge of ``config.architectures[0]``; UnsupportedArchitecture names the
    supported ones. ``label`` (folder or repo id) names the model in the message."""
    name = hf_architecture(config)
    if name not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{quote_client(label, quoted=False)} is a "
            f"{quote_client(name, 100, quoted=False) or 'model without config.architectures'}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}",
            architecture=name,
        )
    return ARCHITECTURES[name]


def weight_files(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """The folder's safetensors files: those its weight index names (plain file names inside the folder
    only), or every ``*.safetensors``. Each is opened through client_files when read."""
    index = folder / "model.safetensors.index.json"
    if folder_has(folder, index.name):
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SourceInvalid(f"{index.name} has no weight_map object")
        names = set()
        for value in weight_map.values():
            if not isinstance(value, str):
                raise SourceInvalid(f"{index.name}: a weight_map value is not a file name")
            names.add(check_member_name(value, what=f"{index.name}: weight_map entry"))
        missing = [name for name in sorted(names) if not folder_has(folder, name)]
        if missing:
            shown = ", ".join(quote_client(name, 100) for name in missing[:10])
            raise SourceInvalid(f"{folder.name}: the index names missing shards {shown}")
        return tuple(folder / name for name in sorted(names))
    files = [folder / name for name in folder_names(folder, ".safetensors")]
    if not files:
        raise SourceInvalid(f"{folder.name} has config.json but no *.safetensors weights (.bin pickles are not read)")
    return tuple(files)


def inspect_hf_folder(folder: str | os.PathLike[str]) -> HfModelInfo:
    """What the folder holds, from config.json and the safetensors headers only (never the weights)."""
    root = pathlib.Path(folder)
    config = read_hf_config(root)
    architecture = architecture_for(config, root.name)
    files = weight_files(root)
    entries = [entry for path in files for entry in SafetensorsFile(path).entries()]
    return HfModelInfo(
        folder=root,
        architecture=architecture.hf_name,
        gguf_architecture=architecture.gguf_name,
        config=config,
        weight_files=files,
        weight_bytes=sum(e.end - e.start for e in entries),
        parameter_count=sum(e.n_elements for e in entries),
        torch_dtype=str(config.get("torch_dtype", "")),
        tokenizer_kind=tokenizer_kind(root, architecture.kind, architecture.hf_name),
    )


def weights_summary(folder: str | os.PathLike[str]) -> tuple[int, int]:
    """(parameters, weight bytes) of a folder's safetensors, from their headers, whatever the architecture."""
    entries = [entry for path in weight_files(pathlib.Path(folder)) for entry in SafetensorsFile(path).entries()]
    return sum(e.n_elements for e in entries), sum(e.end - e.start for e in entries)


def _as_float32(array: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    return bf16_bits_to_float32(array) if dtype == "BF16" else array.astype(np.float32, copy=False)


def _type_id(name: str) -> int:
    return ggml_types_by_name()[name].id


def _target(name: str, shape: tuple[int, ...], out_type: str) -> int:
    """The ggml type of a tensor: norms, biases and 1-D tensors stay F32; 2-D weights take the output
    type (Q8_0 where rows allow, else F16)."""
    if len(shape) < 2 or name.endswith((".bias", "_norm.weight", "norm.weight")) or name in ALWAYS_F32:
        return _type_id("F32")
    if out_type == "Q8_0" and shape[-1] % ggml_types_by_name()["Q8_0"].block_size:
        return _type_id("F16")
    return _type_id(out_type)


def _kept_shape(arch: Architecture, entry: TensorEntry, config: dict[str, Any]) -> tuple[int, ...]:
    """The tensor's shape in the GGUF: the safetensors one less the rows the architecture drops."""
    dropped = arch.dropped_rows(entry.name, config)
    if not dropped:
        return entry.shape
    if len(entry.shape) != 2 or entry.shape[0] <= dropped:
        raise SourceInvalid(f"{arch.hf_name}: tensor {entry.name} has shape {list(entry.shape)}")
    return (entry.shape[0] - dropped, *entry.shape[1:])


def _check_required(arch: Architecture, info: HfModelInfo, kept: Mapping[str, TensorEntry]) -> None:
    """Every tensor the architecture requires is in the folder, before anything is written (a reranker
    without its classification head, a decoder without a layer's MLP: SourceInvalid naming it)."""
    for name, spec in arch.tensors(info.config, kept).items():
        if spec.required and name not in kept:
            raise SourceInvalid(f"{info.architecture}: required tensor {quote_client(name, 100)} is missing")


def _moves_rows(arch: Architecture, name: str) -> bool:
    """Whether the architecture permutes this tensor (llama q/k rotary layout), so its bytes change."""
    return arch.gguf_name == "llama" and name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight"))


def _same_type(dtype: str, kind: int) -> bool:
    """Whether a safetensors dtype is stored exactly as ggml type ``kind`` (F32, F16, BF16)."""
    return dtype in ("F32", "F16", "BF16") and _type_id(dtype) == kind


def _encode(array: np.ndarray[Any, Any], kind: int) -> np.ndarray[Any, Any]:
    """float32 values in ggml type ``kind`` (F32, F16, BF16 or Q8_0), little endian."""
    name = ggml_types()[kind].name
    if name == "F32":
        return array.astype("<f4")
    if name == "F16":
        return array.astype("<f2")
    if name == "BF16":
        return float32_to_bf16_bits(array)
    if name == "Q8_0":
        return quantize_q8_0(array)
    raise ValueError(f"the converter does not write {name}")


def _metadata(
    arch: Architecture,
    info: HfModelInfo,
    vocab: Vocab,
    out_type: str,
    metadata: Mapping[str, str],
    token_types_dropped: bool = False,
) -> GgufMetadata:
    """The converted file's keys, named and typed as llama.cpp's convert_hf_to_gguf.py writes them."""
    meta = GgufMetadata()
    prefix = arch.gguf_name
    meta.text("general.architecture", prefix)
    for key, value in arch.hparams(info.config).items():
        full = f"{prefix}.{key}"
        if isinstance(value, bool):
            meta.boolean(full, value)
        elif isinstance(value, int):
            meta.u32(full, value)
        elif isinstance(value, list):
            meta.strings(full, [str(item) for item in value])
        else:
            meta.f32(full, float(value))
    meta.u32(f"{prefix}.vocab_size", len(vocab.tokens))
    if arch.kind == "embedding":
        pooling = _pooling(info.folder)
        if pooling is not None:
            meta.u32(f"{prefix}.pooling_type", pooling)
    meta.u32("general.file_type", FILE_TYPES[out_type])
    for key, value in metadata.items():
        meta.text(key, value)
    meta.text("tokenizer.ggml.model", vocab.model)
    meta.text("tokenizer.ggml.pre", vocab.pre)
    meta.strings("tokenizer.ggml.tokens", vocab.tokens)
    meta.numbers("tokenizer.ggml.token_type", INT32, vocab.types)
    if vocab.scores is not None:
        meta.numbers("tokenizer.ggml.scores", FLOAT32, vocab.scores)
    if vocab.merges:
        meta.strings("tokenizer.ggml.merges", vocab.merges)
    if vocab.token_type_count is not None:
        meta.u32("tokenizer.ggml.token_type_count", vocab.token_type_count)
    if vocab.add_space_prefix is not None:
        meta.boolean("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        meta.boolean("tokenizer.ggml.remove_extra_whitespaces", vocab.remove_extra_whitespaces)
    if vocab.precompiled_charsmap:
        meta.numbers("tokenizer.ggml.precompiled_charsmap", UINT8, np.frombuffer(vocab.precompiled_charsmap, np.uint8))
    for key, token_id in vocab.special.items():
        meta.u32(f"tokenizer.ggml.{_SPECIAL_KEY_NAMES.get(key, key)}_token_id", token_id)
    if vocab.add_bos is not None:
        meta.boolean("tokenizer.ggml.add_bos_token", vocab.add_bos)
    if vocab.add_eos is not None:
        meta.boolean("tokenizer.ggml.add_eos_token", vocab.add_eos)
    if vocab.chat_template:
        meta.text("tokenizer.chat_template", vocab.chat_template)
    if arch.kind == "reranker":
        meta.text(RERANK_TEMPLATE_KEY, rerank_template(vocab))
        if token_types_dropped:
            meta.boolean(TOKEN_TYPES_DROPPED_KEY, True)
    return meta


def rerank_template(vocab: Vocab) -> str:
    """How a (query, passage) pair is laid out, as the model's tokenizer pairs them: BERT
    ``[CLS] query [SEP] passage [SEP]``, RoBERTa ``<s> query </s></s> passage </s>``. llama.cpp's server
    reads it (``tokenizer.chat_template.rerank``) for its /rerank route, and so does quantledger's scoring
    (quality/rerank.py); without it llama.cpp would leave out the closing separator of a BERT pair."""
    first = vocab.special.get("cls", vocab.special.get("bos"))
    last = vocab.special.get("sep", vocab.special.get("eos"))
    if first is None or last is None:
        raise SourceInvalid("the tokenizer names no [CLS]/<s> or [SEP]/</s> token to lay out (query, passage) pairs")
    bos, sep = vocab.tokens[first], vocab.tokens[last]
    middle = sep if vocab.model == "bert" else sep + sep
    return f"{bos}{{query}}{middle}{{document}}{sep}"


def token_types_differ(source: SafetensorsFile, entry: TensorEntry) -> bool:
    """Whether a BERT model's token-type (segment) embedding has a second row unlike the first: llama.cpp
    adds row 0 to every token ("token types are hardcoded to zero"), so such a cross-encoder, trained
    with its passage as segment 1, scores pairs in llama.cpp unlike in transformers (docs/QUALITY.md)."""
    if len(entry.shape) != 2 or entry.shape[0] < 2:
        return False
    rows = _as_float32(source.read(entry.name), entry.dtype)
    return bool(np.any(rows[1:] != rows[0]))


def _pooling(folder: pathlib.Path) -> int | None:
    path = folder / "1_Pooling" / "config.json"
    if not folder_has(folder, "1_Pooling/config.json", subfolders=True):
        return None
    config = read_json_object(path, subfolders=True)
    for mode, value in (("mean", POOLING["mean"]), ("cls", POOLING["cls"]), ("lasttoken", POOLING["lasttoken"])):
        if config.get(f"pooling_mode_{mode}_tokens"):
            return value
    return None


def convert_hf_to_gguf(
    folder: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    out_type: str = "F16",
    metadata: Mapping[str, str] | None = None,
    tensor_transform: TensorTransform | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Write the GGUF conversion of ``folder`` to ``out_path`` (atomically); see the module docstring."""
    started = time.monotonic()
    out_type = out_type.upper()
    if out_type not in OUT_TYPES:
        raise SourceInvalid(f"unknown intermediate type {out_type}; use one of {', '.join(OUT_TYPES)}")
    info = inspect_hf_folder(folder)
    arch = ARCHITECTURES[info.architecture]
    vocab = load_vocab(info.folder, info.tokenizer_kind, info.config)
    files = [SafetensorsFile(path) for path in info.weight_files]
    plan: list[tuple[SafetensorsFile, TensorEntry, str, int]] = []
    shapes: dict[str, tuple[int, ...]] = {}  # the GGUF's, in Hugging Face order
    token_types_dropped = False
    for source in files:
        for entry in source.entries():
            try:
                name = arch.rename(entry.name)
            except KeyError as exc:
                raise UnsupportedArchitecture(
                    f"{info.architecture}: unexpected tensor {quote_client(entry.name, 100)}"
                ) from exc
            if name is None:
                continue
            shape = _kept_shape(arch, entry, info.config)
            shapes[entry.name] = shape
            plan.append((source, entry, name, _target(name, shape, out_type)))
            if arch.kind == "reranker" and name == "token_types.weight":
                token_types_dropped = token_types_differ(source, entry)
    _check_required(arch, info, {e.name: e for _, e, _, _ in plan})
    final = pathlib.Path(out_path)
    total = sum(e.end - e.start for _, e, _, _ in plan)
    done = 0
    try:
        temp = AtomicFile(final, fsync=False)  # durable once the conversion cache stores it (fsync there)
    except OSError as exc:
        raise ConversionFailed(f"cannot write the conversion of {info.folder.name}: {exc.strerror}") from exc
    try:
        # ggml order: the row length (numpy's last dimension) first
        layouts = plan_tensors((name, tuple(reversed(shapes[entry.name])), kind) for _, entry, name, kind in plan)
        steps = iter(plan)  # write_gguf asks for the tensors in file order, the plan's

        def write_data(layout: TensorLayout, out: BinaryIO) -> int:
            nonlocal done
            source, entry, _name, kind = next(steps)
            dropped = arch.dropped_rows(entry.name, info.config)
            if tensor_transform is None and not _moves_rows(arch, entry.name) and _same_type(entry.dtype, kind):
                skip = (entry.end - entry.start) // entry.shape[0] * dropped if dropped else 0
                with source.open() as src:  # the same bytes: copied by the kernel, never through Python
                    size = copy_from_file(out, src.fileno(), entry.start + skip, entry.end - entry.start - skip)
            elif tensor_transform is None and _same_type(entry.dtype, kind):
                raw = source.read(entry.name)[dropped:]
                # no arithmetic needed: keep the bytes (the rotary permutation only moves rows)
                size = write_array(out, arch.transform(entry.name, raw, info.config))
            else:
                weight = _as_float32(source.read(entry.name), entry.dtype)[dropped:]
                if tensor_transform is not None:
                    weight = tensor_transform(entry.name, weight)
                weight = arch.transform(entry.name, weight, info.config)
                size = write_array(out, _encode(weight, kind))
            done += entry.end - entry.start
            if progress is not None:
                progress(done, total)
            return size

        header = _metadata(arch, info, vocab, out_type, metadata or {}, token_types_dropped)
        write_gguf(temp.file, header, layouts, write_data)
        temp.commit()
    except (SourceInvalid, UnsupportedArchitecture):
        temp.abort()
        raise
    except BaseException as exc:
        temp.abort()
        if isinstance(exc, OSError | ValueError):
            raise ConversionFailed(f"converting {info.folder.name} failed: {exc}") from exc
        raise
    return ConversionResult(
        path=final,
        out_type=out_type,
        architecture=info.architecture,
        gguf_architecture=arch.gguf_name,
        tensor_count=len(plan),
        parameter_count=sum(e.n_elements for _, e, _, _ in plan),
        bytes_written=final.stat().st_size,
        seconds=time.monotonic() - started,
    )
