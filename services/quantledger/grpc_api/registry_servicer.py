"""gRPC surface of the registry reader; no business rules here."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import timestamp_pb2

from quantledger.grpc_api.errors import maps_domain_errors
from quantledger.registry.reader import RegistryReader, record_name
from quantledger.v1 import registry_service_pb2 as pb
from quantledger.v1 import registry_service_pb2_grpc as pb_grpc
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


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, reader: RegistryReader) -> None:
        self._reader = reader

    @maps_domain_errors
    async def GetRecord(self, request: pb.GetRecordRequest, context: grpc.aio.ServicerContext) -> pb.ProvenanceRecord:
        return record_to_proto(await asyncio.to_thread(self._reader.get_record, request.name))

    @maps_domain_errors
    async def VerifyDigest(
        self, request: pb.VerifyDigestRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyDigestResponse:
        reader = self._reader
        r = request
        answer = await asyncio.to_thread(reader.verify_digest, r.file_sha256, r.attester, r.size_bytes)
        client = self._reader.client
        return pb.VerifyDigestResponse(
            verdict=f"VERDICT_{answer.verdict.value}",
            valid_records=[record_to_proto(r) for r in answer.valid],
            revoked_records=[record_to_proto(r) for r in answer.revoked],
            chain_id=await asyncio.to_thread(lambda: client.chain_id),
            contract=client.address,
        )

    @maps_domain_errors
    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordsResponse:
        records, token = await asyncio.to_thread(
            self._reader.list_records, request.parent, request.page_size, request.page_token
        )
        return pb.ListRecordsResponse(records=[record_to_proto(r) for r in records], next_page_token=token)
