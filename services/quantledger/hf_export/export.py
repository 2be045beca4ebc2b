"""Write one Hugging Face output folder with transformers (and bitsandbytes): runs in a worker process.

``merge_lora`` writes the source with a LoRA merged in, tensor by tensor through the converter's own
merge (convert/lora.py ``LoraMerge``), one safetensors shard at a time in the source's dtypes, so GGUF and
Hugging Face outputs of one job carry the same merged weights. ``export_folder`` loads that folder with
``from_pretrained`` in the format's dtype or ``BitsAndBytesConfig`` (on the CPU; bitsandbytes quantizes
while loading), saves it with ``save_pretrained`` (safetensors shards, the config with its
``quantization_config``) and copies the tokenizer and the other small files a loader needs.

Nothing here runs remote code (``trust_remote_code`` is never set). Imports of torch and transformers
happen inside the functions: this module is imported only by the worker.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

from quantledger.client_files import folder_file
from quantledger.errors import FormatNotApplicable, SourceInvalid
from quantledger.hf_export.formats import HfFormat, require_available

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
# written by save_pretrained itself: never copied from the source
WRITTEN = frozenset({"config.json", "generation_config.json", "model.safetensors.index.json"})
MAX_SHARD_SIZE = "2GB"
Emit = Callable[[dict[str, Any]], None]


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def model_class(config: dict[str, Any]) -> Any:
    """The transformers auto class for the config's first architecture: causal LM, sequence classifier
    (rerankers) or the bare encoder (embedders)."""
    import transformers

    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForCausalLM"):
        return transformers.AutoModelForCausalLM
    if architecture.endswith("ForSequenceClassification"):
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModel


def _read_config(folder: pathlib.Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceInvalid(f"{folder.name}: config.json cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise SourceInvalid(f"{folder.name}: config.json is not an object")
    return config


def quantized_layer_count(model: Any) -> int:
    """The layers bitsandbytes replaced in a loaded ``model`` (``nn.Linear`` and GPT-2's ``Conv1D``, the
    output embedding kept in float16): int8 and 4-bit linear modules."""
    import bitsandbytes

    kinds = (bitsandbytes.nn.Linear8bitLt, bitsandbytes.nn.Linear4bit)  # type: ignore[attr-defined]
    return sum(1 for module in model.modules() if isinstance(module, kinds))


def _quantization_config(fmt: HfFormat) -> Any:
    import torch
    import transformers

    if fmt.bnb == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    if fmt.bnb == "nf4":
        return transformers.BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16,
        )
    return None


def copy_side_files(source: pathlib.Path, target: pathlib.Path) -> list[str]:
    """Copy what a loader needs beside the weights (tokenizer files, generation and pooling configs of
    sentence-transformers) from ``source``: every regular file that is not a weight file and not written
    by save_pretrained, sub-folders included; returns the relative paths copied."""
    copied = []
    for directory, subdirectories, names in os.walk(source, followlinks=False):
        subdirectories.sort()
        for name in sorted(names):
            relative = (pathlib.Path(directory) / name).relative_to(source)
            if (
                relative.as_posix() in WRITTEN
                or relative.suffix in WEIGHT_SUFFIXES
                or relative.parts[0].startswith(".")
            ):
                continue
            if not (target / relative).exists():
                copy_member(source, relative.as_posix(), target)
                copied.append(relative.as_posix())
    return copied


def copy_member(source: pathlib.Path, relative: str, target: pathlib.Path) -> None:
    """Copy the file ``relative`` of ``source`` to the same place under ``target``, opened as every file of a
    client's folder is (client_files.folder_file: a link leading out of the folder is PATH_NOT_ALLOWED)."""
    (target / relative).parent.mkdir(parents=True, exist_ok=True)
    with folder_file(source, relative, subfolders=True) as src, open(target / relative, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def export_folder(source: pathlib.Path, fmt: HfFormat, target: pathlib.Path, *, threads: int = 0) -> dict[str, Any]:
    """Write ``fmt`` of the model in ``source`` into the new folder ``target`` (which must not exist);
    returns what was written. FORMAT_NOT_APPLICABLE (and nothing written) for a bitsandbytes format of a
    model with no linear layer to quantize (bitsandbytes replaces ``nn.Linear`` and GPT-2's ``Conv1D``;
    transformers keeps the output embedding in float16)."""
    require_available(fmt)
    import torch

    if threads:
        torch.set_num_threads(threads)
    config = _read_config(source)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(fmt.torch_dtype), "low_cpu_mem_usage": True}
    quantization = _quantization_config(fmt)
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map="cpu")
    model = model_class(config).from_pretrained(source, **kwargs)
    linear = quantized_layer_count(model) if fmt.bnb else 0
    if fmt.bnb and linear == 0:  # checked before anything is written
        raise FormatNotApplicable(
            f"{fmt.name} quantizes linear layers and {config.get('architectures') or source.name} has none",
            format=fmt.name,
        )
    target.mkdir()
    try:
        model.save_pretrained(target, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
        copied = copy_side_files(source, target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    from safetensors import safe_open

    tensors = 0
    for path in target.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            tensors += len(list(handle.keys()))
    parameters = sum(p.numel() for p in model.parameters())
    return {"linear_layers": linear, "parameters": int(parameters), "tensors": tensors, "copied": copied}


def merge_lora(source: pathlib.Path, lora_dir: str, target: pathlib.Path, emit: Emit | None = None) -> None:
    """``source`` with the LoRA in ``lora_dir`` merged, written to the new folder ``target``: the same
    safetensors file names and dtypes, the side files copied. Every adapted weight must be found."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from quantledger.convert.converter import weight_files
    from quantledger.convert.lora import load_lora, merging_transform

    merge = merging_transform(load_lora(lora_dir))
    target.mkdir()
    try:
        files = weight_files(source)
        for index, path in enumerate(files):
            tensors = {}
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    tensor = handle.get_tensor(name)
                    if name in merge.adapter.pairs:
                        if tensor.dtype == torch.bfloat16:
                            bits = tensor.view(torch.int16).numpy().view("uint16")
                            tensor = torch.from_numpy(merge(name, bits).view("int16")).view(torch.bfloat16)
                        else:
                            tensor = torch.from_numpy(merge(name, tensor.numpy()))
                    tensors[name] = tensor.contiguous()
            save_file(tensors, str(target / path.relative_to(source)), metadata={**metadata, "format": "pt"})
            del tensors
            if emit is not None:
                emit({"event": "merge_progress", "files_done": index + 1, "files_total": len(files)})
        if (source / "model.safetensors.index.json").is_file():
            copy_member(source, "model.safetensors.index.json", target)
        for name in ("config.json", "generation_config.json"):
            if (source / name).is_file():
                copy_member(source, name, target)
        copy_side_files(source, target)
        left = merge.unmerged()
        if left:
            from quantledger.errors import LoraInvalid

            raise LoraInvalid(f"the adapter changes weights the model lacks: {', '.join(left[:5])}")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
