"""The Hugging Face output formats a job can ask for beside GGUF types, and what each needs installed.

Names are open-ended strings like the GGUF types (``HF_F16``, ``HF_BNB_NF4``; GPTQ or AWQ can follow), so
clients need no API change when one is added. The check that a format's libraries are importable uses
``importlib.util.find_spec``: nothing here imports torch.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

from quantledger.errors import FormatUnavailable

PREFIX = "HF_"
EXTRA = "hf"
PIP_COMMAND = "pip install 'quantledger[hf]'"


@dataclass(frozen=True)
class HfFormat:
    """One Hugging Face output format."""

    name: str
    description: str
    use_for: str
    modules: tuple[str, ...]  # importable modules it needs (all in the ``hf`` extra)
    typical_bits_per_weight: float  # of the linear layers' weights as written
    torch_dtype: str  # the dtype of the weights it does not quantize (and the compute dtype)
    bnb: str = ""  # "int8" or "nf4": the bitsandbytes quantization, or "" for a plain dtype

    @property
    def available(self) -> bool:
        return not self.missing_modules

    @property
    def missing_modules(self) -> tuple[str, ...]:
        return tuple(m for m in self.modules if not _importable(m))

    @property
    def requires(self) -> str:
        """What to install for it, as a user would type it."""
        return f"{PIP_COMMAND} (needs {', '.join(self.modules)})"


_BASE = ("torch", "transformers", "safetensors")
_BNB = (*_BASE, "bitsandbytes", "accelerate")

FORMATS: tuple[HfFormat, ...] = (
    HfFormat(
        "HF_F16",
        "Hugging Face safetensors folder, float16",
        "serving with transformers or vLLM at half of float32's size",
        _BASE,
        16.0,
        "float16",
    ),
    HfFormat(
        "HF_BF16",
        "Hugging Face safetensors folder, bfloat16",
        "serving with transformers for models trained in bfloat16",
        _BASE,
        16.0,
        "bfloat16",
    ),
    HfFormat(
        "HF_BNB_INT8",
        "bitsandbytes LLM.int8(): linear layers int8 with per-row scales, the rest float16",
        "transformers on memory-tight GPUs or CPUs with near-lossless quality",
        _BNB,
        8.0,
        "float16",
        "int8",
    ),
    HfFormat(
        "HF_BNB_NF4",
        "bitsandbytes NF4: linear layers 4-bit NormalFloat, double-quantized scales, float16 compute",
        "QLoRA fine-tuning and transformers inference at about a quarter of float16's size",
        _BNB,
        4.13,  # 4 bits + 8-bit absmax per 64 weights, its fp32 scale per 256 blocks (double quantization)
        "float16",
        "nf4",
    ),
)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _by_name() -> dict[str, HfFormat]:
    return {f.name: f for f in FORMATS}


def is_hf_format(name: str) -> bool:
    """Whether ``name`` names a Hugging Face format (known or not): the ``HF_`` prefix."""
    return name.strip().upper().startswith(PREFIX)


def lookup_format(name: str) -> HfFormat:
    """The format called ``name`` (case-insensitive); UnknownQuantType names the valid ones."""
    from quantledger.errors import UnknownQuantType

    found = _by_name().get(name.strip().upper())
    if found is None:
        valid = ", ".join(f.name for f in FORMATS)
        raise UnknownQuantType(f"unknown Hugging Face format {name!r}; valid formats: {valid}", quant_type=name)
    return found


def require_available(fmt: HfFormat) -> None:
    """FORMAT_UNAVAILABLE naming the pip command when the libraries ``fmt`` needs are not installed."""
    missing = fmt.missing_modules
    if missing:
        raise FormatUnavailable(
            f"{fmt.name} needs {', '.join(missing)}, which this installation lacks: {PIP_COMMAND}",
            format=fmt.name,
            missing=",".join(missing),
            install=PIP_COMMAND,
        )
