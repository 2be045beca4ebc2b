"""Map domain errors to gRPC status with google.rpc.ErrorInfo, in one decorator.

One tree is mapped: every error quantledger and registry_client raise on purpose derives from
QuantledgerError (registry_client.errors), so a RegistryError needs no clause of its own.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status

from quantledger.errors import QuantledgerError
from quantledger.grpc_api.converters import status_of
from quantledger.jobs.model import JobError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


async def abort_with(context: grpc.aio.ServicerContext, exc: QuantledgerError) -> None:
    error = JobError.of(exc)
    await context.abort_with_status(rpc_status.to_status(status_of(error)))


def maps_domain_errors(method: F) -> F:
    """Turn a QuantledgerError (of either package) raised by ``method`` into its status code, reason and message."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except QuantledgerError as exc:
                await abort_with(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except QuantledgerError as exc:
            log.info("%s: %s %s", method.__name__, exc.reason, exc.message)
            await abort_with(context, exc)

    return unary  # type: ignore[return-value]
