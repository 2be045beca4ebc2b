"""The CLI's channel to a server, carrying the API token on every call when there is one.

The token comes from ``--token-file PATH`` (first line of the file) or else ``$QUANTLEDGER_TOKEN``; it is
sent as ``authorization: Bearer …`` metadata and never printed, logged or stored by the CLI.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from quantledger.errors import InvalidArgument, quote_client

TOKEN_FILE_MAX_BYTES = 4096


def client_token(args: argparse.Namespace) -> str | None:
    """The token to send: ``--token-file`` wins over ``$QUANTLEDGER_TOKEN``; None when neither is set."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, "rb") as source:
                raw = source.read(TOKEN_FILE_MAX_BYTES)
        except OSError as exc:
            raise InvalidArgument(f"--token-file {quote_client(path)}: cannot read it ({exc.strerror})") from None
        token = raw.decode("utf-8", "replace").strip().splitlines()[0].strip() if raw.strip() else ""
        if not token:
            raise InvalidArgument(f"--token-file {quote_client(path)} is empty")
        return token
    token = os.environ.get("QUANTLEDGER_TOKEN", "").strip()
    return token or None


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never the token
        return "BearerToken(…)"

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _call(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def client_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.server`` that sends the token (if any) on every call."""
    channel = grpc.insecure_channel(args.server)
    token = client_token(args)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, BearerToken(token))
