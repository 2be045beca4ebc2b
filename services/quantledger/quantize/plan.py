"""Validate a job request completely before any work, and turn it into worker requests.

Everything a client can get wrong is found here, with its reason: the source, the types, the
options, the importance matrix, the output directory. The engine runs ``make_plan`` in
CreateQuantizeJob and EstimateQuantizeJob, so a job that exists has passed all of it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantledger.client_files import open_client_file, real_path
from quantledger.client_patterns import ClientPattern, compile_client_patterns, literal_overrides
from quantledger.config import Settings
from quantledger.convert.model_checks import check_gguf_source
from quantledger.errors import (
    FormatNotApplicable,
    ImatrixRequired,
    InvalidArgument,
    OutputExists,
    PathNotAllowed,
    RequantizeRefused,
    SourceInvalid,
    quote_client,
)
from quantledger.gguf.reader import GgufHeader
from quantledger.gguf.types import ggml_types_by_name
from quantledger.hf_export.formats import HfFormat, is_hf_format, lookup_format, require_available
from quantledger.jobs.model import JobSpec, Options
from quantledger.quality.evaluate import is_embedding_header
from quantledger.quality.rerank import is_reranker_header
from quantledger.quantize.catalogue import COPY, QuantType, lookup
from quantledger.quantize.quantize_flags import (
    Value,
    block_count,
    check_prune_layers,
    check_weight_names,
    chosen_entries,
    parse_kv_overrides,
    pruned_header,
    written_value,
)
from quantledger.quantize.sources import GgufSource, open_source, resolve_allowed
from quantledger.registry.provenance import SUFFIX as PROVENANCE_SUFFIX

IMATRIX_GAIN_BITS = 5.0
MAX_CALIBRATION_CHUNKS = 10_000
MIN_CALIBRATION_CTX, MAX_CALIBRATION_CTX = 16, 32_768
MAX_TYPES_PER_JOB = 64
MAX_THREADS = 256
# integer options: (lowest, highest, what the bounds mean)
_INT_RANGES: dict[str, tuple[int, int, str]] = {
    "threads": (0, MAX_THREADS, "0 means all cores"),
    "calibration_chunks": (0, MAX_CALIBRATION_CHUNKS, "0 means every chunk of the text"),
    "calibration_ctx": (0, MAX_CALIBRATION_CTX, "0 means 512 tokens"),
    "split_max_bytes": (0, 1 << 50, "0 means one file"),
    "split_max_tensors": (0, 1 << 20, "0 means one file"),
}


PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class PlannedOutput:
    """One requested type: where llama.cpp writes it and where it ends up.

    ``split_count`` > 1 (keep_split on a split source) means llama.cpp writes one file per source
    shard, named ``{prefix}-00001-of-0000N.gguf``; ``path`` is then the first of ``paths``.
    With ``split_max_bytes`` or ``split_max_tensors`` llama.cpp writes one file, which the output stage
    splits (gguf/split.py) into ``split_count`` shards, ``sharded`` then set: names as above.
    """

    quant_type: QuantType
    directory: pathlib.Path
    stem: str  # "{source stem}-{TYPE}"
    tag: str
    split_count: int = 1
    split_max_bytes: int = 0
    split_max_tensors: int = 0
    sharded: bool = False

    @property
    def splits_after(self) -> bool:
        """Whether the output stage splits what llama.cpp wrote."""
        return bool(self.split_max_bytes or self.split_max_tensors)

    @property
    def paths(self) -> tuple[pathlib.Path, ...]:
        if self.split_count == 1 and not self.sharded:
            return (self.directory / f"{self.stem}.gguf",)
        n = self.split_count
        return tuple(self.directory / f"{self.stem}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1))

    @property
    def path(self) -> pathlib.Path:
        return self.paths[0]

    @property
    def partial_prefix(self) -> pathlib.Path:
        """What llama.cpp is told to write: hidden, in the output directory (same file system), tagged
        with the job so jobs sharing a directory never touch each other's partial files."""
        return self.directory / f".{self.stem}.{self.tag}{PARTIAL_SUFFIX}"

    @property
    def partial_paths(self) -> tuple[pathlib.Path, ...]:
        """The files llama.cpp writes (or the split makes), in the order of ``paths``."""
        if self.split_count == 1 and not self.sharded:
            return (self.partial_prefix,)
        n = self.split_count
        return tuple(
            self.partial_prefix.with_name(f"{self.partial_prefix.name}-{i:05d}-of-{n:05d}.gguf")
            for i in range(1, n + 1)
        )


