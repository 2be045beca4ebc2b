"""Merge a PEFT LoRA adapter into base weights while they stream through the converter.

An adapter folder, as PEFT's ``save_pretrained`` writes it, holds ``adapter_config.json`` and
``adapter_model.safetensors``. The weights file has, per adapted ``nn.Linear`` module, a pair

    base_model.model.{module}.lora_A.weight   [r, in_features]
    base_model.model.{module}.lora_B.weight   [out_features, r]

(the adapter name, ``default``, is stripped on save; a leftover ``.default`` is tolerated). The base
weight it changes is ``{module}.weight`` [out_features, in_features], and the merge is

    W' = W + scale · (B @ A)        scale = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora``

where ``rank_pattern`` / ``alpha_pattern`` replace r and lora_alpha for the modules whose name matches
a pattern (PEFT semantics: the pattern matches the whole module name or a dotted suffix of it, and the
first matching pattern in the file's order wins). With ``fan_in_fan_out`` (GPT-2 style ``Conv1D``) the
base weight is stored [in, out] and the delta is transposed.

What would change the model in ways a plain merge cannot express is refused with ``LoraInvalid``
naming the feature rather than silently dropped: pickled adapters (``adapter_model.bin`` is never
unpickled), DoRA, trained bias tensors, ``modules_to_save`` replacement weights, embedding LoRA,
LoRA on convolutions or raw parameters, layer replication, and PiSSA/OLoRA/CorDA/LoftQ adapters saved
without conversion (those expect a modified base model).

Memory: loading reads only the safetensors header; the transform reads the two small adapter tensors
of a base weight when that weight arrives, so at most one base tensor (plus its delta) is in memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open

from quantledger.client_files import folder_file, folder_has, reopen_path
from quantledger.client_patterns import ClientPattern, compile_client_pattern, compile_client_patterns
from quantledger.errors import LoraInvalid, quote_client
from quantledger.gguf.bf16 import bf16_bits_to_float32, float32_to_bf16_bits
from quantledger.json_files import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
KEY_PREFIX = "base_model.model."
# PEFT's LoraConfig defaults, used when adapter_config.json leaves a field out
DEFAULT_R = 8
DEFAULT_ALPHA = 8.0

_PAIR_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<half>[AB])(?:\.default)?\.weight")
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
# init_lora_weights values whose adapters are only valid on a base model they modified
_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")
_F16_LIMIT = 65520.0  # the smallest magnitude float16 rounds to infinity

FloatArray = npt.NDArray[np.float32]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class LoraAdapter:
    """A validated PEFT LoRA adapter folder; tensors stay on disk until a merge needs them."""

    path: Path
    base_model: str | None  # base_model_name_or_path, informational
    r: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # as configured: module names, or one regular expression
    fan_in_fan_out: bool
    sha256: str  # over adapter_config.json and adapter_model.safetensors: part of conversion cache keys
    pairs: Mapping[str, tuple[str, str]]  # base weight name -> (lora_A key, lora_B key)
    rank_pattern: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    alpha_pattern: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    # base weight name -> shape of B @ A, i.e. (out_features, in_features), before any fan_in_fan_out transpose
    delta_shapes: Mapping[str, tuple[int, int]] = field(default_factory=lambda: _frozen({}))

    @property
    def weights_path(self) -> Path:
        """The adapter's ``adapter_model.safetensors``."""
        return self.path / ADAPTER_WEIGHTS

    def rank_for(self, base_name: str) -> int:
        """The rank PEFT gives the module of ``base_name`` (``rank_pattern`` first, then ``r``)."""
        return int(_pattern_value(self.rank_pattern, _module_of(base_name), self.r))

    def alpha_for(self, base_name: str) -> float:
        """The lora_alpha PEFT gives the module of ``base_name`` (``alpha_pattern`` first, then lora_alpha)."""
        return float(_pattern_value(self.alpha_pattern, _module_of(base_name), self.alpha))

    def scale_for(self, base_name: str) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA, for the module of ``base_name``."""
        r, alpha = self.rank_for(base_name), self.alpha_for(base_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def expected_base_shape(self, base_name: str) -> tuple[int, int]:
        """The shape the base weight must have: (out, in), or (in, out) with fan_in_fan_out."""
        out_features, in_features = self.delta_shapes[base_name]
        return (in_features, out_features) if self.fan_in_fan_out else (out_features, in_features)


def _module_of(base_name: str) -> str:
    return base_name.removesuffix(".weight")


# PEFT's rule: a pattern matches the whole module name or a dotted suffix of it
_PATTERN_WRAP = r"(?:.*\.)?(?:{})"


@functools.lru_cache(maxsize=1024)
def _compiled_pattern(pattern: str) -> ClientPattern:
    """A rank/alpha pattern compiled with RE2 (client_patterns.py): linear time whatever the adapter says."""
    return compile_client_pattern(pattern, f"{ADAPTER_CONFIG}: pattern", error=LoraInvalid, wrap=_PATTERN_WRAP)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    for pattern, value in patterns.items():
        if _compiled_pattern(pattern).fullmatch(module):
            return value
    return default


def load_lora(directory: str | os.PathLike[str]) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter folder (config and safetensors header only).

    Raises LoraInvalid saying what is wrong: missing files, a pickled adapter, a config that is not a
    LoRA one or uses an unsupported feature, keys that are not A/B pairs, or shapes that do not make a
    rank-r product.
    """
    root = Path(directory)
    if not root.is_dir():
        raise LoraInvalid(f"{root} is not a directory: a LoRA adapter is a PEFT adapter folder", path=str(root))
    config_path, weights_path = root / ADAPTER_CONFIG, root / ADAPTER_WEIGHTS
    if not folder_has(root, ADAPTER_CONFIG):
        raise LoraInvalid(f"{root} has no {ADAPTER_CONFIG}: not a PEFT adapter folder", path=str(root))
    if not folder_has(root, ADAPTER_WEIGHTS):
        pickled = [name for name in PICKLED_WEIGHTS if folder_has(root, name)]
        if pickled:
            raise LoraInvalid(
                f"{pickled[0]}: pickle files are not loaded; convert to safetensors "
                f"(save_pretrained(..., safe_serialization=True) writes {ADAPTER_WEIGHTS})",
                path=str(root),
            )
        raise LoraInvalid(f"{root} has no {ADAPTER_WEIGHTS}", path=str(root))
    config = _read_config(config_path)
    _refuse_config_features(config)
    r, alpha = _positive_int(config.get("r", DEFAULT_R), "r"), _number(config.get("lora_alpha", DEFAULT_ALPHA))
    rank_pattern = _patterns(config, "rank_pattern", lambda v: _positive_int(v, "rank_pattern value"))
    alpha_pattern = _patterns(config, "alpha_pattern", _number)
    header = _read_header(weights_path)
    adapter = LoraAdapter(
        path=root,
        base_model=_optional_str(config.get("base_model_name_or_path")),
        r=r,
        alpha=alpha,
        use_rslora=bool(config.get("use_rslora", False)),
        target_modules=_target_modules(config.get("target_modules")),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        sha256="",
        pairs={},
        rank_pattern=_frozen(rank_pattern),
        alpha_pattern=_frozen(alpha_pattern),
    )
    pairs, delta_shapes = _pair_up(header, config, adapter)
    digests = f"{ADAPTER_CONFIG}\0{_sha256(config_path)}\n{ADAPTER_WEIGHTS}\0{_sha256(weights_path)}\n"
    return replace(
        adapter,
        sha256=hashlib.sha256(digests.encode()).hexdigest(),
        pairs=_frozen(pairs),
        delta_shapes=_frozen(delta_shapes),
    )


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json_object(path, error=LoraInvalid)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise LoraInvalid(f"{ADAPTER_CONFIG}: peft_type is {peft_type!r}, only LORA adapters can be merged")
    return config


