"""What a quantization job is, independent of storage and transport."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from quantledger.config import Settings
from quantledger.errors import InvalidArgument
from quantledger.security.principal import Principal


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Stage(enum.StrEnum):
    NONE = "NONE"
    FETCHING = "FETCHING"
    CONVERTING = "CONVERTING"
    QUANTIZING = "QUANTIZING"
    HASHING = "HASHING"
    EVALUATING = "EVALUATING"
    REGISTERING = "REGISTERING"
    CALIBRATING = "CALIBRATING"  # computing the job's importance matrix (imatrix_path "auto")


IMATRIX_AUTO = "auto"  # imatrix_path: compute one when a requested type needs or gains from it


@dataclass(frozen=True)
class Options:
    """llama.cpp quantizer options; type names are ggml type names ("Q8_0"), empty for default."""

    threads: int = 0
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    pure: bool = False
    output_tensor_type: str = ""
    token_embedding_type: str = ""
    tensor_type_overrides: tuple[tuple[str, str], ...] = ()
    keep_split: bool = False
    imatrix_path: str = ""
    output_dir: str = ""
    overwrite: bool = False
    lora_dir: str = ""
    max_kl_divergence: float = 0.0
    min_cosine_similarity: float = 0.0  # the embedders' gate: an output's mean cosine below it fails the job
    min_ndcg: float = 0.0  # the rerankers' gate: an output's NDCG@5 against the reference below it fails the job
    skip_quality: bool = False
    intermediate_type: str = ""
    eval_text_path: str = ""
    # the importance matrix of imatrix_path "auto": the calibration text (default: the shipped one),
    # how many chunks of it (0: all) and how many tokens a chunk (0: 512)
    calibration_path: str = ""
    calibration_chunks: int = 0
    calibration_ctx: int = 0
    # llama-quantize's --include-weights / --exclude-weights: the importance matrix entries whose name
    # contains (include) or does not contain (exclude) one of these; --override-kv KEY=TYPE:VALUE items;
    # --prune-layers block numbers (quantize/quantize_flags.py)
    imatrix_include_weights: tuple[str, ...] = ()
    imatrix_exclude_weights: tuple[str, ...] = ()
    kv_overrides: tuple[str, ...] = ()
    prune_layers: tuple[int, ...] = ()
    # each output split into shards as llama-gguf-split writes them: at most this many bytes of tensor
    # data a shard (--split-max-size), or this many tensors (--split-max-tensors); 0: one file
    split_max_bytes: int = 0
    split_max_tensors: int = 0
    # general.name of a Hugging Face source's conversion (default: the folder's or the hub repo's name)
    model_name: str = ""

    @property
    def imatrix_auto(self) -> bool:
        return self.imatrix_path.strip().lower() == IMATRIX_AUTO


@dataclass(frozen=True)
class ComputedImatrix:
    """The importance matrix a job computed (or found in the cache) for imatrix_path "auto"."""

    path: str
    sha256: str
    dataset: str
    calibration_sha256: str
    chunks: int
    chunk_size: int
    cached: bool = False


@dataclass(frozen=True)
class Reproduction:
    """A job that redoes a recorded output to co-attest it (docs/REPRODUCE.md): the record it checks.

    Set by ReproduceArtifact and ``registry reproduce`` after the checks of registry/reproduce.py passed;
    the job itself is an ordinary quantization of the recorded source, type and options. At REGISTERING,
    the same SHA-256 as ``file_sha256`` is registered from this server's key with the REPRODUCED flag;
    other bytes are registered by nobody, and the job's ``reproduced`` says where they differ."""

    file_sha256: str
    provenance_sha256: str
    original_attester: str
    source_digest: str
    recorded_tool: str
    any_version: bool = False  # the installed llama-cpp-python is another release than the record's
    report: bool = False  # different bytes: write a mismatch note signed by this server's key
    original_path: str = ""  # the downloaded file, to find where different bytes first differ


@dataclass(frozen=True)
class ReproductionResult:
    """How a reproduction ended: REPRODUCED (the same bytes, co-attested) or DIFFERENT."""

    verdict: str
    reproduced_sha256: str
    first_difference: dict[str, Any] = field(default_factory=dict)
    report_path: str = ""


