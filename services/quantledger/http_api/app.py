"""The Starlette application of the HTTP/JSON API, built from the protos' annotations.

Each ``Binding`` (bindings.py) becomes one route. A request becomes the RPC's request message: the
body by the rule's ``body`` (``*``: the whole message, a field name: that field) in the proto JSON
mapping, path variables into their fields, and for the rest query parameters (``?page_size=10``;
nested fields dotted, repeated ones repeated). The call runs as the principal the server's one
``AuthenticationInterceptor`` finds (same authenticators, attempt limiter and audit log as gRPC), on
the very servicer object gRPC uses. Answers are the proto JSON mapping with proto field names, as the
CLI's ``--json`` prints; errors are the google.rpc.Status JSON with its HTTP status (dispatch.py).

``POST /api/v1/uploads?filename=NAME`` takes a file as the raw body (not an RPC: gRPC clients name a
path on the server) and answers its server path, SHA-256 and size, for a job's source or imatrix.

``WatchQuantizeJob`` streams: Server-Sent Events (one ``data:`` line of JSON per snapshot) by default,
JSON lines with ``Accept: application/x-ndjson``. An error before the first snapshot is an ordinary
error answer; one after it is a last event (``event: error``) or line (``{"error": …}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from quantledger.config import Settings
from quantledger.errors import InvalidArgument, QuantledgerError, RequestTooLarge
from quantledger.grpc_api.auth import set_principal
from quantledger.grpc_api.authn import AuthenticationInterceptor
from quantledger.http_api.bindings import Binding, bindings
from quantledger.http_api.console import SecurityHeaders, console_routes
from quantledger.http_api.dispatch import CallAborted, HttpContext, grpc_peer, internal_error
from quantledger.http_api.openapi import openapi_document
from quantledger.jobs import uploads
from quantledger.security.principal import LOCAL, Principal
from registry_client.bounded_json import JsonRefused, parse_bounded_json

log = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
FORWARDED_HEADERS = ("authorization",)  # what becomes gRPC metadata (keys lower-case, as gRPC has them)
QUANTIZE_SERVICE = "quantledger.v1.QuantizeService"
UPLOAD_PATH = "/api/v1/uploads"
# an upload is authorized as creating a job is: whoever may create jobs may send their files
UPLOAD_AUTHORIZED_AS = f"/{QUANTIZE_SERVICE}/CreateQuantizeJob"


def to_json(message: Message) -> dict[str, Any]:
    """The proto JSON mapping with proto field names (what the CLI prints with --json)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _context(request: Request) -> HttpContext:
    """The gRPC-shaped context of one HTTP request: its peer and the headers that are gRPC metadata."""
    metadata = [(k, request.headers[k]) for k in FORWARDED_HEADERS if k in request.headers]
    return HttpContext(grpc_peer(request.client and (request.client.host, request.client.port)), metadata)


def error_response(error: CallAborted) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.http_status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (REQUEST_TOO_LARGE) once it passes ``limit`` bytes, before reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the request body is {declared} bytes; this server takes at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body passes {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _query_value(field: FieldDescriptor, value: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"{field.name} must be true or false", field=field.name)
        return value.lower() in ("true", "1")
    return value  # the JSON mapping parses numbers, enums and strings from strings


def _set_query(target: dict[str, Any], message: Any, dotted: str, values: list[str]) -> None:
    """Put one query parameter (``a.b=…``) into the JSON form of the request."""
    *parents, last = dotted.split(".")
    descriptor = message
    for name in parents:
        field = descriptor.fields_by_name.get(name)
        if field is None or field.message_type is None:
            raise InvalidArgument(f"unknown query parameter {dotted!r}", field=dotted)
        target = target.setdefault(name, {})
        descriptor = field.message_type
    field = descriptor.fields_by_name.get(last)
    if field is None or field.message_type is not None:
        raise InvalidArgument(f"unknown query parameter {dotted!r}", field=dotted)
    converted = [_query_value(field, v) for v in values]
    target[last] = converted if field.is_repeated else converted[-1]


def _parse(data: Any, message: Message, what: str) -> None:
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"the {what} is not valid for {message.DESCRIPTOR.name}: {exc}") from None


async def build_request(binding: Binding, request: Request, limit: int) -> Message:
    """The RPC's request message from the HTTP request (see the module docstring)."""
    descriptor = binding.method.input_type
    message = GetMessageClass(descriptor)()
    bound = {v.field for v in binding.variables}
    if binding.body:
        raw = await read_body(request, limit)
        try:  # depth bounded before parsing, like every JSON from outside (registry_client.bounded_json)
            data = parse_bounded_json(raw or b"{}", max_bytes=limit)
        except JsonRefused as exc:
            raise InvalidArgument(f"the request body is not acceptable JSON: {exc}") from None
        if binding.body == "*":
            _parse(data, message, "request body")
        else:
            _parse({binding.body: data}, message, "request body")
        bound.add(binding.body)
    if binding.body != "*":
        query: dict[str, Any] = {}
        for key in dict.fromkeys(request.query_params.keys()):
            if key.split(".")[0] in bound:
                raise InvalidArgument(f"{key!r} is given in the path or body already", field=key)
            _set_query(query, descriptor, key, request.query_params.getlist(key))
        if query:
            partial = GetMessageClass(descriptor)()
            _parse(query, partial, "query")
            message.MergeFrom(partial)
    for variable in binding.variables:
        setattr(message, variable.field, variable.value(request.path_params))  # top-level string fields
    return message