def _refuse_config_features(config: Mapping[str, Any]) -> None:
    """Features whose effect lives in the config alone (tensor-borne ones are caught per key)."""
    init = str(config.get("init_lora_weights", True)).lower()
    refused = [
        ("DoRA (use_dora)", bool(config.get("use_dora"))),
        ("layer_replication", bool(config.get("layer_replication"))),
        ("LoRA on raw parameters (target_parameters)", bool(config.get("target_parameters"))),
        (
            f"init_lora_weights={config.get('init_lora_weights')!r}, which expects a modified base model "
            "(save it with path_initial_model_for_weight_conversion to get a plain LoRA)",
            init.startswith(_MUTATING_INITS),
        ),
    ]
    for feature, present in refused:
        if present:
            raise LoraInvalid(f"the adapter uses {feature}, which merging does not support", feature=feature)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LoraInvalid(f"{ADAPTER_CONFIG}: {what} must be a positive integer, not {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoraInvalid(f"{ADAPTER_CONFIG}: lora_alpha must be a finite number, not {value!r}")
    return float(value)


def _patterns(config: Mapping[str, Any], key: str, convert: Any) -> dict[str, Any]:
    raw = config.get(key) or {}
    if not isinstance(raw, dict):
        raise LoraInvalid(f"{ADAPTER_CONFIG}: {key} must be an object of pattern -> value")
    compile_client_patterns(list(raw), f"{ADAPTER_CONFIG}: {key}", error=LoraInvalid, wrap=_PATTERN_WRAP)
    return {pattern: convert(value) for pattern, value in raw.items()}


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _target_modules(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise LoraInvalid(f"{ADAPTER_CONFIG}: target_modules must be a string or a list of strings, not {value!r}")


def _adapter_file(path: Path) -> io.BufferedReader:
    """An adapter file, opened through client_files: a regular file inside the adapter folder."""
    return folder_file(path.parent, path.name, error=LoraInvalid)


def _sha256(path: Path) -> str:
    with _adapter_file(path) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
    """safetensors' reader on the adapter file already opened through client_files (never by name)."""
    with _adapter_file(path) as handle:
        opener: Any = safe_open
        with opener(reopen_path(handle), framework="numpy") as reader:
            yield reader


def _read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """key -> (safetensors dtype, shape); a damaged file (truncated, bad header) is LoraInvalid."""
    try:
        with _open(path) as handle:
            header: dict[str, tuple[str, tuple[int, ...]]] = {}
            names = handle.keys()
            for key in names:
                view = handle.get_slice(key)
                header[str(key)] = (str(view.get_dtype()), tuple(int(d) for d in view.get_shape()))
            return header
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraInvalid(f"{ADAPTER_WEIGHTS} is not a readable safetensors file") from exc


def _unsupported_key(key: str, config: Mapping[str, Any]) -> LoraInvalid:
    """LoraInvalid naming the feature a non-A/B tensor belongs to."""
    module = key.removeprefix(KEY_PREFIX)
    saved = config.get("modules_to_save") or []
    if "lora_magnitude_vector" in key:
        feature = "DoRA (lora_magnitude_vector)"
    elif "lora_embedding_A" in key or "lora_embedding_B" in key:
        feature = f"embedding LoRA on {module.rsplit('.lora_embedding_', 1)[0]}"
    elif re.search(r"\.lora_[AB](\.[^.]+)?\.bias$", key):
        feature = "lora_bias (a bias on lora_B)"
    elif ".modules_to_save." in key or any(
        re.search(rf"(^|\.){re.escape(name)}\.", module) for name in saved if isinstance(name, str)
    ):
        feature = "modules_to_save (full replacement weights)"
    elif key.endswith(".bias"):
        feature = f"bias={config.get('bias', 'none')!r} (trained bias tensors)"
    elif "trainable_tokens" in key:
        feature = "trainable_token_indices"
    else:
        return LoraInvalid(
            f"{ADAPTER_WEIGHTS}: unexpected tensor {key}; expected {KEY_PREFIX}<module>.lora_A.weight / .lora_B.weight",
            tensor=key,
        )
    return LoraInvalid(
        f"the adapter uses {feature}, which merging does not support (tensor {key})", tensor=key, feature=feature
    )


def _pair_up(
    header: Mapping[str, tuple[str, tuple[int, ...]]], config: Mapping[str, Any], adapter: LoraAdapter
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, int]]]:
    halves: dict[str, dict[str, str]] = {}
    for key in sorted(header):
        match = _PAIR_KEY.fullmatch(key.removeprefix(KEY_PREFIX)) if key.startswith(KEY_PREFIX) else None
        if match is None:
            raise _unsupported_key(key, config)
        found = halves.setdefault(f"{match['module']}.weight", {})
        if match["half"] in found:
            raise LoraInvalid(f"{ADAPTER_WEIGHTS}: {key} and {found[match['half']]} are the same tensor", tensor=key)
        found[match["half"]] = key
    if not halves:
        raise LoraInvalid(f"{ADAPTER_WEIGHTS} holds no LoRA weights")
    pairs: dict[str, tuple[str, str]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for base, found in halves.items():
        for half in "AB":
            if half not in found:
                other = found["B" if half == "A" else "A"]
                raise LoraInvalid(f"{other} has no lora_{half}: every lora_A needs its lora_B", tensor=other)
        a_key, b_key = found["A"], found["B"]
        (a_dtype, a_shape), (b_dtype, b_shape) = header[a_key], header[b_key]
        for key, dtype in ((a_key, a_dtype), (b_key, b_dtype)):
            if dtype not in _FLOAT_DTYPES:
                raise LoraInvalid(f"{key} is {dtype}; LoRA weights must be F16, BF16, F32 or F64", tensor=key)
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise LoraInvalid(
                f"{base}: lora_A {a_shape} and lora_B {b_shape} are not matrices "
                "(LoRA on convolutions and other non-linear layers is not supported)",
                tensor=base,
            )
        rank = adapter.rank_for(base)
        if a_shape[0] != b_shape[1] or a_shape[0] != rank or min(*a_shape, *b_shape) <= 0:
            raise LoraInvalid(
                f"{base}: lora_A {a_shape} [r, in] and lora_B {b_shape} [out, r] do not make a rank-{rank} "
                f"product (r from {ADAPTER_CONFIG})",
                tensor=base,
            )
        pairs[base] = (a_key, b_key)
        shapes[base] = (b_shape[0], a_shape[1])
    return pairs, shapes


def check_against_base(adapter: LoraAdapter, base_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every weight the adapter changes exists in the base with the shape of its delta.

    The delta B @ A is (out, in); with ``fan_in_fan_out`` the base stores (in, out) and the delta is
    transposed. Raises LoraInvalid naming the tensor and both shapes.
    """
    for base in sorted(adapter.pairs):
        expected = adapter.expected_base_shape(base)
        if base not in base_shapes:
            hint = f" (made for {adapter.base_model}?)" if adapter.base_model else ""
            raise LoraInvalid(
                f"the adapter changes {base}, which the base model does not have{hint}",
                tensor=base,
                adapter_shape=str(expected),
            )
        actual = tuple(int(d) for d in base_shapes[base])
        if actual != expected:
            raise LoraInvalid(
                _mismatch(adapter, base, actual), tensor=base, base_shape=str(actual), adapter_shape=str(expected)
            )


def _mismatch(adapter: LoraAdapter, base: str, actual: tuple[int, ...]) -> str:
    out_features, in_features = adapter.delta_shapes[base]
    product = "(B @ A).T" if adapter.fan_in_fan_out else "B @ A"
    return (
        f"{base}: the base weight has shape {actual} but the adapter's {product} has shape "
        f"{adapter.expected_base_shape(base)} (lora_B [{out_features}, r] @ lora_A [r, {in_features}])"
    )


def _read_float32(path: Path, key: str) -> FloatArray:
    """One adapter tensor as float32 (BF16, which numpy cannot name, read from its raw bits)."""
    try:
        with _open(path) as handle:
            dtype = str(handle.get_slice(key).get_dtype())
            if dtype == "BF16":
                return bf16_bits_to_float32(_raw_bf16(path, key))
            data = np.asarray(handle.get_tensor(key))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise LoraInvalid(f"{ADAPTER_WEIGHTS}: reading {quote_client(key, 100)} failed", tensor=key) from exc
    if dtype not in _NUMPY_DTYPES:
        raise LoraInvalid(f"{key} is {dtype}; LoRA weights must be F16, BF16, F32 or F64", tensor=key)
    return data.astype(np.float32)


def _raw_bf16(path: Path, key: str) -> npt.NDArray[np.uint16]:
    with _adapter_file(path) as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        entry = json.loads(handle.read(length))[key]
        start, end = entry["data_offsets"]
        count = (end - start) // 2
        handle.seek(8 + length + start)
        bits = np.fromfile(handle, dtype="<u2", count=count)
    if bits.size != count:
        raise LoraInvalid(f"{ADAPTER_WEIGHTS}: {key} is truncated", tensor=key)
    return bits.reshape(entry["shape"]).astype(np.uint16)


class LoraMerge:
    """The converter's tensor hook: ``merge(name, weight)`` returns W + scale · B @ A for adapted weights.

    Weights the adapter does not touch come back as the very same object. Adapted weights are merged in
    float32 (float64 stays float64) and returned in the weight's dtype; a uint16 weight is taken as
    bfloat16 bit patterns and rounded back to nearest-even. ``unmerged()`` lists adapted weights that
    never came by (a caller may treat them as an error once the base has been streamed).
    """

    def __init__(self, adapter: LoraAdapter) -> None:
        self.adapter = adapter
        self.merged: set[str] = set()

    def delta(self, name: str) -> FloatArray:
        """scale · B @ A for ``name`` (transposed with fan_in_fan_out), read from disk now."""
        a_key, b_key = self.adapter.pairs[name]
        a, b = _read_float32(self.adapter.weights_path, a_key), _read_float32(self.adapter.weights_path, b_key)
        for key, values in ((a_key, a), (b_key, b)):
            if not np.isfinite(values).all():
                raise LoraInvalid(f"{key} holds NaN or infinite values", tensor=key)
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != self.adapter.delta_shapes[name]:
            raise LoraInvalid(f"{name}: the adapter file changed after it was loaded", tensor=name)
        product: FloatArray = b @ a
        product *= np.float32(self.adapter.scale_for(name))
        return product.T if self.adapter.fan_in_fan_out else product

    def __call__(self, name: str, weight: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if name not in self.adapter.pairs:
            return weight
        expected = self.adapter.expected_base_shape(name)
        if tuple(weight.shape) != expected:
            actual = tuple(weight.shape)
            raise LoraInvalid(
                _mismatch(self.adapter, name, actual), tensor=name, base_shape=str(actual), adapter_shape=str(expected)
            )
        kind = weight.dtype
        delta = self.delta(name)
        if kind == np.uint16:
            merged = bf16_bits_to_float32(weight)
            merged += delta
            result: npt.NDArray[Any] = float32_to_bf16_bits(merged)
        elif kind in (np.float16, np.float32, np.float64):
            merged_any: npt.NDArray[np.floating[Any]] = weight.astype(np.float64 if kind == np.float64 else np.float32)
            merged_any += delta
            if kind == np.float16 and merged_any.size and float(np.abs(merged_any).max()) >= _F16_LIMIT:
                raise LoraInvalid(f"{name}: the merged weight overflows float16", tensor=name)
            result = merged_any.astype(kind, copy=False)
        else:
            raise LoraInvalid(f"{name}: cannot merge a LoRA into a {kind} tensor", tensor=name)
        self.merged.add(name)
        return result

    def unmerged(self) -> list[str]:
        """Adapted weight names this hook has not been called with yet."""
        return sorted(set(self.adapter.pairs) - self.merged)


def merging_transform(adapter: LoraAdapter) -> LoraMerge:
    """The hook ``f(base_name, weight) -> weight'`` merging ``adapter`` into each base tensor as it streams."""
    return LoraMerge(adapter)