@dataclass(frozen=True)
class QuantizePlan:
    spec: JobSpec
    source: GgufSource
    outputs: tuple[PlannedOutput, ...]
    output_dir: pathlib.Path
    imatrix_path: pathlib.Path | None
    base_request: dict[str, Any]
    # imatrix_path "auto" and a type that gains from a matrix: stage CALIBRATING computes it (or finds it
    # cached), then the job is planned again with the file (jobs/calibration.py)
    calibrate: bool = False
    # the Hugging Face formats (hf_export/), each written to the folder hf_output_path names
    formats: tuple[HfFormat, ...] = ()
    base_name: str = ""

    def hf_output_path(self, fmt: HfFormat) -> pathlib.Path:
        return self.output_dir / f"{self.base_name}-{fmt.name}"

    def worker_request(self, output: PlannedOutput, *, dry_run: bool = False) -> dict[str, Any]:
        request = dict(self.base_request)
        request.update(
            ftype=output.quant_type.file_type,
            output=str(output.partial_prefix if not dry_run else output.path),
            dry_run=dry_run,
            partial_count=output.split_count,
            only_copy=output.quant_type.family == COPY.family,
        )
        return request

    def written_header(self, header: GgufHeader | None = None) -> GgufHeader:
        """``header`` (default: the source's) as llama.cpp writes it: pruned blocks gone, the rest renamed."""
        source = self.source.header
        return pruned_header(header or source, self.base_request.get("prune_layers") or [], block_count(source))

    def written_values(self) -> dict[str, Value]:
        """The keys every output gets beyond the source's (not the file type): what quantledger records,
        the client's kv_overrides as llama.cpp writes them, and block_count after pruning."""
        values: dict[str, Value] = {key: value for key, value in self.base_request.get("metadata") or []}
        for key, kind, value in self.base_request.get("kv_overrides") or []:
            values[key] = written_value(kind, value)
        prune = self.base_request.get("prune_layers") or []
        count = block_count(self.source.header)
        if prune and count is not None:
            values[f"{self.source.header.architecture}.block_count"] = count - len(prune)
        return values


def _ggml_type_id(name: str, what: str) -> int:
    found = ggml_types_by_name().get(name.strip().upper())
    if found is None:
        valid = ", ".join(sorted(ggml_types_by_name()))
        raise InvalidArgument(f"{what}: unknown ggml type {quote_client(name, 40)}; valid: {valid}")
    return found.id


INTERMEDIATE_TYPES = ("F16", "BF16", "F32", "Q8_0")


def requested_types(spec: JobSpec) -> list[QuantType]:
    """The GGUF types of ``spec``, validated with its Hugging Face formats (``requested_formats``): at least
    one output, no duplicates, every name known to this llama.cpp or the format catalogue."""
    if not spec.quant_types:
        raise InvalidArgument("quant_types is empty: name at least one type, such as Q4_K_M")
    if len(spec.quant_types) > MAX_TYPES_PER_JOB:
        raise InvalidArgument(f"at most {MAX_TYPES_PER_JOB} types per job")
    types = [lookup(name) for name in spec.quant_types if not is_hf_format(name)]
    names = [t.name for t in types] + [lookup_format(n).name for n in spec.quant_types if is_hf_format(n)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"quant_types names {', '.join(duplicates)} more than once")
    return types


