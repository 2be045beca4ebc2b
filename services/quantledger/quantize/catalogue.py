"""The quantization types (llama.cpp ``llama_ftype`` values) the installed llama.cpp offers.

The list is read from llama-cpp-python's ``LLAMA_FTYPE_*`` constants, so a llama.cpp upgrade that
adds a type shows up without code changes; the table below only adds descriptions and the typical
bits per weight measured on Llama-3.1-8B where known.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from quantledger.errors import UnknownQuantType
from quantledger.llama_build import llama_cpp_build
from quantledger.quantize.llama_log import IMATRIX_ERROR

# llama.cpp decides per tensor whether an importance matrix is needed (IQ1/IQ2 tensor types, and the
# Q2_K tensors of Q2_K_S); which ftypes that makes depends on the mix. The catalogue learns the list
# by probing (see ``_probe``): a type whose run fails with IMATRIX_ERROR needs one; a type that fails
# otherwise (this build answers NVFP4 with "invalid output file type") is not offered.

_KNOWN: dict[str, tuple[float, str]] = {
    "F32": (32.0, "32-bit float, no quantization"),
    "F16": (16.0, "16-bit float"),
    "BF16": (16.0, "bfloat16"),
    "Q4_0": (4.5, "legacy 4-bit, blocks of 32 with one scale"),
    "Q4_1": (5.0, "legacy 4-bit, blocks of 32 with scale and minimum"),
    "Q5_0": (5.5, "legacy 5-bit, blocks of 32 with one scale"),
    "Q5_1": (6.0, "legacy 5-bit, blocks of 32 with scale and minimum"),
    "Q8_0": (8.5, "legacy 8-bit, blocks of 32: near lossless"),
    "Q2_K": (3.16, "2-bit K-quant mix"),
    "Q2_K_S": (2.97, "2-bit K-quant, small mix (needs an importance matrix)"),
    "Q3_K_S": (3.64, "3-bit K-quant, small mix"),
    "Q3_K_M": (4.00, "3-bit K-quant, medium mix"),
    "Q3_K_L": (4.27, "3-bit K-quant, large mix"),
    "Q4_K_S": (4.67, "4-bit K-quant, small mix"),
    "Q4_K_M": (4.89, "4-bit K-quant, medium mix: the usual default"),
    "Q5_K_S": (5.57, "5-bit K-quant, small mix"),
    "Q5_K_M": (5.70, "5-bit K-quant, medium mix"),
    "Q6_K": (6.56, "6-bit K-quant"),
    "IQ1_S": (2.00, "1.56-bit i-quant (needs an importance matrix)"),
    "IQ1_M": (2.15, "1.75-bit i-quant (needs an importance matrix)"),
    "IQ2_XXS": (2.38, "2.06-bit i-quant (needs an importance matrix)"),
    "IQ2_XS": (2.59, "2.31-bit i-quant (needs an importance matrix)"),
    "IQ2_S": (2.74, "2.5-bit i-quant (needs an importance matrix)"),
    "IQ2_M": (2.93, "2.7-bit i-quant mix"),
    "IQ3_XXS": (3.25, "3.06-bit i-quant"),
    "IQ3_XS": (3.50, "3.3-bit i-quant mix"),
    "IQ3_S": (3.66, "3.44-bit i-quant"),
    "IQ3_M": (3.76, "3.66-bit i-quant mix"),
    "IQ4_NL": (4.68, "4.5-bit non-linear i-quant, blocks of 32"),
    "IQ4_XS": (4.46, "4.25-bit non-linear i-quant"),
    "TQ1_0": (0.0, "ternary 1.69-bit, for ternary-trained models (BitNet)"),
    "TQ2_0": (0.0, "ternary 2.06-bit, for ternary-trained models (BitNet)"),
    "MXFP4_MOE": (0.0, "MXFP4 for mixture-of-experts tensors, Q8_0 elsewhere"),
    "NVFP4": (0.0, "NVIDIA FP4, blocks of 64"),
    "Q1_0": (0.0, "1-bit, blocks of 128"),
    "Q2_0": (0.0, "2-bit, blocks of 64"),
}

# when to pick each type, in a line (the console's wizard and `quant-types` show it): the community's
# rules of thumb (llama.cpp's quantize README and perplexity tables), not a measurement of this model
_USE_FOR: dict[str, str] = {
    "F32": "a conversion intermediate or a reference; twice the size of F16 for no gain at inference",
    "F16": "the unquantized reference: quality baselines, or GPUs with memory to spare",
    "BF16": "the unquantized reference for models trained in bfloat16",
    "Q8_0": "practically lossless at half of F16: baselines, or when memory is plentiful",
    "Q6_K": "near-lossless at three quarters of Q8_0's size",
    "Q5_K_M": "high quality when a little more memory than Q4_K_M is free",
    "Q5_K_S": "close to Q5_K_M, slightly smaller",
    "Q4_K_M": "the usual default: the best balance of size and quality",
    "Q4_K_S": "a little smaller than Q4_K_M at a little lower quality",
    "Q3_K_L": "tight memory: noticeably lower quality than 4-bit",
    "Q3_K_M": "tight memory: clearly lower quality than 4-bit",
    "Q3_K_S": "very tight memory; prefer IQ3_S or IQ3_M with an importance matrix",
    "Q2_K": "the smallest K-quant: large quality loss, for big models on small machines",
    "Q2_K_S": "like Q2_K, smaller; needs an importance matrix",
    "Q4_0": "legacy: old runtimes and some ARM fast paths; otherwise prefer Q4_K_M",
    "Q4_1": "legacy: prefer Q4_K_M",
    "Q5_0": "legacy: prefer Q5_K_M",
    "Q5_1": "legacy: prefer Q5_K_M",
    "IQ4_XS": "about Q4_K_S's quality in less space; best with an importance matrix",
    "IQ4_NL": "4-bit in blocks of 32, for back ends that want them; best with an importance matrix",
    "IQ3_M": "better than Q3_K_M at a similar size, with an importance matrix",
    "IQ3_S": "better than Q3_K_S at a similar size, with an importance matrix",
    "IQ3_XS": "3-bit on tight memory, with an importance matrix",
    "IQ3_XXS": "the smallest 3-bit, with an importance matrix",
    "IQ2_M": "large models (70B and up) on small machines; quality loss is large",
    "IQ2_S": "large models on small machines; needs an importance matrix",
    "IQ2_XS": "large models on very small machines; needs an importance matrix",
    "IQ2_XXS": "large models on very small machines; needs an importance matrix",
    "IQ1_M": "extreme compression of very large models; needs an importance matrix",
    "IQ1_S": "the most extreme compression; needs an importance matrix, quality suffers badly",
    "TQ1_0": "only models trained ternary (BitNet b1.58); others break",
    "TQ2_0": "only models trained ternary (BitNet b1.58), faster than TQ1_0 on some CPUs",
    "MXFP4_MOE": "mixture-of-experts models released in MXFP4 (such as gpt-oss)",
    "NVFP4": "NVIDIA Blackwell GPUs' FP4",
    "Q1_0": "experimental 1-bit; for trying, not for shipping",
    "Q2_0": "experimental 2-bit; for trying, not for shipping",
}


@dataclass(frozen=True)
class QuantType:
    """A quantization type users can ask for."""

    name: str
    file_type: int
    family: str
    requires_imatrix: bool
    typical_bits_per_weight: float
    description: str
    use_for: str = ""
    available: bool = True  # whether this installation can write it (a format's extra may be missing)
    requires: str = ""  # what it needs installed beyond the base install


def _family(name: str) -> str:
    if name in ("F32", "F16", "BF16"):
        return "float"
    if name.startswith("IQ"):
        return "i-quant"
    if name.startswith("TQ"):
        return "ternary"
    if "FP4" in name:
        return "mxfp"
    if "_K" in name:
        return "k-quant"
    return "legacy"


def _name_of(constant: str) -> str | None:
    for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
        if constant.startswith(prefix):
            return constant.removeprefix(prefix)
    return None


def _declared() -> dict[str, int]:
    """Every LLAMA_FTYPE_* constant llama-cpp-python declares: name -> llama_ftype."""
    import llama_cpp

    declared = {}
    for constant in dir(llama_cpp):
        name = _name_of(constant)
        if name is not None:
            declared[name] = int(getattr(llama_cpp, constant))
    return declared


def _probe(ftypes: list[int]) -> dict[int, str]:
    """How quantizing to each ftype ends on a tiny 256-wide model without an imatrix:
    "ok", "imatrix" (needs one) or "unsupported" (this llama.cpp cannot write it)."""
    from quantledger.quantize.runner import run_worker_sync

    outcome: dict[int, str] = {}
    current: int | None = None
    for event in run_worker_sync({"probe_ftypes": ftypes}):
        if event.get("event") == "run":
            current = int(event["ftype"])
        elif event.get("event") == "finished" and current is not None:
            errors = " ".join(event.get("errors") or [])
            if event["rc"] == 0:
                outcome[current] = "ok"
            elif IMATRIX_ERROR in errors:
                outcome[current] = "imatrix"
            else:
                outcome[current] = "unsupported"
    return outcome


@functools.cache
def catalogue() -> tuple[QuantType, ...]:
    """Every type the installed llama.cpp can write, in llama_ftype order.

    The first call probes llama.cpp in a worker process (about a second); the result is kept.
    """
    declared = {name: ftype for name, ftype in _declared().items() if name != "GUESSED"}
    outcome = _probe(sorted(declared.values()))
    types = []
    for name, ftype in declared.items():
        if outcome.get(ftype, "unsupported") == "unsupported":
            continue
        bpw, description = _KNOWN.get(name, (0.0, f"llama.cpp type {name}"))
        types.append(
            QuantType(
                name=name,
                file_type=ftype,
                family=_family(name),
                requires_imatrix=outcome[ftype] == "imatrix",
                typical_bits_per_weight=bpw,
                description=description,
                use_for=_USE_FOR.get(name, ""),
            )
        )
    return tuple(sorted(types, key=lambda t: t.file_type))


def output_catalogue() -> tuple[QuantType, ...]:
    """What ListQuantTypes lists: the GGUF types, then the Hugging Face formats (family "huggingface",
    file type -1) with whether their extra is installed."""
    from quantledger.hf_export.formats import FORMATS

    formats = tuple(
        QuantType(
            name=f.name,
            file_type=-1,
            family="huggingface",
            requires_imatrix=False,
            typical_bits_per_weight=f.typical_bits_per_weight,
            description=f.description,
            use_for=f.use_for,
            available=f.available,
            requires=f.requires,
        )
        for f in FORMATS
    )
    return catalogue() + formats


def unsupported_names() -> list[str]:
    """Types llama-cpp-python declares but the installed llama.cpp refuses to write."""
    offered = {t.name for t in catalogue()}
    return sorted(n for n in _declared() if n not in offered and n != "GUESSED")


@functools.cache
def _by_name() -> dict[str, QuantType]:
    return {t.name: t for t in catalogue()}


# Names llama-quantize also accepts for a type (its QUANT_OPTIONS table): the K-quant family names stand
# for their medium mix.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


# llama-quantize's COPY: every tensor copied as it is (only_copy), the output keeping the source's file
# type; useful with kv_overrides or prune_layers. Its file type is the source's (quantize/plan.py).
COPY = QuantType(
    name="COPY",
    file_type=-1,
    family="copy",
    requires_imatrix=False,
    typical_bits_per_weight=0.0,
    description="only copy tensors, no quantizing",
    use_for="rewriting metadata or pruning layers without changing any weight",
)


def lookup(name: str) -> QuantType:
    """The type called ``name`` (case-insensitive), as llama-quantize reads a type: its name, an alias
    (``Q4_K`` is Q4_K_M), its numeric ftype id (``15``) or COPY; UnknownQuantType names the valid ones."""
    wanted = name.strip().upper()
    wanted = ALIASES.get(wanted, wanted)
    if wanted == COPY.name:
        return COPY
    if wanted.isdigit() and len(wanted) <= 4:
        by_id = {t.file_type: t for t in catalogue()}
        if int(wanted) in by_id:
            return by_id[int(wanted)]
    found = _by_name().get(wanted)
    if found is None and name.strip().upper() in unsupported_names():
        raise UnknownQuantType(
            f"{name!r} is declared by llama-cpp-python but this llama.cpp build cannot write it",
            quant_type=name,
        )
    if found is None:
        valid = ", ".join([t.name for t in catalogue()] + [COPY.name])
        raise UnknownQuantType(f"unknown quantization type {name!r}; valid types: {valid}", quant_type=name)
    return found


@dataclass(frozen=True)
class LibraryVersions:
    """What does the quantizing: the Python binding and the llama.cpp library it loaded."""

    python_package: str  # "llama-cpp-python 0.3.36"
    llama_cpp: str  # "llama.cpp 0.5.0-dev (commit 0c1e570-dirty, ggml 0.25.3)"


def llama_cpp_python_version() -> str:
    """The llama-cpp-python package release (not llama.cpp's version: see ``llama_cpp_build``)."""
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


@functools.cache
def library_versions() -> LibraryVersions:
    return LibraryVersions(llama_cpp_python_version(), llama_cpp_build())