@dataclass(frozen=True)
class JobSpec:
    """What a client asks for: the body that request_id idempotency compares."""

    source: str
    quant_types: tuple[str, ...]
    options: Options = Options()
    reproduction: Reproduction | None = None

    def fingerprint(self) -> str:
        body = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def check_bounds(self) -> None:
        """Refuse a request by its size alone, before any of its files is looked at (INVALID_ARGUMENT)."""
        check_text("source", self.source, MAX_PATH_LENGTH)
        if len(self.quant_types) > MAX_QUANT_TYPES:
            raise InvalidArgument(f"at most {MAX_QUANT_TYPES} quant types per job", field="quant_types")
        for name in self.quant_types:
            check_text("quant_types", name, MAX_NAME_LENGTH)
        options = self.options
        for path_field in ("imatrix_path", "output_dir", "lora_dir", "eval_text_path", "calibration_path"):
            check_text(path_field, getattr(options, path_field), MAX_PATH_LENGTH)
        for name_field in ("output_tensor_type", "token_embedding_type", "intermediate_type"):
            check_text(name_field, getattr(options, name_field), MAX_NAME_LENGTH)
        check_text("model_name", options.model_name, MAX_PATTERN_LENGTH)
        if len(options.tensor_type_overrides) > MAX_TENSOR_OVERRIDES:
            raise InvalidArgument(
                f"at most {MAX_TENSOR_OVERRIDES} tensor type overrides per job", field="tensor_type_overrides"
            )
        for pattern, type_name in options.tensor_type_overrides:
            check_text("tensor_type_overrides", pattern, MAX_PATTERN_LENGTH)
            check_text("tensor_type_overrides", type_name, MAX_NAME_LENGTH)
        for list_field in ("imatrix_include_weights", "imatrix_exclude_weights", "kv_overrides"):
            items = getattr(options, list_field)
            if len(items) > MAX_TENSOR_OVERRIDES:
                raise InvalidArgument(f"at most {MAX_TENSOR_OVERRIDES} items in {list_field}", field=list_field)
            for item in items:
                check_text(list_field, item, MAX_PATTERN_LENGTH)
        if len(options.prune_layers) > MAX_TENSOR_OVERRIDES:
            raise InvalidArgument(f"at most {MAX_TENSOR_OVERRIDES} prune_layers", field="prune_layers")


# Bounds on a request, checked before anything else (docs/SECURITY.md lists them).
MAX_PATH_LENGTH = 4096  # PATH_MAX on Linux
MAX_NAME_LENGTH = 64  # quant type and ggml type names are under 16 characters
MAX_QUANT_TYPES = 64  # the installed llama.cpp writes about 35 types
MAX_TENSOR_OVERRIDES = 256
MAX_PATTERN_LENGTH = 1000


def check_text(field_name: str, value: str, limit: int) -> None:
    """INVALID_ARGUMENT naming ``field_name`` when a client string is longer than ``limit`` or holds a NUL."""
    if len(value) > limit:
        raise InvalidArgument(f"{field_name} is longer than {limit} characters", field=field_name)
    if "\0" in value:
        raise InvalidArgument(f"{field_name} contains a NUL character", field=field_name)


@dataclass(frozen=True)
class SourceFile:
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class SourceInfo:
    path: str
    architecture: str
    size_bytes: int
    parameter_count: int
    file_type: int
    tensor_count: int
    model_name: str
    tensor_bytes: int
    kind: str = "gguf"
    repo_id: str = ""
    revision: str = ""
    commit_sha: str = ""
    root_digest: str = ""
    manifest: tuple[SourceFile, ...] = ()
    hf_architecture: str = ""
    conversion_cached: bool = False
    converter: str = ""  # what converted a Hugging Face source: its version is part of the bytes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceInfo:
        fields = dict(data)
        fields["manifest"] = tuple(SourceFile(**f) for f in fields.get("manifest") or ())
        return cls(**fields)