def requested_formats(spec: JobSpec) -> list[HfFormat]:
    """The Hugging Face formats of ``spec`` (docs/HF_EXPORT.md), each installed (FORMAT_UNAVAILABLE names
    the pip command otherwise)."""
    formats = [lookup_format(name) for name in spec.quant_types if is_hf_format(name)]
    for fmt in formats:
        require_available(fmt)
    return formats


def output_name(name: str) -> str:
    """The canonical name of a requested output, a GGUF type (aliases resolved) or a Hugging Face format."""
    return lookup_format(name).name if is_hf_format(name) else lookup(name).name


def _check_numbers(options: Options) -> None:
    """Every numeric option within its range: ints in ``_INT_RANGES``, every float finite and >= 0
    (a NaN compares false with everything, so an unchecked NaN bound silently turns its check off)."""
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"{item.name} must be a finite number >= 0, not {value}", field=item.name)
        if isinstance(value, int):
            low, high, meaning = _INT_RANGES[item.name]
            if not low <= value <= high:
                raise InvalidArgument(
                    f"{item.name} must lie in {low}..{high} ({meaning}), not {value}", field=item.name
                )


def override_patterns(options: Options) -> list[tuple[ClientPattern, int]]:
    """The tensor type overrides, each pattern compiled with RE2 (client_patterns.py) and its type resolved."""
    patterns = compile_client_patterns(
        [pattern for pattern, _ in options.tensor_type_overrides], "tensor_type_overrides"
    )
    return [
        (compiled, _ggml_type_id(type_name, f"override {compiled.text!r}"))
        for compiled, (_, type_name) in zip(patterns, options.tensor_type_overrides, strict=True)
    ]


def check_options(spec: JobSpec, settings: Settings) -> None:
    """Everything about the options that does not need the source model."""
    options = spec.options
    _check_numbers(options)
    if options.max_kl_divergence and options.skip_quality:
        raise InvalidArgument("max_kl_divergence needs the quality measurement that skip_quality turns off")
    if options.min_cosine_similarity and options.skip_quality:
        raise InvalidArgument(
            "min_cosine_similarity needs the quality measurement that skip_quality turns off",
            field="min_cosine_similarity",
        )
    if options.min_cosine_similarity > 1:
        raise InvalidArgument("min_cosine_similarity lies in 0..1", field="min_cosine_similarity")
    if options.min_ndcg and options.skip_quality:
        raise InvalidArgument("min_ndcg needs the quality measurement that skip_quality turns off", field="min_ndcg")
    if options.min_ndcg > 1:
        raise InvalidArgument("min_ndcg lies in 0..1", field="min_ndcg")
    if options.split_max_bytes and options.split_max_tensors:
        raise InvalidArgument("split_max_bytes and split_max_tensors cannot be used together", field="split_max_bytes")
    if options.intermediate_type and options.intermediate_type.upper() not in INTERMEDIATE_TYPES:
        raise InvalidArgument(f"intermediate_type must be one of {', '.join(INTERMEDIATE_TYPES)}")
    override_patterns(options)
    parse_kv_overrides(options.kv_overrides)
    check_weight_names(options.imatrix_include_weights, options.imatrix_exclude_weights, bool(options.imatrix_path))
    for name in ("output_tensor_type", "token_embedding_type"):
        if getattr(options, name):
            _ggml_type_id(getattr(options, name), name)
    checked = [("eval_text_path", "eval_text_path"), ("calibration_path", "calibration_path")]
    if not options.imatrix_auto:
        checked.append(("imatrix_path", "imatrix"))
    elif 0 < options.calibration_ctx < MIN_CALIBRATION_CTX:
        raise InvalidArgument(
            f"calibration_ctx must be 0 (512) or {MIN_CALIBRATION_CTX} to {MAX_CALIBRATION_CTX} tokens",
            field="calibration_ctx",
        )
    if (options.calibration_path or options.calibration_chunks or options.calibration_ctx) and not options.imatrix_auto:
        raise InvalidArgument('calibration_* options need imatrix_path "auto"', field="calibration_path")
    for name, what in checked:
        if getattr(options, name):  # inside the roots and a regular file (client_files)
            open_client_file(getattr(options, name), settings.allowed_roots, what=what).close()
    if options.output_dir:
        output_dir = resolve_output_dir(options.output_dir, settings)
        if output_dir.exists() and not output_dir.is_dir():
            raise InvalidArgument(f"output_dir {quote_client(options.output_dir)} is not a directory")
        if not output_dir.exists() and not output_dir.parent.is_dir():
            raise InvalidArgument(
                f"output_dir {quote_client(options.output_dir)}: its parent directory does not exist; create it first",
                field="output_dir",
            )


