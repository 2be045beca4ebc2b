import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProvenanceRecord(_message.Message):
    __slots__ = ("name", "file_sha256", "attester", "source_digest", "source_revision", "provenance_sha256", "quant_type", "tool_version", "file_type", "flags", "original_size_bytes", "quantized_size_bytes", "compression_ratio", "attest_time", "revoke_time", "status")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[ProvenanceRecord.Status]
        STATUS_VALID: _ClassVar[ProvenanceRecord.Status]
        STATUS_REVOKED: _ClassVar[ProvenanceRecord.Status]
    STATUS_UNSPECIFIED: ProvenanceRecord.Status
    STATUS_VALID: ProvenanceRecord.Status
    STATUS_REVOKED: ProvenanceRecord.Status
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTESTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    ATTEST_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    file_sha256: str
    attester: str
    source_digest: str
    source_revision: str
    provenance_sha256: str
    quant_type: str
    tool_version: str
    file_type: int
    flags: _containers.RepeatedScalarFieldContainer[str]
    original_size_bytes: int
    quantized_size_bytes: int
    compression_ratio: float
    attest_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    status: ProvenanceRecord.Status
    def __init__(self, name: _Optional[str] = ..., file_sha256: _Optional[str] = ..., attester: _Optional[str] = ..., source_digest: _Optional[str] = ..., source_revision: _Optional[str] = ..., provenance_sha256: _Optional[str] = ..., quant_type: _Optional[str] = ..., tool_version: _Optional[str] = ..., file_type: _Optional[int] = ..., flags: _Optional[_Iterable[str]] = ..., original_size_bytes: _Optional[int] = ..., quantized_size_bytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., attest_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[ProvenanceRecord.Status, str]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VerifyDigestRequest(_message.Message):
    __slots__ = ("file_sha256", "attester", "size_bytes", "min_attesters")
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTESTER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_ATTESTERS_FIELD_NUMBER: _ClassVar[int]
    file_sha256: str
    attester: str
    size_bytes: int
    min_attesters: int
    def __init__(self, file_sha256: _Optional[str] = ..., attester: _Optional[str] = ..., size_bytes: _Optional[int] = ..., min_attesters: _Optional[int] = ...) -> None: ...

class VerifyDigestResponse(_message.Message):
    __slots__ = ("verdict", "valid_records", "revoked_records", "chain_id", "contract", "vouches")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[VerifyDigestResponse.Verdict]
        VERDICT_VALID: _ClassVar[VerifyDigestResponse.Verdict]
        VERDICT_REVOKED: _ClassVar[VerifyDigestResponse.Verdict]
        VERDICT_UNKNOWN: _ClassVar[VerifyDigestResponse.Verdict]
        VERDICT_MISMATCH: _ClassVar[VerifyDigestResponse.Verdict]
        VERDICT_TOO_FEW_ATTESTERS: _ClassVar[VerifyDigestResponse.Verdict]
    VERDICT_UNSPECIFIED: VerifyDigestResponse.Verdict
    VERDICT_VALID: VerifyDigestResponse.Verdict
    VERDICT_REVOKED: VerifyDigestResponse.Verdict
    VERDICT_UNKNOWN: VerifyDigestResponse.Verdict
    VERDICT_MISMATCH: VerifyDigestResponse.Verdict
    VERDICT_TOO_FEW_ATTESTERS: VerifyDigestResponse.Verdict
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    VALID_RECORDS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    VOUCHES_FIELD_NUMBER: _ClassVar[int]
    verdict: VerifyDigestResponse.Verdict
    valid_records: _containers.RepeatedCompositeFieldContainer[ProvenanceRecord]
    revoked_records: _containers.RepeatedCompositeFieldContainer[ProvenanceRecord]
    chain_id: int
    contract: str
    vouches: _containers.RepeatedCompositeFieldContainer[Vouch]
    def __init__(self, verdict: _Optional[_Union[VerifyDigestResponse.Verdict, str]] = ..., valid_records: _Optional[_Iterable[_Union[ProvenanceRecord, _Mapping]]] = ..., revoked_records: _Optional[_Iterable[_Union[ProvenanceRecord, _Mapping]]] = ..., chain_id: _Optional[int] = ..., contract: _Optional[str] = ..., vouches: _Optional[_Iterable[_Union[Vouch, _Mapping]]] = ...) -> None: ...

class Vouch(_message.Message):
    __slots__ = ("attester", "reproduced", "attest_time")
    ATTESTER_FIELD_NUMBER: _ClassVar[int]
    REPRODUCED_FIELD_NUMBER: _ClassVar[int]
    ATTEST_TIME_FIELD_NUMBER: _ClassVar[int]
    attester: str
    reproduced: bool
    attest_time: _timestamp_pb2.Timestamp
    def __init__(self, attester: _Optional[str] = ..., reproduced: _Optional[bool] = ..., attest_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRecordsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ProvenanceRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[ProvenanceRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRegistryInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistryInfo(_message.Message):
    __slots__ = ("chain_id", "chain_url", "contract", "contract_version")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_URL_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    chain_url: str
    contract: str
    contract_version: str
    def __init__(self, chain_id: _Optional[int] = ..., chain_url: _Optional[str] = ..., contract: _Optional[str] = ..., contract_version: _Optional[str] = ...) -> None: ...
