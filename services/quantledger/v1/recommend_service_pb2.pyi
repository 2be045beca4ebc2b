from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Preference(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFERENCE_UNSPECIFIED: _ClassVar[Preference]
    PREFERENCE_QUALITY: _ClassVar[Preference]
    PREFERENCE_BALANCED: _ClassVar[Preference]
    PREFERENCE_SPEED: _ClassVar[Preference]
    PREFERENCE_SIZE: _ClassVar[Preference]
PREFERENCE_UNSPECIFIED: Preference
PREFERENCE_QUALITY: Preference
PREFERENCE_BALANCED: Preference
PREFERENCE_SPEED: Preference
PREFERENCE_SIZE: Preference

class ModelSpec(_message.Message):
    __slots__ = ("gguf_path", "hf_folder", "hf_repo", "registry_file", "hyperparameters", "description")
    class Hyperparameters(_message.Message):
        __slots__ = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "n_vocab", "head_dim", "context_length", "tied_embeddings", "n_expert", "n_expert_used", "architecture")
        N_LAYER_FIELD_NUMBER: _ClassVar[int]
        N_EMBD_FIELD_NUMBER: _ClassVar[int]
        N_FF_FIELD_NUMBER: _ClassVar[int]
        N_HEAD_FIELD_NUMBER: _ClassVar[int]
        N_HEAD_KV_FIELD_NUMBER: _ClassVar[int]
        N_VOCAB_FIELD_NUMBER: _ClassVar[int]
        HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
        CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
        TIED_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
        N_EXPERT_FIELD_NUMBER: _ClassVar[int]
        N_EXPERT_USED_FIELD_NUMBER: _ClassVar[int]
        ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
        n_layer: int
        n_embd: int
        n_ff: int
        n_head: int
        n_head_kv: int
        n_vocab: int
        head_dim: int
        context_length: int
        tied_embeddings: bool
        n_expert: int
        n_expert_used: int
        architecture: str
        def __init__(self, n_layer: _Optional[int] = ..., n_embd: _Optional[int] = ..., n_ff: _Optional[int] = ..., n_head: _Optional[int] = ..., n_head_kv: _Optional[int] = ..., n_vocab: _Optional[int] = ..., head_dim: _Optional[int] = ..., context_length: _Optional[int] = ..., tied_embeddings: _Optional[bool] = ..., n_expert: _Optional[int] = ..., n_expert_used: _Optional[int] = ..., architecture: _Optional[str] = ...) -> None: ...
    class Description(_message.Message):
        __slots__ = ("parameter_count", "family")
        PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
        FAMILY_FIELD_NUMBER: _ClassVar[int]
        parameter_count: int
        family: str
        def __init__(self, parameter_count: _Optional[int] = ..., family: _Optional[str] = ...) -> None: ...
    GGUF_PATH_FIELD_NUMBER: _ClassVar[int]
    HF_FOLDER_FIELD_NUMBER: _ClassVar[int]
    HF_REPO_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FILE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    gguf_path: str
    hf_folder: str
    hf_repo: str
    registry_file: str
    hyperparameters: ModelSpec.Hyperparameters
    description: ModelSpec.Description
    def __init__(self, gguf_path: _Optional[str] = ..., hf_folder: _Optional[str] = ..., hf_repo: _Optional[str] = ..., registry_file: _Optional[str] = ..., hyperparameters: _Optional[_Union[ModelSpec.Hyperparameters, _Mapping]] = ..., description: _Optional[_Union[ModelSpec.Description, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("kind", "memory_bytes", "bandwidth_bytes_per_second", "name")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Device.Kind]
        KIND_CUDA: _ClassVar[Device.Kind]
        KIND_METAL: _ClassVar[Device.Kind]
    KIND_UNSPECIFIED: Device.Kind
    KIND_CUDA: Device.Kind
    KIND_METAL: Device.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: Device.Kind
    memory_bytes: int
    bandwidth_bytes_per_second: float
    name: str
    def __init__(self, kind: _Optional[_Union[Device.Kind, str]] = ..., memory_bytes: _Optional[int] = ..., bandwidth_bytes_per_second: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("tier", "ram_bytes", "cores", "devices", "unified_memory", "cpu_bandwidth_bytes_per_second", "cpu_only")
    TIER_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPU_BANDWIDTH_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CPU_ONLY_FIELD_NUMBER: _ClassVar[int]
    tier: str
    ram_bytes: int
    cores: int
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    unified_memory: bool
    cpu_bandwidth_bytes_per_second: float
    cpu_only: bool
    def __init__(self, tier: _Optional[str] = ..., ram_bytes: _Optional[int] = ..., cores: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., unified_memory: _Optional[bool] = ..., cpu_bandwidth_bytes_per_second: _Optional[float] = ..., cpu_only: _Optional[bool] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("model", "hardware", "context_length", "batch_size", "kv_cache_type", "preference", "max_size_bytes", "max_kl_divergence", "imatrix", "max_options", "disable_flash_attention", "full_swa_cache", "hf_formats")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    IMATRIX_FIELD_NUMBER: _ClassVar[int]
    MAX_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_FLASH_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    FULL_SWA_CACHE_FIELD_NUMBER: _ClassVar[int]
    HF_FORMATS_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    hardware: Hardware
    context_length: int
    batch_size: int
    kv_cache_type: str
    preference: Preference
    max_size_bytes: int
    max_kl_divergence: float
    imatrix: bool
    max_options: int
    disable_flash_attention: bool
    full_swa_cache: bool
    hf_formats: bool
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., context_length: _Optional[int] = ..., batch_size: _Optional[int] = ..., kv_cache_type: _Optional[str] = ..., preference: _Optional[_Union[Preference, str]] = ..., max_size_bytes: _Optional[int] = ..., max_kl_divergence: _Optional[float] = ..., imatrix: _Optional[bool] = ..., max_options: _Optional[int] = ..., disable_flash_attention: _Optional[bool] = ..., full_swa_cache: _Optional[bool] = ..., hf_formats: _Optional[bool] = ...) -> None: ...

class DeviceUsage(_message.Message):
    __slots__ = ("device", "bytes_used", "bytes_available", "layers")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    BYTES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    device: str
    bytes_used: int
    bytes_available: int
    layers: int
    def __init__(self, device: _Optional[str] = ..., bytes_used: _Optional[int] = ..., bytes_available: _Optional[int] = ..., layers: _Optional[int] = ...) -> None: ...

class PredictedQuality(_message.Message):
    __slots__ = ("mean_kl_divergence", "perplexity_change", "source")
    MEAN_KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    mean_kl_divergence: float
    perplexity_change: float
    source: str
    def __init__(self, mean_kl_divergence: _Optional[float] = ..., perplexity_change: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class RecommendOption(_message.Message):
    __slots__ = ("quant_type", "size_bytes", "bits_per_weight", "context_length", "kv_cache_type", "flash_attention", "gpu_layers", "total_layers", "devices", "kv_cache_bytes", "compute_buffer_bytes", "tokens_per_second", "quality", "fits", "needs_imatrix", "reasons")
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FLASH_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    NEEDS_IMATRIX_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    quant_type: str
    size_bytes: int
    bits_per_weight: float
    context_length: int
    kv_cache_type: str
    flash_attention: bool
    gpu_layers: int
    total_layers: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceUsage]
    kv_cache_bytes: int
    compute_buffer_bytes: int
    tokens_per_second: float
    quality: PredictedQuality
    fits: bool
    needs_imatrix: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, quant_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., bits_per_weight: _Optional[float] = ..., context_length: _Optional[int] = ..., kv_cache_type: _Optional[str] = ..., flash_attention: _Optional[bool] = ..., gpu_layers: _Optional[int] = ..., total_layers: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceUsage, _Mapping]]] = ..., kv_cache_bytes: _Optional[int] = ..., compute_buffer_bytes: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., quality: _Optional[_Union[PredictedQuality, _Mapping]] = ..., fits: _Optional[bool] = ..., needs_imatrix: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("options", "model_summary", "hardware_summary", "parameter_count", "exact_sizes", "any_fits", "hf_formats")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXACT_SIZES_FIELD_NUMBER: _ClassVar[int]
    ANY_FITS_FIELD_NUMBER: _ClassVar[int]
    HF_FORMATS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.RepeatedCompositeFieldContainer[RecommendOption]
    model_summary: str
    hardware_summary: str
    parameter_count: int
    exact_sizes: bool
    any_fits: bool
    hf_formats: _containers.RepeatedCompositeFieldContainer[HfFormatOption]
    def __init__(self, options: _Optional[_Iterable[_Union[RecommendOption, _Mapping]]] = ..., model_summary: _Optional[str] = ..., hardware_summary: _Optional[str] = ..., parameter_count: _Optional[int] = ..., exact_sizes: _Optional[bool] = ..., any_fits: _Optional[bool] = ..., hf_formats: _Optional[_Iterable[_Union[HfFormatOption, _Mapping]]] = ...) -> None: ...

class HfFormatOption(_message.Message):
    __slots__ = ("format", "weight_bytes", "kv_cache_bytes", "memory_bytes", "device", "bytes_available", "fits", "quality", "note")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    format: str
    weight_bytes: int
    kv_cache_bytes: int
    memory_bytes: int
    device: str
    bytes_available: int
    fits: bool
    quality: PredictedQuality
    note: str
    def __init__(self, format: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., device: _Optional[str] = ..., bytes_available: _Optional[int] = ..., fits: _Optional[bool] = ..., quality: _Optional[_Union[PredictedQuality, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...