def resolve_output_dir(raw: str, settings: Settings) -> pathlib.Path:
    """A client's output_dir, as a real path: under the allowed roots (or the output roots, where a
    principal has its own) and never the service's own data
    directory or anything in it (artifacts of every job, keys, the conversion cache, logs, the chain, the
    job database): the default artifacts/<job id> is chosen by the service, not named by a client."""
    output_dir = resolve_allowed(raw, settings.output_dir_roots, what="output_dir")
    home = real_path(str(settings.home))
    if output_dir == home or home in output_dir.parents:
        raise PathNotAllowed(
            f"output_dir {quote_client(raw)} lies in the service's data directory, which holds other jobs' "
            "outputs and the service's own files; name a directory of your own, or leave output_dir empty "
            "for the service's default",
            path=raw,
        )
    return output_dir


def make_plan(
    spec: JobSpec,
    settings: Settings,
    default_output_dir: pathlib.Path,
    tag: str = "estimate",
    *,
    source: GgufSource | None = None,
    stem: str | None = None,
    kept: frozenset[pathlib.Path] = frozenset(),
) -> QuantizePlan:
    """Validate ``spec`` and return what to run; raises the error a client should see.

    ``tag`` (the job id) names the job's partial files. ``source`` is given for a Hugging Face job
    (the converted intermediate; ``spec.source`` then names the HF model) and ``stem`` names its outputs.
    ``kept`` are the files of outputs this job finished before a restart: they exist and are its own.
    """
    types = requested_types(spec)
    check_options(spec, settings)
    options = spec.options
    if source is None:
        refused = requested_formats(spec)
        source = open_source(spec.source, settings.allowed_roots)
        if refused:
            raise FormatNotApplicable(
                f"{', '.join(f.name for f in refused)} are written from a Hugging Face model; "
                f"{source.path.name} is a GGUF file: submit the Hugging Face folder or repo it came from",
                format=refused[0].name,
            )
    check_gguf_source(source.header)
    _check_gate_kind(options, source.header)
    prune = check_prune_layers(options.prune_layers, block_count(source.header))
    types = [_copy_of(source) if t is COPY else t for t in types]
    copies_only = all(t.family == COPY.family for t in types)  # llama.cpp copies: nothing is requantized
    if source.header.is_quantized() and not options.allow_requantize and not copies_only:
        raise RequantizeRefused(
            f"{source.path.name} is already quantized (file type {source.header.file_type}); "
            "requantizing loses quality: set allow_requantize to do it anyway",
            path=str(source.path),
        )

    imatrix_path: pathlib.Path | None = None
    metadata_overrides: list[list[Any]] = []
    calibrate = options.imatrix_auto and any(gains_from_imatrix(t) for t in types)
    if options.imatrix_path and not options.imatrix_auto:
        imatrix_path = resolve_allowed(options.imatrix_path, settings.allowed_roots, what="imatrix")
        from quantledger.quantize.imatrix import check_covers, load_imatrix

        imatrix = load_imatrix(imatrix_path, settings.allowed_roots)
        check_covers(imatrix, {t.name: t.shape[0] for t in source.header.tensors})
        handed = _chosen_imatrix_entries(imatrix.entries, options, types)
        # what llama-quantize records about the imatrix in the output (strings: llama.cpp keeps 127 bytes)
        metadata_overrides = [
            ["quantize.imatrix.file", imatrix_path.name.encode()[:127].decode(errors="ignore")],
            ["quantize.imatrix.entries_count", handed],
            ["quantize.imatrix.chunks_count", imatrix.chunk_count],
        ]
        if imatrix.datasets:
            metadata_overrides.append(
                ["quantize.imatrix.dataset", imatrix.datasets[0].encode()[:127].decode(errors="ignore")]
            )
    needing = [t.name for t in types if t.requires_imatrix]
    if needing and imatrix_path is None and not calibrate:
        raise ImatrixRequired(
            f'{", ".join(needing)} need an importance matrix: pass imatrix_path (a file, or "auto" to compute one)',
            quant_types=",".join(needing),
        )

    # llama.cpp matches overrides with std::regex (backtracking): it gets literal tensor names, resolved here
    # against the names it quantizes (after pruning renumbers the blocks)
    written = pruned_header(source.header, prune, block_count(source.header))
    overrides = [list(o) for o in literal_overrides(override_patterns(options), (t.name for t in written.tensors))]
    output_dir = resolve_output_dir(options.output_dir, settings) if options.output_dir else default_output_dir
    split_count = len(source.shards) if options.keep_split else 1
    if split_count > 1 and (options.split_max_bytes or options.split_max_tensors):
        raise InvalidArgument(
            "keep_split keeps the source's shards; split_max_bytes/split_max_tensors make new ones: choose one",
            field="keep_split",
        )
    base_name = stem or source.stem
    outputs = tuple(
        PlannedOutput(
            t, output_dir, f"{base_name}-{t.name}", tag, split_count, options.split_max_bytes, options.split_max_tensors
        )
        for t in types
    )
    formats = tuple(requested_formats(spec))
    for fmt in formats:
        folder = output_dir / f"{base_name}-{fmt.name}"
        if folder in kept:
            continue
        if _is_regular_file(f"{folder}{PROVENANCE_SUFFIX}"):
            raise OutputExists(
                f"{folder} is the output of an earlier job and is never overwritten: choose another output_dir",
                path=str(folder),
            )
        if os.path.lexists(folder) and not options.overwrite:
            raise OutputExists(
                f"{folder} already exists: remove it, choose another output_dir or set overwrite", path=str(folder)
            )
    for output in outputs:
        if output.splits_after:  # how many shards is known once the file is written: any set is taken
            taken = sorted(p for p in output_dir.glob(f"{output.stem}-[0-9]*-of-[0-9]*.gguf") if p not in kept)
            if taken and not options.overwrite:
                raise OutputExists(
                    f"{taken[0]} already exists: remove it, choose another output_dir or set overwrite",
                    path=str(taken[0]),
                )
            continue
        for path in output.paths:
            if path in kept:
                continue
            if path in source.shards:
                raise InvalidArgument(f"output {path} would overwrite the source")
            refuse_another_jobs_output(path)
            if os.path.lexists(path) and not options.overwrite:
                raise OutputExists(
                    f"{path} already exists: remove it, choose another output_dir or set overwrite", path=str(path)
                )
            if os.path.lexists(path) and stat.S_ISDIR(os.lstat(path).st_mode):
                raise OutputExists(f"{path} is a directory: remove it or choose another output_dir", path=str(path))
    if not os.access(output_dir if output_dir.exists() else output_dir.parent, os.W_OK):
        raise SourceInvalid(f"output_dir {output_dir} is not writable by the service")

    base_request: dict[str, Any] = {
        "source": str(source.path),
        "threads": options.threads or (os.cpu_count() or 1),
        "allow_requantize": options.allow_requantize,
        "quantize_output_tensor": not options.leave_output_tensor,
        "pure": options.pure,
        "keep_split": options.keep_split,
        "output_tensor_type": (
            _ggml_type_id(options.output_tensor_type, "output_tensor_type") if options.output_tensor_type else -1
        ),
        "token_embedding_type": (
            _ggml_type_id(options.token_embedding_type, "token_embedding_type") if options.token_embedding_type else -1
        ),
        "tensor_type_overrides": overrides,
        "imatrix": str(imatrix_path) if imatrix_path else None,
        "imatrix_include": list(options.imatrix_include_weights),
        "imatrix_exclude": list(options.imatrix_exclude_weights),
        "metadata": metadata_overrides,
        "kv_overrides": [o.request() for o in parse_kv_overrides(options.kv_overrides)],
        "prune_layers": prune,
    }
    return QuantizePlan(spec, source, outputs, output_dir, imatrix_path, base_request, calibrate, formats, base_name)


