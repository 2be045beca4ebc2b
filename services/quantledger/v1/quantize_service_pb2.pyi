import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ThroughputBasis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THROUGHPUT_BASIS_UNSPECIFIED: _ClassVar[ThroughputBasis]
    THROUGHPUT_BASIS_MEASURED: _ClassVar[ThroughputBasis]
    THROUGHPUT_BASIS_DEFAULT: _ClassVar[ThroughputBasis]
THROUGHPUT_BASIS_UNSPECIFIED: ThroughputBasis
THROUGHPUT_BASIS_MEASURED: ThroughputBasis
THROUGHPUT_BASIS_DEFAULT: ThroughputBasis

class QuantizeJob(_message.Message):
    __slots__ = ("name", "source", "quant_types", "options", "state", "stage", "progress", "outputs", "error", "create_time", "start_time", "end_time", "request_id", "source_info", "output_dir", "owner", "delete_time", "imatrix", "reproduction")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[QuantizeJob.State]
        STATE_QUEUED: _ClassVar[QuantizeJob.State]
        STATE_RUNNING: _ClassVar[QuantizeJob.State]
        STATE_SUCCEEDED: _ClassVar[QuantizeJob.State]
        STATE_FAILED: _ClassVar[QuantizeJob.State]
        STATE_CANCELLED: _ClassVar[QuantizeJob.State]
    STATE_UNSPECIFIED: QuantizeJob.State
    STATE_QUEUED: QuantizeJob.State
    STATE_RUNNING: QuantizeJob.State
    STATE_SUCCEEDED: QuantizeJob.State
    STATE_FAILED: QuantizeJob.State
    STATE_CANCELLED: QuantizeJob.State
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[QuantizeJob.Stage]
        STAGE_FETCHING: _ClassVar[QuantizeJob.Stage]
        STAGE_CONVERTING: _ClassVar[QuantizeJob.Stage]
        STAGE_QUANTIZING: _ClassVar[QuantizeJob.Stage]
        STAGE_HASHING: _ClassVar[QuantizeJob.Stage]
        STAGE_EVALUATING: _ClassVar[QuantizeJob.Stage]
        STAGE_REGISTERING: _ClassVar[QuantizeJob.Stage]
        STAGE_CALIBRATING: _ClassVar[QuantizeJob.Stage]
    STAGE_UNSPECIFIED: QuantizeJob.Stage
    STAGE_FETCHING: QuantizeJob.Stage
    STAGE_CONVERTING: QuantizeJob.Stage
    STAGE_QUANTIZING: QuantizeJob.Stage
    STAGE_HASHING: QuantizeJob.Stage
    STAGE_EVALUATING: QuantizeJob.Stage
    STAGE_REGISTERING: QuantizeJob.Stage
    STAGE_CALIBRATING: QuantizeJob.Stage
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    QUANT_TYPES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_FIELD_NUMBER: _ClassVar[int]
    REPRODUCTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    quant_types: _containers.RepeatedScalarFieldContainer[str]
    options: QuantizeOptions
    state: QuantizeJob.State
    stage: QuantizeJob.Stage
    progress: Progress
    outputs: _containers.RepeatedCompositeFieldContainer[QuantizedArtifact]
    error: _status_pb2.Status
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    request_id: str
    source_info: SourceInfo
    output_dir: str
    owner: str
    delete_time: _timestamp_pb2.Timestamp
    imatrix: ComputedImatrix
    reproduction: Reproduction
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., quant_types: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[QuantizeOptions, _Mapping]] = ..., state: _Optional[_Union[QuantizeJob.State, str]] = ..., stage: _Optional[_Union[QuantizeJob.Stage, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[QuantizedArtifact, _Mapping]]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., source_info: _Optional[_Union[SourceInfo, _Mapping]] = ..., output_dir: _Optional[str] = ..., owner: _Optional[str] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., imatrix: _Optional[_Union[ComputedImatrix, _Mapping]] = ..., reproduction: _Optional[_Union[Reproduction, _Mapping]] = ...) -> None: ...