@dataclass(frozen=True)
class Quality:
    """What quantization cost (see quantledger.quality); None fields do not apply to the model kind."""

    kind: str
    mean_kl_divergence: float | None = None
    p99_kl_divergence: float | None = None
    top1_agreement: float | None = None
    perplexity_reference: float | None = None
    perplexity: float | None = None
    perplexity_delta: float | None = None
    mean_cosine_similarity: float | None = None
    min_cosine_similarity: float | None = None
    topk_retrieval_agreement: float | None = None
    items_evaluated: int = 0
    eval_set: str = ""
    kl_divergence_stderr: float | None = None  # standard error of mean_kl_divergence
    # rerankers (kind "reranker", quality/rerank.py): against the reference's scores (NDCG@5 with them as
    # graded relevance, MAP and precision@5 with its top 5 as the relevant passages, Kendall's tau-b), then
    # against the shipped labels (the output's and the reference's NDCG@5)
    ndcg_at_5: float | None = None
    mean_average_precision: float | None = None
    precision_at_5: float | None = None
    rank_agreement: float | None = None
    label_ndcg_at_5: float | None = None
    label_mean_average_precision: float | None = None
    label_precision_at_5: float | None = None
    reference_label_ndcg_at_5: float | None = None
    # embedders: the reference's top 10 found in the output's top 10, and 1 / rank of its first result
    recall_at_10: float | None = None
    mrr_at_10: float | None = None
    # why the evaluation of this output failed (kind is then empty); the output is kept all the same
    error: JobError | None = None

    @classmethod
    def failed(cls, error: JobError) -> Quality:
        return cls(kind="", error=error)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quality:
        fields = dict(data)
        fields["error"] = JobError(**fields["error"]) if fields.get("error") else None
        return cls(**fields)


@dataclass
class Progress:
    fraction: float = 0.0
    bytes_done: int = 0
    bytes_total: int = 0
    current_tensor: str = ""
    current_quant_type: str = ""
    tensors_done: int = 0
    tensors_total: int = 0
    outputs_done: int = 0
    outputs_total: int = 0
    eta_seconds: float | None = None
    bytes_per_second: float = 0.0
    # the stage now running: its own share done, work done / total (in stage_unit) and time left
    stage_fraction: float = 0.0
    stage_done: int = 0
    stage_total: int = 0
    stage_unit: str = ""
    stage_eta_seconds: float | None = None


@dataclass(frozen=True)
class OutputFile:
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class RegistryEntry:
    """Where an output's on-chain registration stands (PENDING, REGISTERED or FAILED)."""

    state: str
    provenance_path: str
    provenance_sha256: str
    chain_id: int = 0
    contract: str = ""
    attester: str = ""
    tx_hash: str = ""
    block_number: int = 0
    attempts: int = 0
    error: JobError | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        fields = dict(data)
        fields["error"] = JobError(**fields["error"]) if fields.get("error") else None
        return cls(**fields)


@dataclass(frozen=True)
class Artifact:
    """One output: ``path``, ``size_bytes`` and ``sha256`` describe its first (usually only) file."""

    quant_type: str
    path: str
    size_bytes: int
    sha256: str
    bits_per_weight: float
    fallback_tensor_count: int
    tensor_count: int
    source_size_bytes: int
    quantize_seconds: float
    file_type: int
    files: tuple[OutputFile, ...] = ()
    quality: Quality | None = None
    registry: RegistryEntry | None = None
    # a Hugging Face format's folder (hf_export/): ``sha256`` is its root digest over ``files``
    folder: bool = False

    @property
    def registered_digests(self) -> tuple[str, ...]:
        """What the chain records of this output: the folder's root digest, or every file's SHA-256."""
        if self.folder:
            return (self.sha256,)
        return tuple(f.sha256 for f in self.files) if self.files else (self.sha256,)

    @property
    def total_size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files) if self.files else self.size_bytes

    @property
    def compression_ratio(self) -> float:
        total = self.total_size_bytes
        return self.source_size_bytes / total if total else 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        fields = dict(data)
        fields["files"] = tuple(OutputFile(**f) for f in fields.get("files") or ())
        fields["quality"] = Quality.from_dict(fields["quality"]) if fields.get("quality") else None
        fields["registry"] = RegistryEntry.from_dict(fields["registry"]) if fields.get("registry") else None
        return cls(**fields)


@dataclass(frozen=True)
class JobError:
    """Why a job (or a registration) failed: the wire form of a QuantledgerError or RegistryError."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: TypedError) -> JobError:
        return cls(code=exc.code, reason=exc.reason, message=exc.message, metadata=dict(exc.metadata))


class TypedError(Protocol):
    """What QuantledgerError and registry_client's RegistryError share: a code, a reason, a message."""

    code: ClassVar[str]
    reason: ClassVar[str]
    message: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Scope:
    """What a job's owner may touch and run, fixed when the job is created (so a restart runs it the same).

    Empty roots mean the server's own (``QUANTLEDGER_ALLOWED_ROOTS``); ``max_running_jobs`` None is no limit.
    """

    allowed_roots: tuple[str, ...] = ()
    output_dirs: tuple[str, ...] = ()
    max_running_jobs: int | None = None
    owner: str = ""  # whose uploads (Settings.uploads_for) the job may read besides its roots

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        return cls(
            allowed_roots=tuple(str(r) for r in principal.allowed_roots or ()),
            output_dirs=tuple(str(d) for d in principal.output_dirs or ()),
            max_running_jobs=principal.quotas.max_running_jobs,
            owner=principal.name,
        )

    def settings(self, server: Settings) -> Settings:
        """The server's settings with this scope's roots in place of the server's, the computed importance
        matrices and the owner's uploads."""
        roots = tuple(pathlib.Path(r) for r in self.allowed_roots) or server.allowed_roots
        changes: dict[str, Any] = {}
        roots = (*roots, server.imatrix_cache)  # matrices jobs computed: every job may read them
        if self.owner:
            roots = (*roots, server.uploads_for(self.owner))
        if roots != server.allowed_roots:
            changes["allowed_roots"] = roots
        if self.output_dirs:
            changes["output_roots"] = tuple(pathlib.Path(d) for d in self.output_dirs)
        return dataclasses.replace(server, **changes) if changes else server


