"""Merge a PEFT LoRA adapter into base weights while they stream through the converter.

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with pairs
``base_model.model.{module}.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r]. The merged weight
is W + scale · B @ A with scale = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora``
(``rank_pattern`` / ``alpha_pattern`` override r and alpha per module). Pickled adapters (.bin), DoRA,
trained biases and ``modules_to_save`` are refused rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantledger.convert.safetensors_reader import SafetensorsFile, bf16_to_f32
from quantledger.errors import LoraInvalid, QuantledgerError

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")
Transform = Callable[[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]


@dataclass(frozen=True)
class LoraAdapter:
    path: pathlib.Path
    base_model: str | None
    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    sha256: str  # over adapter_config.json and adapter_model.safetensors: part of cache keys
    pairs: Mapping[str, tuple[str, str]]  # base weight name -> (lora_A key, lora_B key)

    def _pattern(self, patterns: Mapping[str, Any], module: str, default: Any) -> Any:
        for pattern, value in patterns.items():
            if re.search(rf"(^|\.){pattern}$", module):
                return value
        return default

    def scale_for(self, base_name: str) -> float:
        module = base_name.removesuffix(".weight")
        r = int(self._pattern(self.rank_pattern, module, self.r))
        alpha = float(self._pattern(self.alpha_pattern, module, self.alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def load_lora(directory: str | pathlib.Path) -> LoraAdapter:
    """Read and validate an adapter folder; LoraInvalid says what is wrong."""
    root = pathlib.Path(directory)
    config_path, weights_path = root / "adapter_config.json", root / "adapter_model.safetensors"
    if not config_path.is_file():
        raise LoraInvalid(f"{root} has no adapter_config.json: not a PEFT adapter folder")
    if not weights_path.is_file():
        if (root / "adapter_model.bin").is_file():
            raise LoraInvalid("adapter_model.bin is a pickle and is never loaded: save the adapter as safetensors")
        raise LoraInvalid(f"{root} has no adapter_model.safetensors")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoraInvalid(f"adapter_config.json is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise LoraInvalid(f"peft_type {config.get('peft_type') if isinstance(config, dict) else None!r} is not LORA")
    for feature, present in (
        ("use_dora (DoRA)", bool(config.get("use_dora"))),
        (f"bias={config.get('bias')!r}", config.get("bias", "none") not in ("none", None)),
        ("modules_to_save", bool(config.get("modules_to_save"))),
    ):
        if present:
            raise LoraInvalid(f"the adapter uses {feature}, which merging does not support")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, int | float):
        raise LoraInvalid(f"adapter_config.json: r must be a positive integer and lora_alpha a number (r={r!r})")
    try:
        weights = SafetensorsFile(weights_path)
    except QuantledgerError as exc:
        raise LoraInvalid(f"adapter_model.safetensors: {exc.message}") from exc
    halves: dict[str, dict[str, str]] = {}
    for key in weights.tensors:
        match = _KEY.match(key)
        if match is None:
            raise LoraInvalid(
                f"unexpected tensor {key} in the adapter (embedding LoRA and extra modules are not merged)"
            )
        halves.setdefault(f"{match['module']}.weight", {})[match["part"]] = key
    pairs = {}
    for base, found in halves.items():
        if set(found) != {"A", "B"}:
            raise LoraInvalid(f"{base}: lora_{'A' if 'A' not in found else 'B'} is missing")
        a, b = weights.tensors[found["A"]], weights.tensors[found["B"]]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise LoraInvalid(f"{base}: lora_A {a.shape} and lora_B {b.shape} do not make a rank-r product")
        pairs[base] = (found["A"], found["B"])
    if not pairs:
        raise LoraInvalid("the adapter holds no LoRA weights")
    digest = hashlib.sha256(config_path.read_bytes())
    with open(weights_path, "rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    return LoraAdapter(
        path=root,
        base_model=config.get("base_model_name_or_path"),
        r=r,
        alpha=float(alpha),
        use_rslora=bool(config.get("use_rslora")),
        fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        rank_pattern=dict(config.get("rank_pattern") or {}),
        alpha_pattern=dict(config.get("alpha_pattern") or {}),
        sha256=digest.hexdigest(),
        pairs=pairs,
    )


def check_against_base(adapter: LoraAdapter, base_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every adapted weight exists in the base with the shape B @ A has."""
    weights = SafetensorsFile(adapter.path / "adapter_model.safetensors")
    for base, (a_key, b_key) in adapter.pairs.items():
        if base not in base_shapes:
            raise LoraInvalid(f"the adapter changes {base}, which the base model does not have")
        product = (weights.tensors[b_key].shape[0], weights.tensors[a_key].shape[1])
        expected = product[::-1] if adapter.fan_in_fan_out else product
        if tuple(base_shapes[base]) != expected:
            raise LoraInvalid(
                f"{base}: the base weight is {tuple(base_shapes[base])} but the adapter's B @ A is {expected}"
            )


def merging_transform(adapter: LoraAdapter) -> Transform:
    """f(name, weight) -> weight + scale * B @ A for adapted weights, the same object otherwise."""
    weights = SafetensorsFile(adapter.path / "adapter_model.safetensors")

    def read(key: str) -> np.ndarray[Any, Any]:
        entry = weights.tensors[key]
        data = weights.read(key)
        return bf16_to_f32(data.view(np.uint16)) if entry.dtype == "BF16" else data.astype(np.float32)

    def merge(name: str, weight: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        pair = adapter.pairs.get(name)
        if pair is None:
            return weight
        delta = read(pair[1]) @ read(pair[0])
        if adapter.fan_in_fan_out:
            delta = delta.T
        if delta.shape != weight.shape:
            raise LoraInvalid(f"{name}: the base weight is {weight.shape} but the adapter's B @ A is {delta.shape}")
        merged: np.ndarray[Any, Any] = weight.astype(np.float32) + np.float32(adapter.scale_for(name)) * delta
        return merged.astype(weight.dtype)

    return merge