class Reproduction(_message.Message):
    __slots__ = ("file_sha256", "original_attester", "provenance_sha256", "recorded_tool_version", "any_version", "verdict", "reproduced_sha256", "first_difference", "report_path")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[Reproduction.Verdict]
        VERDICT_REPRODUCED: _ClassVar[Reproduction.Verdict]
        VERDICT_DIFFERENT: _ClassVar[Reproduction.Verdict]
    VERDICT_UNSPECIFIED: Reproduction.Verdict
    VERDICT_REPRODUCED: Reproduction.Verdict
    VERDICT_DIFFERENT: Reproduction.Verdict
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ATTESTER_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REPRODUCED_SHA256_FIELD_NUMBER: _ClassVar[int]
    FIRST_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    file_sha256: str
    original_attester: str
    provenance_sha256: str
    recorded_tool_version: str
    any_version: bool
    verdict: Reproduction.Verdict
    reproduced_sha256: str
    first_difference: FirstDifference
    report_path: str
    def __init__(self, file_sha256: _Optional[str] = ..., original_attester: _Optional[str] = ..., provenance_sha256: _Optional[str] = ..., recorded_tool_version: _Optional[str] = ..., any_version: _Optional[bool] = ..., verdict: _Optional[_Union[Reproduction.Verdict, str]] = ..., reproduced_sha256: _Optional[str] = ..., first_difference: _Optional[_Union[FirstDifference, _Mapping]] = ..., report_path: _Optional[str] = ...) -> None: ...

class FirstDifference(_message.Message):
    __slots__ = ("where", "tensor", "ggml_type", "keys", "index")
    WHERE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    GGML_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    where: str
    tensor: str
    ggml_type: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    index: int
    def __init__(self, where: _Optional[str] = ..., tensor: _Optional[str] = ..., ggml_type: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., index: _Optional[int] = ...) -> None: ...

class QuantizeOptions(_message.Message):
    __slots__ = ("threads", "allow_requantize", "leave_output_tensor", "pure", "output_tensor_type", "token_embedding_type", "tensor_type_overrides", "keep_split", "imatrix_path", "output_dir", "overwrite", "lora_dir", "max_kl_divergence", "skip_quality", "intermediate_type", "eval_text_path", "calibration_path", "calibration_chunks", "calibration_ctx", "imatrix_include_weights", "imatrix_exclude_weights", "kv_overrides", "prune_layers", "split_max_bytes", "split_max_tensors", "min_cosine_similarity", "min_ndcg", "model_name")
    THREADS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REQUANTIZE_FIELD_NUMBER: _ClassVar[int]
    LEAVE_OUTPUT_TENSOR_FIELD_NUMBER: _ClassVar[int]
    PURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TENSOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EMBEDDING_TYPE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_TYPE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    KEEP_SPLIT_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    LORA_DIR_FIELD_NUMBER: _ClassVar[int]
    MAX_KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    SKIP_QUALITY_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVAL_TEXT_PATH_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_PATH_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_CTX_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_INCLUDE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_EXCLUDE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    KV_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PRUNE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_MAX_TENSORS_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MIN_NDCG_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    threads: int
    allow_requantize: bool
    leave_output_tensor: bool
    pure: bool
    output_tensor_type: str
    token_embedding_type: str
    tensor_type_overrides: _containers.RepeatedCompositeFieldContainer[TensorTypeOverride]
    keep_split: bool
    imatrix_path: str
    output_dir: str
    overwrite: bool
    lora_dir: str
    max_kl_divergence: float
    skip_quality: bool
    intermediate_type: str
    eval_text_path: str
    calibration_path: str
    calibration_chunks: int
    calibration_ctx: int
    imatrix_include_weights: _containers.RepeatedScalarFieldContainer[str]
    imatrix_exclude_weights: _containers.RepeatedScalarFieldContainer[str]
    kv_overrides: _containers.RepeatedScalarFieldContainer[str]
    prune_layers: _containers.RepeatedScalarFieldContainer[int]
    split_max_bytes: int
    split_max_tensors: int
    min_cosine_similarity: float
    min_ndcg: float
    model_name: str
    def __init__(self, threads: _Optional[int] = ..., allow_requantize: _Optional[bool] = ..., leave_output_tensor: _Optional[bool] = ..., pure: _Optional[bool] = ..., output_tensor_type: _Optional[str] = ..., token_embedding_type: _Optional[str] = ..., tensor_type_overrides: _Optional[_Iterable[_Union[TensorTypeOverride, _Mapping]]] = ..., keep_split: _Optional[bool] = ..., imatrix_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., overwrite: _Optional[bool] = ..., lora_dir: _Optional[str] = ..., max_kl_divergence: _Optional[float] = ..., skip_quality: _Optional[bool] = ..., intermediate_type: _Optional[str] = ..., eval_text_path: _Optional[str] = ..., calibration_path: _Optional[str] = ..., calibration_chunks: _Optional[int] = ..., calibration_ctx: _Optional[int] = ..., imatrix_include_weights: _Optional[_Iterable[str]] = ..., imatrix_exclude_weights: _Optional[_Iterable[str]] = ..., kv_overrides: _Optional[_Iterable[str]] = ..., prune_layers: _Optional[_Iterable[int]] = ..., split_max_bytes: _Optional[int] = ..., split_max_tensors: _Optional[int] = ..., min_cosine_similarity: _Optional[float] = ..., min_ndcg: _Optional[float] = ..., model_name: _Optional[str] = ...) -> None: ...