@dataclass
class Job:
    id: str
    spec: JobSpec
    request_id: str
    create_time: float
    state: JobState = JobState.QUEUED
    stage: Stage = Stage.NONE
    progress: Progress = field(default_factory=Progress)
    outputs: list[Artifact] = field(default_factory=list)
    error: JobError | None = None
    start_time: float | None = None
    end_time: float | None = None
    source_info: SourceInfo | None = None
    output_dir: str = ""
    version: int = 0
    owner: str = "local"  # the principal that created the job (jobs stored before owners: "local")
    scope: Scope = field(default_factory=Scope)
    # when the job's output files were deleted (DeleteQuantizeJob or retention); the record stays
    delete_time: float | None = None
    imatrix: ComputedImatrix | None = None  # what imatrix_path "auto" computed
    reproduced: ReproductionResult | None = None  # a reproduction's verdict (spec.reproduction), once registered

    @property
    def imatrix_file(self) -> str:
        """The importance matrix the outputs were made with: the client's file, the computed one, or ""."""
        if self.spec.options.imatrix_auto:
            return self.imatrix.path if self.imatrix is not None else ""
        return self.spec.options.imatrix_path

    @property
    def kept_bytes(self) -> int:
        """Bytes of this job's outputs still on disk (0 once they are deleted)."""
        return 0 if self.delete_time is not None else sum(a.total_size_bytes for a in self.outputs)

    @property
    def name(self) -> str:
        return f"jobs/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        spec = data["spec"]
        options = dict(spec.get("options") or {})
        options["tensor_type_overrides"] = tuple(tuple(o) for o in options.get("tensor_type_overrides", ()))
        for list_field in ("imatrix_include_weights", "imatrix_exclude_weights", "kv_overrides", "prune_layers"):
            options[list_field] = tuple(options.get(list_field, ()))
        known = {f.name for f in dataclasses.fields(Options)}
        return cls(
            id=data["id"],
            spec=JobSpec(
                source=spec["source"],
                quant_types=tuple(spec["quant_types"]),
                options=Options(**{k: v for k, v in options.items() if k in known}),
                reproduction=Reproduction(**spec["reproduction"]) if spec.get("reproduction") else None,
            ),
            request_id=data.get("request_id", ""),
            create_time=data["create_time"],
            state=JobState(data["state"]),
            stage=Stage(data.get("stage", "NONE")),
            progress=Progress(**data.get("progress") or {}),
            outputs=[Artifact.from_dict(a) for a in data.get("outputs") or []],
            error=JobError(**data["error"]) if data.get("error") else None,
            start_time=data.get("start_time"),
            end_time=data.get("end_time"),
            source_info=SourceInfo.from_dict(data["source_info"]) if data.get("source_info") else None,
            output_dir=data.get("output_dir", ""),
            version=data.get("version", 0),
            owner=data.get("owner") or "local",
            scope=_scope_from_dict(data.get("scope") or {}, data.get("owner") or "local"),
            delete_time=data.get("delete_time"),
            imatrix=ComputedImatrix(**data["imatrix"]) if data.get("imatrix") else None,
            reproduced=ReproductionResult(**data["reproduced"]) if data.get("reproduced") else None,
        )


def _scope_from_dict(data: dict[str, Any], owner: str) -> Scope:
    return Scope(
        allowed_roots=tuple(data.get("allowed_roots") or ()),
        output_dirs=tuple(data.get("output_dirs") or ()),
        max_running_jobs=data.get("max_running_jobs"),
        owner=data.get("owner") or owner,
    )
