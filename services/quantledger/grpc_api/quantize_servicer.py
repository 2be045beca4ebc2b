"""gRPC surface of the job engine; no business rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from quantledger.errors import JobNotFound
from quantledger.grpc_api.converters import (
    estimate_to_proto,
    job_to_proto,
    quant_type_to_proto,
    spec_from_proto,
)
from quantledger.grpc_api.errors import maps_domain_errors
from quantledger.jobs.engine import JobEngine
from quantledger.quantize.catalogue import llama_cpp_version
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc


def job_id(name: str) -> str:
    """The id in a job name "jobs/{id}"."""
    prefix, _, ident = name.partition("/")
    if prefix != "jobs" or not ident or "/" in ident:
        raise JobNotFound(f"{name!r} is not a job name (expected jobs/{{id}})", name=name)
    return ident


class QuantizeServicer(pb_grpc.QuantizeServiceServicer):
    def __init__(self, engine: JobEngine) -> None:
        self._engine = engine

    @maps_domain_errors
    async def CreateQuantizeJob(
        self, request: pb.CreateQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        job = await self._engine.create(
            spec_from_proto(request.job), request.request_id or request.job.request_id, context.time_remaining()
        )
        return job_to_proto(job)

    @maps_domain_errors
    async def GetQuantizeJob(
        self, request: pb.GetQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        return job_to_proto(self._engine.get(job_id(request.name)))

    @maps_domain_errors
    async def ListQuantizeJobs(
        self, request: pb.ListQuantizeJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuantizeJobsResponse:
        jobs, token = self._engine.list_jobs(request.page_size, request.page_token)
        return pb.ListQuantizeJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    @maps_domain_errors
    async def CancelQuantizeJob(
        self, request: pb.CancelQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        return job_to_proto(await self._engine.cancel(job_id(request.name)))

    @maps_domain_errors
    async def WatchQuantizeJob(
        self, request: pb.WatchQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QuantizeJob]:
        async for job in self._engine.watch(job_id(request.name)):
            yield job_to_proto(job)

    @maps_domain_errors
    async def EstimateQuantizeJob(
        self, request: pb.EstimateQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateQuantizeJobResponse:
        return estimate_to_proto(await self._engine.estimate(spec_from_proto(request.job), context.time_remaining()))

    @maps_domain_errors
    async def ListQuantTypes(
        self, request: pb.ListQuantTypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuantTypesResponse:
        types, token = self._engine.list_quant_types(request.page_size, request.page_token)
        return pb.ListQuantTypesResponse(
            quant_types=[quant_type_to_proto(t) for t in types],
            next_page_token=token,
            llama_cpp_version=llama_cpp_version(),
        )
