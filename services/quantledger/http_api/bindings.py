"""The HTTP routes of the API, read from the protos' ``google.api.http`` annotations (AIP-127).

Nothing here names a route: each RPC's ``HttpRule`` (and its ``additional_bindings``) is read from the
generated descriptors at start-up, so the HTTP surface, its OpenAPI document and the protos cannot
drift. A path template such as ``/api/v1/quantize/{name=jobs/*}:cancel`` becomes a Starlette path
``/api/v1/quantize/jobs/{job:segment}:cancel`` (each ``*`` named after the collection it follows); the
matched segments are put back together into the request field (``name = "jobs/<id>"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from starlette.convertors import Convertor, register_url_convertor

from quantledger.v1 import quantize_service_pb2, recommend_service_pb2, registry_service_pb2

API_FILES: tuple[FileDescriptor, ...] = (
    quantize_service_pb2.DESCRIPTOR,
    recommend_service_pb2.DESCRIPTOR,
    registry_service_pb2.DESCRIPTOR,
)
VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")


class SegmentConvertor(Convertor[str]):
    """One path segment up to a ``/`` or the ``:`` of a custom verb (``jobs/{id}:cancel``)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())


@dataclass(frozen=True)
class PathVariable:
    """A request field bound in the path: ``field`` is filled from ``pattern`` with the matched segments."""

    field: str
    pattern: str  # "jobs/{}" for {name=jobs/*}; "{}" for {file_sha256}
    params: tuple[str, ...]  # the Starlette path parameters, in order

    @property
    def braced(self) -> tuple[str, ...]:
        return tuple(f"{{{p}}}" for p in self.params)

    def value(self, matched: dict[str, str]) -> str:
        return self.pattern.format(*(matched[p] for p in self.params))


@dataclass(frozen=True)
class Binding:
    """One HTTP route of one RPC."""

    service: str  # full name, "quantledger.v1.QuantizeService"
    method: MethodDescriptor
    verb: str  # upper case
    template: str  # as written in the proto
    body: str  # "", "*" or a top-level field name
    path: str  # the Starlette path
    variables: tuple[PathVariable, ...]

    @property
    def grpc_method(self) -> str:
        """The gRPC method path, ``/quantledger.v1.QuantizeService/GetQuantizeJob`` (what the audit log names)."""
        return f"/{self.service}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it (``{job}``, without the convertor)."""
        return self.path.replace(":segment}", "}")


def _param_name(field: str, collection: str, taken: list[str]) -> str:
    """The path parameter of one ``*``: the collection it follows, singular (``jobs/*``: ``job``), else the
    field (``{file_sha256}``); ``_2``, ``_3`` … should a name repeat."""
    base = collection[:-1] if collection.endswith("s") and len(collection) > 1 else collection
    base = (base or field).replace(".", "_").replace("-", "_")
    name, count = base, 1
    while name in taken:
        count += 1
        name = f"{base}_{count}"
    return name


def compile_template(template: str) -> tuple[str, tuple[PathVariable, ...]]:
    """A path template to a Starlette path and the variables it binds."""
    variables: list[PathVariable] = []
    pieces: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(template):
        pieces.append(template[position : match.start()])
        field, sub = match.group(1), match.group(2) or "*"
        params: list[str] = []
        parts: list[str] = []
        pattern: list[str] = []
        for segment in sub.split("/"):
            if segment == "*":
                param = _param_name(field, parts[-1] if parts else "", params)
                params.append(param)
                parts.append(f"{{{param}:segment}}")
                pattern.append("{}")
            elif "*" in segment or "{" in segment:
                raise ValueError(f"unsupported path template {template!r}")
            else:
                parts.append(segment)
                pattern.append(segment)
        pieces.append("/".join(parts))
        variables.append(PathVariable(field, "/".join(pattern), tuple(params)))
        position = match.end()
    pieces.append(template[position:])
    return "".join(pieces), tuple(variables)


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    for extra in rule.additional_bindings:
        yield from _rules(extra)


def bindings(files: tuple[FileDescriptor, ...] = API_FILES) -> list[Binding]:
    """Every route of every RPC, custom verbs (``…:cancel``) first so a plain ``{id}`` cannot take them."""
    found: list[Binding] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    raise ValueError(f"{method.full_name} has no google.api.http annotation")
                for rule in _rules(options.Extensions[annotations_pb2.http]):
                    verb = rule.WhichOneof("pattern")
                    if verb not in VERBS:
                        raise ValueError(f"{method.full_name}: unsupported http pattern {verb}")
                    template = getattr(rule, verb)
                    path, variables = compile_template(template)
                    found.append(Binding(service.full_name, method, verb.upper(), template, rule.body, path, variables))
    found.sort(key=lambda b: ":" not in b.template.rsplit("/", 1)[-1])
    return found
