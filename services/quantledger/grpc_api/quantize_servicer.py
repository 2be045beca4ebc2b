"""gRPC surface of the job engine; no business rules here.

Every RPC passes the call's principal (``current_principal()``, set by the authentication layer) to the
engine, which decides what that principal may see and do.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc

from quantledger.errors import ConfigInvalid
from quantledger.grpc_api.auth import current_principal
from quantledger.grpc_api.converters import (
    create_request_from_proto,
    estimate_to_proto,
    job_to_proto,
    quant_types_to_proto,
    reproduce_request_from_proto,
    spec_from_proto,
)
from quantledger.grpc_api.errors import maps_domain_errors
from quantledger.jobs.engine import JobEngine
from quantledger.quantize.catalogue import library_versions
from quantledger.resource_names import JobName
from quantledger.security.streams import StreamLimits
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from quantledger.distributed.frontend import TemporalBackend

T = TypeVar("T")


async def _resolved(value: T | Awaitable[T]) -> T:
    """The embedded engine answers reads at once, the distributed backend after a round trip."""
    if inspect.isawaitable(value):
        return await value
    return value


class QuantizeServicer(pb_grpc.QuantizeServiceServicer):
    """Each RPC: request to domain values, one engine call, the answer to proto; errors by the decorator."""

    def __init__(self, engine: JobEngine | TemporalBackend, streams: StreamLimits | None = None) -> None:
        self._engine = engine
        self._streams = streams or StreamLimits(engine.settings.max_watch_streams)

    @maps_domain_errors
    async def CreateQuantizeJob(
        self, request: pb.CreateQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        spec, request_id = create_request_from_proto(request)
        job = await self._engine.create(spec, request_id, context.time_remaining(), current_principal())
        return job_to_proto(job)

    @maps_domain_errors
    async def GetQuantizeJob(
        self, request: pb.GetQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        return job_to_proto(await _resolved(self._engine.get(JobName.parse(request.name).id, current_principal())))

    @maps_domain_errors
    async def ListQuantizeJobs(
        self, request: pb.ListQuantizeJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuantizeJobsResponse:
        jobs, token = await _resolved(
            self._engine.list_jobs(request.page_size, request.page_token, current_principal())
        )
        return pb.ListQuantizeJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    @maps_domain_errors
    async def CancelQuantizeJob(
        self, request: pb.CancelQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        return job_to_proto(await self._engine.cancel(JobName.parse(request.name).id, current_principal()))

    @maps_domain_errors
    async def WatchQuantizeJob(
        self, request: pb.WatchQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QuantizeJob]:
        job_id, principal = JobName.parse(request.name).id, current_principal()
        with self._streams.hold(principal.name):
            async for job in self._engine.watch(job_id, principal):
                yield job_to_proto(job)

    @maps_domain_errors
    async def EstimateQuantizeJob(
        self, request: pb.EstimateQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateQuantizeJobResponse:
        spec = spec_from_proto(request.job)
        return estimate_to_proto(await self._engine.estimate(spec, context.time_remaining(), current_principal()))

    @maps_domain_errors
    async def DeleteQuantizeJob(
        self, request: pb.DeleteQuantizeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        return job_to_proto(await _resolved(self._engine.delete(JobName.parse(request.name).id, current_principal())))

    @maps_domain_errors
    async def ReproduceArtifact(
        self, request: pb.ReproduceArtifactRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuantizeJob:
        if not isinstance(self._engine, JobEngine):
            raise ConfigInvalid(
                "the distributed backend does not reproduce records: run ReproduceArtifact on an embedded server"
            )
        job = await self._engine.reproduce(
            reproduce_request_from_proto(request), request.request_id, context.time_remaining(), current_principal()
        )
        return job_to_proto(job)

    @maps_domain_errors
    async def ListQuantTypes(
        self, request: pb.ListQuantTypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuantTypesResponse:
        types, token = self._engine.list_quant_types(request.page_size, request.page_token)
        return quant_types_to_proto(types, token, library_versions())
