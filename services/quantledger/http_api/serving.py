"""Serving the HTTP/JSON API beside gRPC: uvicorn on the server's own event loop.

``http_companion(server)`` is what ``grpc_api.server.serve`` starts once gRPC serves: a uvicorn
``Server`` running ``serve()`` as a task of the same asyncio loop, on the same host as gRPC and
``Settings.http_port`` (``--http-port``, ``QUANTLEDGER_HTTP_PORT``; 0: off). The socket is bound here,
so a busy port is PORT_IN_USE naming it (never shared: no SO_REUSEPORT), and the gRPC server's TLS
certificate and key serve HTTPS too. Signals stay with the gRPC server (uvicorn's own handlers are
not installed): its shutdown stops this one.

Why Starlette and uvicorn: an ASGI toolkit with no opinions about models (the protos are the schema;
a framework that derives schemas from Python types would be a second source of truth), streaming
responses for Server-Sent Events, and a server that runs inside an existing asyncio loop beside
grpc.aio rather than owning the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from quantledger.errors import PortInUse
from quantledger.grpc_api.server import GRACE_SECONDS, QuantledgerServer
from quantledger.http_api.app import HttpApi

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the gRPC server's handlers shut the process down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_http(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or PORT_IN_USE naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # accepted connections inherit TCP_NODELAY from the listener (Linux): without it a keep-alive
    # client's second request waits ~40 ms (Nagle's algorithm holding the answer's second write until
    # the client's delayed ACK), which cut the HTTP rate to a seventh of gRPC's (bench/http_api.py)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror}; pick another with --http-port "
            "(QUANTLEDGER_HTTP_PORT), or 0 to serve no HTTP",
            port=str(port),
        ) from None
    sock.setblocking(False)
    return sock


class HttpCompanion:
    """The HTTP/JSON API of one QuantledgerServer (grpc_api.server.Companion)."""

    def __init__(self, server: QuantledgerServer) -> None:
        settings = server.settings
        self._server = server
        self.api = HttpApi(server.servicers, server.authentication, settings, lambda: not server.stopping)
        self._socket: socket.socket | None = None
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, str]:
        settings = self._server.settings
        self._socket = bind_http(settings.host, settings.http_port)
        tls = bool(settings.tls)
        config = uvicorn.Config(
            self.api.app(),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(GRACE_SECONDS),
            ssl_certfile=settings.tls_cert if tls else None,
            ssl_keyfile=settings.tls_key if tls else None,
        )
        self._uvicorn = _EmbeddedUvicorn(config)
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._socket]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        port = self._socket.getsockname()[1]
        address = f"{'https' if tls else 'http'}://{settings.host}:{port}"
        log.info("HTTP/JSON API on %s", address)
        return {"http": address}

    async def stop(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self._socket is not None:
            self._socket.close()


def http_companion(server: QuantledgerServer) -> HttpCompanion:
    return HttpCompanion(server)