def _check_gate_kind(options: Options, header: GgufHeader) -> None:
    """Each quality gate on the kind of model it measures: KL divergence for causal models, cosine
    similarity for embedders, NDCG@5 for rerankers (the figure does not exist for the other kinds, so the
    gate would never fire)."""
    kind = "reranker" if is_reranker_header(header) else "embedding" if is_embedding_header(header) else "causal"
    gates = (("max_kl_divergence", "causal"), ("min_cosine_similarity", "embedding"), ("min_ndcg", "reranker"))
    use = {gated: option for option, gated in gates}[kind]
    for option, gated in gates:
        if getattr(options, option) and gated != kind:
            raise InvalidArgument(
                f"{option} gates {_KIND_NAMES[gated][0]}; this is {_KIND_NAMES[kind][1]}: use {use}", field=option
            )


_KIND_NAMES = {
    "causal": ("causal models", "a causal model"),
    "embedding": ("embedding models", "an embedding model"),
    "reranker": ("rerankers", "a reranker"),
}


def _copy_of(source: GgufSource) -> QuantType:
    """COPY for this source: the source's file type and bits per weight."""
    header = source.header
    bits = 8 * header.tensor_bytes / header.n_parameters if header.n_parameters else 0.0
    return dataclasses.replace(COPY, file_type=max(header.file_type or 0, 0), typical_bits_per_weight=round(bits, 2))


