"""Registry domain objects -> quantledger.v1 registry messages. No rules here, only field mapping."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from quantledger.registry.reader import DigestVerification, RegistryInfo, record_name
from quantledger.v1 import registry_service_pb2 as pb
from registry_client.records import Flag, Record


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp | None:
    return timestamp_pb2.Timestamp(seconds=seconds) if seconds else None


def record_to_proto(record: Record) -> pb.ProvenanceRecord:
    return pb.ProvenanceRecord(
        name=record_name(record),
        file_sha256=record.file_sha256,
        attester=record.attester,
        source_digest=record.source_digest,
        source_revision=record.source_revision,
        provenance_sha256=record.provenance_sha256,
        quant_type=record.quant_type,
        tool_version=record.tool_version,
        file_type=record.file_type,
        flags=[str(flag.name) for flag in Flag if record.flags & flag],
        original_size_bytes=record.original_size,
        quantized_size_bytes=record.quantized_size,
        compression_ratio=record.compression_ratio,
        attest_time=_timestamp(record.attested_at),
        revoke_time=_timestamp(record.revoked_at),
        status="STATUS_REVOKED" if record.revoked_at else "STATUS_VALID",
    )


def verification_to_proto(answer: DigestVerification) -> pb.VerifyDigestResponse:
    return pb.VerifyDigestResponse(
        verdict=f"VERDICT_{answer.verdict.value}",
        valid_records=[record_to_proto(r) for r in answer.valid],
        revoked_records=[record_to_proto(r) for r in answer.revoked],
        chain_id=answer.chain_id,
        contract=answer.contract,
        vouches=[
            pb.Vouch(attester=v.attester, reproduced=v.reproduced, attest_time=_timestamp(v.attested_at))
            for v in answer.vouches
        ],
    )


def records_to_proto(records: list[Record], next_page_token: str) -> pb.ListRecordsResponse:
    return pb.ListRecordsResponse(records=[record_to_proto(r) for r in records], next_page_token=next_page_token)


def registry_info_to_proto(info: RegistryInfo) -> pb.RegistryInfo:
    return pb.RegistryInfo(
        chain_id=info.chain_id,
        chain_url=info.chain_url,
        contract=info.contract,
        contract_version=info.contract_version,
    )
