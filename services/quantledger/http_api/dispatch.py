"""Calling a servicer method from an HTTP request: the context adapter and the error body.

The HTTP surface calls the very servicer objects the gRPC server hosts (``QuantledgerServer.servicers``),
so every rule stays where gRPC has it: servicers convert and delegate, the domain decides, and
``maps_domain_errors`` turns a domain error into a ``grpc.Status`` through ``context.abort_with_status``.
``HttpContext`` is the small part of ``grpc.aio.ServicerContext`` the servicers and authenticators use;
its ``abort_with_status`` raises ``CallAborted``, whose ``google.rpc.Status`` (ErrorInfo included) becomes
the JSON body, sent with the HTTP status of its code (the standard mapping of google.rpc.Code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from quantledger.errors import QuantledgerError
from quantledger.grpc_api.converters import status_of
from quantledger.jobs.model import JobError

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# google.rpc.Code -> HTTP status (googleapis google/rpc/code.proto)
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
# reasons whose HTTP form is more precise than their code's
HTTP_STATUS_BY_REASON = {"REQUEST_TOO_LARGE": 413}


class CallAborted(Exception):
    """A servicer (or the authentication) ended the call with this status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @classmethod
    def of(cls, exc: QuantledgerError) -> CallAborted:
        return cls(status_of(JobError.of(exc)))

    @property
    def reason(self) -> str:
        return reason_of(self.status)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_REASON.get(self.reason, HTTP_STATUS.get(self.status.code, 500))

    def body(self) -> dict[str, Any]:
        """The google.rpc.Status in the proto JSON mapping (details as ``@type``-tagged Any)."""
        return json_format.MessageToDict(self.status, preserving_proto_field_name=True)


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def internal_error(message: str = "internal error") -> CallAborted:
    return CallAborted(status_pb2.Status(code=code_pb2.INTERNAL, message=message))


class HttpContext:
    """What servicers and authenticators ask of a ``grpc.aio.ServicerContext``, for one HTTP request."""

    def __init__(self, peer: str, metadata: Sequence[tuple[str, str]]) -> None:
        self._peer = peer
        self._metadata = tuple(metadata)

    def peer(self) -> str:
        """The client in gRPC's form (``ipv4:127.0.0.1:5000``), so the attempt limiter buckets alike."""
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        """No TLS identity: client certificates authenticate gRPC calls only (docs/SECURITY.md)."""
        return {}

    def time_remaining(self) -> float | None:
        return None  # HTTP carries no deadline; the server's own bounds apply

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        details = dict(status.trailing_metadata or ()).get(STATUS_DETAILS_KEY)
        if isinstance(details, bytes):
            raise CallAborted(status_pb2.Status.FromString(details))
        raise CallAborted(status_pb2.Status(code=status.code.value[0], message=status.details or ""))

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise CallAborted(status_pb2.Status(code=code.value[0], message=details))

    def set_code(self, code: grpc.StatusCode) -> None:  # servicers here do not use these; kept harmless
        pass

    def set_details(self, details: str) -> None:
        pass


def grpc_peer(client: tuple[str, int] | None) -> str:
    """A Starlette client address as a gRPC peer string."""
    if client is None:
        return "unknown"
    host, port = client
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