def _chosen_imatrix_entries(entries: Mapping[str, object], options: Options, types: Sequence[QuantType]) -> int:
    """How many entries llama.cpp gets after imatrix_include/exclude_weights; IMATRIX_REQUIRED when they
    leave out a tensor a requested type cannot be made without, INVALID_ARGUMENT when they leave none."""
    include, exclude = options.imatrix_include_weights, options.imatrix_exclude_weights
    if not include and not exclude:
        return len(entries)
    kept = chosen_entries(entries, include, exclude)
    field = "imatrix_include_weights" if include else "imatrix_exclude_weights"
    if not kept:
        raise InvalidArgument(f"{field} leaves no importance matrix entry", field=field)
    needing = [t.name for t in types if t.requires_imatrix]
    left_out = sorted(set(entries) - set(kept))
    if needing and left_out:
        raise ImatrixRequired(
            f"{', '.join(needing)} need importance data for every weight, and {field} leaves out "
            f"{len(left_out)} entries such as {left_out[0]}",
            quant_types=",".join(needing),
        )
    return len(kept)


def gains_from_imatrix(quant_type: QuantType) -> bool:
    """Whether imatrix_path "auto" computes a matrix for this type: llama.cpp needs one, or the type has
    fewer than 5 bits per weight (where a matrix measurably lowers the error: docs/IMATRIX.md)."""
    return quant_type.requires_imatrix or 0 < quant_type.typical_bits_per_weight < IMATRIX_GAIN_BITS


def refuse_another_jobs_output(path: pathlib.Path) -> None:
    """OUTPUT_EXISTS when ``path`` is an output of an earlier job (its provenance JSON lies beside it):
    ``overwrite`` replaces other files, never another job's recorded output (its record would then
    name bytes that are gone)."""
    if _is_regular_file(path) and _is_regular_file(f"{path}{PROVENANCE_SUFFIX}"):  # planted links are no output
        raise OutputExists(
            f"{path} is the output of an earlier job ({path.name}{PROVENANCE_SUFFIX} beside it) and is never "
            "overwritten: choose another output_dir",
            path=str(path),
        )


def _is_regular_file(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