class HttpApi:
    """The routes of the hosted services over the servicer objects (``servicers`` by service full name),
    the upload route when QuantizeService is one of them, and the web console (console.py)."""

    def __init__(
        self,
        servicers: Mapping[str, Any],
        authentication: AuthenticationInterceptor | None,
        settings: Settings,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._servicers = dict(servicers)
        self._authentication = authentication
        self._settings = settings
        self._limit = settings.max_message_bytes
        self._healthy = healthy
        self.bindings = [b for b in bindings() if b.service in self._servicers]
        self.uploads = QUANTIZE_SERVICE in self._servicers

    def app(self) -> Starlette:
        routes: list[BaseRoute] = [
            Route("/api/v1/health", self._health, methods=["GET"]),
            Route("/api/openapi.json", self._openapi, methods=["GET"]),
            *(Route(b.path, self._endpoint(b), methods=[b.verb], name=b.method.full_name) for b in self.bindings),
        ]
        if self.uploads:
            routes.append(Route(UPLOAD_PATH, self._upload, methods=["POST"], name="upload"))
        routes += console_routes()
        return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])

    async def _upload(self, request: Request) -> Response:
        """``POST /api/v1/uploads?filename=NAME`` with the file as the body (jobs/uploads.py)."""
        context = _context(request)
        try:
            principal = await self._principal(context, UPLOAD_AUTHORIZED_AS)
            declared = request.headers.get("content-length", "")
            upload = await uploads.receive(
                self._settings,
                principal.name,
                request.query_params.get("filename", ""),
                request.stream(),
                int(declared) if declared.isdigit() else None,
            )
        except QuantledgerError as exc:
            return error_response(CallAborted.of(exc))
        except CallAborted as aborted:
            return error_response(aborted)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the partial file is gone (uploads.receive)
        except Exception:
            log.exception("an upload failed")
            return error_response(internal_error())
        log.info("upload %s (%d bytes) by %s", upload.path, upload.size_bytes, principal.name)
        return JSONResponse({"path": str(upload.path), "sha256": upload.sha256, "size_bytes": upload.size_bytes})

    async def _health(self, request: Request) -> Response:
        serving = self._healthy()
        return JSONResponse({"status": "SERVING" if serving else "NOT_SERVING"}, status_code=200 if serving else 503)

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.bindings, uploads=self.uploads))

    async def _principal(self, context: HttpContext, grpc_method: str) -> Principal:
        if self._authentication is None:
            return LOCAL  # no authentication configured: every call is the local admin, as over gRPC
        return await self._authentication.principal_for(context, grpc_method)

    def _endpoint(self, binding: Binding) -> Callable[[Request], Any]:
        method = getattr(self._servicers[binding.service], binding.method.name)

        async def endpoint(request: Request) -> Response:
            context = _context(request)
            try:
                principal = await self._principal(context, binding.grpc_method)
                set_principal(principal)
                message = await build_request(binding, request, self._limit)
                if binding.streaming:
                    return await self._stream(method, message, context, principal, request)
                return JSONResponse(to_json(await method(message, context)))
            except QuantledgerError as exc:
                return error_response(CallAborted.of(exc))
            except CallAborted as aborted:
                return error_response(aborted)
            except Exception:
                log.exception("%s over HTTP failed", binding.grpc_method)
                return error_response(internal_error())

        return endpoint

    async def _stream(
        self, method: Any, message: Message, context: HttpContext, principal: Principal, request: Request
    ) -> Response:
        snapshots: AsyncIterator[Message] = method(message, context)
        first = await anext(snapshots)  # an error before the first snapshot is an ordinary error answer
        ndjson = NDJSON in request.headers.get("accept", "")

        def frame(body: dict[str, Any], event: str = "") -> str:
            text = json.dumps(body, separators=(",", ":"))
            if ndjson:
                return text + "\n"
            return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"

        async def events() -> AsyncIterator[str]:
            set_principal(principal)
            try:
                yield frame(to_json(first))
                async for snapshot in snapshots:
                    yield frame(to_json(snapshot))
            except CallAborted as aborted:
                yield frame({"error": aborted.body()} if ndjson else aborted.body(), "error")
            except Exception:  # the stream's last word: never a traceback to the client
                yield frame({"error": internal_error().body()} if ndjson else internal_error().body(), "error")
            finally:
                await snapshots.aclose()  # type: ignore[attr-defined]

        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type=NDJSON if ndjson else SSE, headers=headers)
