"""The OpenAPI 3.1 document of the HTTP/JSON API (``GET /api/openapi.json``), from the same bindings
the routes are built from: one operation per route (``operationId`` = the RPC's full name), its path
and query parameters, request body and response named by their proto message, and a schema for every
message they reach (the proto JSON mapping, proto field names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from quantledger import __version__
from quantledger.http_api.bindings import Binding

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
}
# well-known types have a JSON form of their own
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return _WELL_KNOWN[name]
        if name not in self.found:
            self.found[name] = {}  # placeholder: recursive messages end here
            properties = {field.name: self.field(field) for field in descriptor.fields}
            self.found[name] = {"type": "object", "properties": properties}
        return _ref(name)

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.field(field.message_type.fields_by_name["value"])}
        if field.message_type is not None:
            single = self.message(field.message_type)
        elif field.enum_type is not None:
            single = {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        else:
            single = dict(_SCALARS[field.type])
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single


def _query_parameters(binding: Binding) -> list[dict[str, Any]]:
    if binding.body == "*":
        return []
    taken = {v.field for v in binding.variables} | {binding.body}
    schemas = _Schemas()
    return [
        {"name": f.name, "in": "query", "schema": schemas.field(f)}
        for f in binding.method.input_type.fields
        if f.name not in taken and f.message_type is None
    ]


def _upload_operation() -> dict[str, Any]:
    """``POST /api/v1/uploads`` (app.py): not an RPC, so described here."""
    return {
        "operationId": "quantledger.http.Upload",
        "tags": ["Uploads"],
        "summary": "Upload a source or imatrix file; name the answered path in a job",
        "parameters": [{"name": "filename", "in": "query", "required": True, "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": {
            "200": {
                "description": "where the file is on the server, and its SHA-256 computed as it arrived",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string"},
                                "sha256": {"type": "string"},
                                "size_bytes": {"type": "integer"},
                            },
                        }
                    }
                },
            },
            "413": {
                "description": "REQUEST_TOO_LARGE: the file passes QUANTLEDGER_MAX_UPLOAD_BYTES (nothing is kept)",
                "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
            },
            "default": {
                "description": "google.rpc.Status with a google.rpc.ErrorInfo (reason, domain quantledger.v1)",
                "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
            },
        },
    }


def openapi_document(bindings: Sequence[Binding], uploads: bool = False) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for binding in bindings:
        method = binding.method
        parameters: list[dict[str, Any]] = [
            {
                "name": param,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": f"the {param} in {variable.field} = {variable.pattern.format(*variable.braced)}",
            }
            for variable in binding.variables
            for param in variable.params
        ]
        parameters += _query_parameters(binding)
        response = schemas.message(method.output_type)
        operation: dict[str, Any] = {
            "operationId": method.full_name,
            "tags": [binding.service.rsplit(".", 1)[-1]],
            "summary": method.name,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": f"{method.output_type.full_name}"
                    + (" per snapshot (text/event-stream, application/x-ndjson)" if binding.streaming else ""),
                    "content": {
                        ("text/event-stream" if binding.streaming else "application/json"): {"schema": response}
                    },
                },
                "default": {
                    "description": "google.rpc.Status with a google.rpc.ErrorInfo (reason, domain quantledger.v1)",
                    "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
                },
            },
        }
        if binding.body:
            if binding.body == "*":
                body = schemas.message(method.input_type)
            else:
                body = schemas.field(method.input_type.fields_by_name[binding.body])
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(binding.openapi_path, {})[binding.verb.lower()] = operation
    if uploads:
        paths["/api/v1/uploads"] = {"post": _upload_operation()}
    schemas.found["google.rpc.Status"] = {
        "type": "object",
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "quantledger HTTP/JSON API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas.found},
    }
