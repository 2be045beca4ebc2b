"""gRPC surface of the registry reader; no business rules here.

The reader's calls wait on the chain's JSON-RPC endpoint, so each runs in a thread.
"""

from __future__ import annotations

import asyncio

import grpc

from quantledger.grpc_api.errors import maps_domain_errors
from quantledger.grpc_api.registry_converters import (
    record_to_proto,
    records_to_proto,
    registry_info_to_proto,
    verification_to_proto,
)
from quantledger.registry.reader import RegistryReader
from quantledger.resource_names import RecordName
from quantledger.v1 import registry_service_pb2 as pb
from quantledger.v1 import registry_service_pb2_grpc as pb_grpc


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, reader: RegistryReader) -> None:
        self._reader = reader

    @maps_domain_errors
    async def GetRecord(self, request: pb.GetRecordRequest, context: grpc.aio.ServicerContext) -> pb.ProvenanceRecord:
        name = RecordName.parse(request.name)
        return record_to_proto(await asyncio.to_thread(self._reader.get_record, name))

    @maps_domain_errors
    async def VerifyDigest(
        self, request: pb.VerifyDigestRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyDigestResponse:
        r = request
        answer = await asyncio.to_thread(
            self._reader.verify_digest, r.file_sha256, r.attester, r.size_bytes, r.min_attesters
        )
        return verification_to_proto(answer)

    @maps_domain_errors
    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordsResponse:
        r = request
        records, token = await asyncio.to_thread(self._reader.list_records, r.parent, r.page_size, r.page_token)
        return records_to_proto(records, token)

    @maps_domain_errors
    async def GetRegistryInfo(
        self, request: pb.GetRegistryInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegistryInfo:
        return registry_info_to_proto(await asyncio.to_thread(self._reader.registry_info))