class TensorTypeOverride(_message.Message):
    __slots__ = ("pattern", "type")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    type: str
    def __init__(self, pattern: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("fraction", "bytes_done", "bytes_total", "current_tensor", "current_quant_type", "tensors_done", "tensors_total", "outputs_done", "outputs_total", "eta", "bytes_per_second", "stage_fraction", "stage_done", "stage_total", "stage_unit", "stage_eta")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TENSOR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_DONE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_DONE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_DONE_FIELD_NUMBER: _ClassVar[int]
    STAGE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STAGE_UNIT_FIELD_NUMBER: _ClassVar[int]
    STAGE_ETA_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    bytes_done: int
    bytes_total: int
    current_tensor: str
    current_quant_type: str
    tensors_done: int
    tensors_total: int
    outputs_done: int
    outputs_total: int
    eta: _duration_pb2.Duration
    bytes_per_second: float
    stage_fraction: float
    stage_done: int
    stage_total: int
    stage_unit: str
    stage_eta: _duration_pb2.Duration
    def __init__(self, fraction: _Optional[float] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., current_tensor: _Optional[str] = ..., current_quant_type: _Optional[str] = ..., tensors_done: _Optional[int] = ..., tensors_total: _Optional[int] = ..., outputs_done: _Optional[int] = ..., outputs_total: _Optional[int] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., bytes_per_second: _Optional[float] = ..., stage_fraction: _Optional[float] = ..., stage_done: _Optional[int] = ..., stage_total: _Optional[int] = ..., stage_unit: _Optional[str] = ..., stage_eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ComputedImatrix(_message.Message):
    __slots__ = ("path", "sha256", "dataset", "calibration_sha256", "chunks", "chunk_size", "cached")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    dataset: str
    calibration_sha256: str
    chunks: int
    chunk_size: int
    cached: bool
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., dataset: _Optional[str] = ..., calibration_sha256: _Optional[str] = ..., chunks: _Optional[int] = ..., chunk_size: _Optional[int] = ..., cached: _Optional[bool] = ...) -> None: ...

class QuantizedArtifact(_message.Message):
    __slots__ = ("quant_type", "path", "size_bytes", "sha256", "bits_per_weight", "quality", "registry", "fallback_tensor_count", "tensor_count", "source_size_bytes", "compression_ratio", "quantize_duration", "file_type", "files", "total_size_bytes", "format")
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_DURATION_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    quant_type: str
    path: str
    size_bytes: int
    sha256: str
    bits_per_weight: float
    quality: QualityReport
    registry: RegistryRecord
    fallback_tensor_count: int
    tensor_count: int
    source_size_bytes: int
    compression_ratio: float
    quantize_duration: _duration_pb2.Duration
    file_type: int
    files: _containers.RepeatedCompositeFieldContainer[OutputFile]
    total_size_bytes: int
    format: str
    def __init__(self, quant_type: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., bits_per_weight: _Optional[float] = ..., quality: _Optional[_Union[QualityReport, _Mapping]] = ..., registry: _Optional[_Union[RegistryRecord, _Mapping]] = ..., fallback_tensor_count: _Optional[int] = ..., tensor_count: _Optional[int] = ..., source_size_bytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., quantize_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., file_type: _Optional[int] = ..., files: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., total_size_bytes: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class SourceFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class QualityReport(_message.Message):
    __slots__ = ("mean_kl_divergence", "p99_kl_divergence", "top1_agreement", "perplexity_delta", "mean_cosine_similarity", "min_cosine_similarity", "kind", "perplexity_reference", "perplexity", "topk_retrieval_agreement", "items_evaluated", "eval_set", "error", "kl_divergence_stderr", "ndcg_at_5", "mean_average_precision", "precision_at_5", "rank_agreement", "label_ndcg_at_5", "label_mean_average_precision", "label_precision_at_5", "reference_label_ndcg_at_5", "recall_at_10", "mrr_at_10")
    MEAN_KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    P99_KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_DELTA_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    TOPK_RETRIEVAL_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    EVAL_SET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_STDERR_FIELD_NUMBER: _ClassVar[int]
    NDCG_AT_5_FIELD_NUMBER: _ClassVar[int]
    MEAN_AVERAGE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_AT_5_FIELD_NUMBER: _ClassVar[int]
    RANK_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    LABEL_NDCG_AT_5_FIELD_NUMBER: _ClassVar[int]
    LABEL_MEAN_AVERAGE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    LABEL_PRECISION_AT_5_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_LABEL_NDCG_AT_5_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    MRR_AT_10_FIELD_NUMBER: _ClassVar[int]
    mean_kl_divergence: float
    p99_kl_divergence: float
    top1_agreement: float
    perplexity_delta: float
    mean_cosine_similarity: float
    min_cosine_similarity: float
    kind: str
    perplexity_reference: float
    perplexity: float
    topk_retrieval_agreement: float
    items_evaluated: int
    eval_set: str
    error: _status_pb2.Status
    kl_divergence_stderr: float
    ndcg_at_5: float
    mean_average_precision: float
    precision_at_5: float
    rank_agreement: float
    label_ndcg_at_5: float
    label_mean_average_precision: float
    label_precision_at_5: float
    reference_label_ndcg_at_5: float
    recall_at_10: float
    mrr_at_10: float
    def __init__(self, mean_kl_divergence: _Optional[float] = ..., p99_kl_divergence: _Optional[float] = ..., top1_agreement: _Optional[float] = ..., perplexity_delta: _Optional[float] = ..., mean_cosine_similarity: _Optional[float] = ..., min_cosine_similarity: _Optional[float] = ..., kind: _Optional[str] = ..., perplexity_reference: _Optional[float] = ..., perplexity: _Optional[float] = ..., topk_retrieval_agreement: _Optional[float] = ..., items_evaluated: _Optional[int] = ..., eval_set: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., kl_divergence_stderr: _Optional[float] = ..., ndcg_at_5: _Optional[float] = ..., mean_average_precision: _Optional[float] = ..., precision_at_5: _Optional[float] = ..., rank_agreement: _Optional[float] = ..., label_ndcg_at_5: _Optional[float] = ..., label_mean_average_precision: _Optional[float] = ..., label_precision_at_5: _Optional[float] = ..., reference_label_ndcg_at_5: _Optional[float] = ..., recall_at_10: _Optional[float] = ..., mrr_at_10: _Optional[float] = ...) -> None: ...

class RegistryRecord(_message.Message):
    __slots__ = ("chain_id", "contract", "tx_hash", "attester", "state", "block_number", "provenance_path", "provenance_sha256", "error", "attempts")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[RegistryRecord.State]
        STATE_PENDING: _ClassVar[RegistryRecord.State]
        STATE_REGISTERED: _ClassVar[RegistryRecord.State]
        STATE_FAILED: _ClassVar[RegistryRecord.State]
        STATE_UNREGISTERED: _ClassVar[RegistryRecord.State]
    STATE_UNSPECIFIED: RegistryRecord.State
    STATE_PENDING: RegistryRecord.State
    STATE_REGISTERED: RegistryRecord.State
    STATE_FAILED: RegistryRecord.State
    STATE_UNREGISTERED: RegistryRecord.State
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    ATTESTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_PATH_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    contract: str
    tx_hash: str
    attester: str
    state: RegistryRecord.State
    block_number: int
    provenance_path: str
    provenance_sha256: str
    error: _status_pb2.Status
    attempts: int
    def __init__(self, chain_id: _Optional[int] = ..., contract: _Optional[str] = ..., tx_hash: _Optional[str] = ..., attester: _Optional[str] = ..., state: _Optional[_Union[RegistryRecord.State, str]] = ..., block_number: _Optional[int] = ..., provenance_path: _Optional[str] = ..., provenance_sha256: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class SourceInfo(_message.Message):
    __slots__ = ("path", "architecture", "size_bytes", "parameter_count", "file_type", "tensor_count", "model_name", "tensor_bytes", "kind", "repo_id", "revision", "commit_sha", "root_digest", "manifest", "hf_architecture", "conversion_cached")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SHA_FIELD_NUMBER: _ClassVar[int]
    ROOT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    HF_ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_CACHED_FIELD_NUMBER: _ClassVar[int]
    path: str
    architecture: str
    size_bytes: int
    parameter_count: int
    file_type: int
    tensor_count: int
    model_name: str
    tensor_bytes: int
    kind: str
    repo_id: str
    revision: str
    commit_sha: str
    root_digest: str
    manifest: _containers.RepeatedCompositeFieldContainer[SourceFile]
    hf_architecture: str
    conversion_cached: bool
    def __init__(self, path: _Optional[str] = ..., architecture: _Optional[str] = ..., size_bytes: _Optional[int] = ..., parameter_count: _Optional[int] = ..., file_type: _Optional[int] = ..., tensor_count: _Optional[int] = ..., model_name: _Optional[str] = ..., tensor_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., repo_id: _Optional[str] = ..., revision: _Optional[str] = ..., commit_sha: _Optional[str] = ..., root_digest: _Optional[str] = ..., manifest: _Optional[_Iterable[_Union[SourceFile, _Mapping]]] = ..., hf_architecture: _Optional[str] = ..., conversion_cached: _Optional[bool] = ...) -> None: ...

class CreateQuantizeJobRequest(_message.Message):
    __slots__ = ("job", "request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: QuantizeJob
    request_id: str
    def __init__(self, job: _Optional[_Union[QuantizeJob, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReproduceArtifactRequest(_message.Message):
    __slots__ = ("file_sha256", "file_path", "provenance_json", "provenance_path", "source", "lora_dir", "imatrix_path", "output_dir", "any_version", "report", "request_id")
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_PATH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LORA_DIR_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    ANY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    file_sha256: str
    file_path: str
    provenance_json: bytes
    provenance_path: str
    source: str
    lora_dir: str
    imatrix_path: str
    output_dir: str
    any_version: bool
    report: bool
    request_id: str
    def __init__(self, file_sha256: _Optional[str] = ..., file_path: _Optional[str] = ..., provenance_json: _Optional[bytes] = ..., provenance_path: _Optional[str] = ..., source: _Optional[str] = ..., lora_dir: _Optional[str] = ..., imatrix_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., any_version: _Optional[bool] = ..., report: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetQuantizeJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListQuantizeJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListQuantizeJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[QuantizeJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[QuantizeJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelQuantizeJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteQuantizeJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchQuantizeJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class EstimateQuantizeJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: QuantizeJob
    def __init__(self, job: _Optional[_Union[QuantizeJob, _Mapping]] = ...) -> None: ...

class OutputEstimate(_message.Message):
    __slots__ = ("quant_type", "size_bytes", "bits_per_weight", "fallback_tensor_count", "duration", "throughput_bytes_per_second", "throughput_basis")
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BASIS_FIELD_NUMBER: _ClassVar[int]
    quant_type: str
    size_bytes: int
    bits_per_weight: float
    fallback_tensor_count: int
    duration: _duration_pb2.Duration
    throughput_bytes_per_second: float
    throughput_basis: ThroughputBasis
    def __init__(self, quant_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., bits_per_weight: _Optional[float] = ..., fallback_tensor_count: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., throughput_bytes_per_second: _Optional[float] = ..., throughput_basis: _Optional[_Union[ThroughputBasis, str]] = ...) -> None: ...

class EstimateQuantizeJobResponse(_message.Message):
    __slots__ = ("outputs", "disk_bytes_needed", "disk_bytes_free", "fits_on_disk", "duration", "source_info", "output_dir")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FREE_FIELD_NUMBER: _ClassVar[int]
    FITS_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputEstimate]
    disk_bytes_needed: int
    disk_bytes_free: int
    fits_on_disk: bool
    duration: _duration_pb2.Duration
    source_info: SourceInfo
    output_dir: str
    def __init__(self, outputs: _Optional[_Iterable[_Union[OutputEstimate, _Mapping]]] = ..., disk_bytes_needed: _Optional[int] = ..., disk_bytes_free: _Optional[int] = ..., fits_on_disk: _Optional[bool] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., source_info: _Optional[_Union[SourceInfo, _Mapping]] = ..., output_dir: _Optional[str] = ...) -> None: ...

class ListQuantTypesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListQuantTypesResponse(_message.Message):
    __slots__ = ("quant_types", "next_page_token", "llama_cpp_version", "llama_cpp_build")
    QUANT_TYPES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LLAMA_CPP_VERSION_FIELD_NUMBER: _ClassVar[int]
    LLAMA_CPP_BUILD_FIELD_NUMBER: _ClassVar[int]
    quant_types: _containers.RepeatedCompositeFieldContainer[QuantType]
    next_page_token: str
    llama_cpp_version: str
    llama_cpp_build: str
    def __init__(self, quant_types: _Optional[_Iterable[_Union[QuantType, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., llama_cpp_version: _Optional[str] = ..., llama_cpp_build: _Optional[str] = ...) -> None: ...

class QuantType(_message.Message):
    __slots__ = ("name", "file_type", "family", "requires_imatrix", "typical_bits_per_weight", "description", "use_for", "available", "requires")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_IMATRIX_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_BITS_PER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    USE_FOR_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    name: str
    file_type: int
    family: str
    requires_imatrix: bool
    typical_bits_per_weight: float
    description: str
    use_for: str
    available: bool
    requires: str
    def __init__(self, name: _Optional[str] = ..., file_type: _Optional[int] = ..., family: _Optional[str] = ..., requires_imatrix: _Optional[bool] = ..., typical_bits_per_weight: _Optional[float] = ..., description: _Optional[str] = ..., use_for: _Optional[str] = ..., available: _Optional[bool] = ..., requires: _Optional[str] = ...) -> None: ...
