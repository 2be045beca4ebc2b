"""One grpc.aio server hosting the quantledger services, health and reflection.

SIGTERM or SIGINT shut it down gracefully: health turns NOT_SERVING, running jobs are stopped
(worker killed, partial files removed; they resume at the next start), then the server stops with a
grace period for calls in flight.

Health: every hosted service and the overall ``""`` turn SERVING once started. A dependency that goes
away can turn one service NOT_SERVING (``set_service_health``): ``up`` does so for
``quantledger.v1.RegistryService`` while its embedded chain is down and being restarted; ``""`` stays
SERVING then, since quantizing (QuantizeService) needs no chain.

Transport (docs/SECURITY.md "Transport"): with ``tls_cert``/``tls_key`` the port serves TLS only, and
with ``tls_client_ca`` it requires client certificates, each call running as its certificate's
principal. SIGHUP, or a change of the files, reloads the certificates for new connections. A
non-loopback address without TLS and authentication is refused (``security/listen_policy.py``).

Beside gRPC, ``serve`` can start a ``Companion`` on the same loop (the CLI passes the HTTP/JSON API,
``http_api/serving.py``); it reaches the hosted servicer objects (``servicers``) and the one
authentication (``authentication``) through the server, so both surfaces share every rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quantledger.config import Settings
from quantledger.errors import PortInUse
from quantledger.grpc_api.authn import AuthenticationInterceptor, interceptors_for
from quantledger.grpc_api.quantize_servicer import QuantizeServicer
from quantledger.grpc_api.registry_servicer import RegistryServicer
from quantledger.grpc_api.tls import ServerTls
from quantledger.jobs.engine import JobEngine
from quantledger.jobs.store import SqliteJobStore
from quantledger.quantize.catalogue import catalogue
from quantledger.registry.registrar import Registrar
from quantledger.registry.wiring import make_reader, make_registrar
from quantledger.security.listen_policy import check_grpc_listen
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc
from quantledger.v1 import registry_service_pb2 as registry_pb
from quantledger.v1 import registry_service_pb2_grpc as registry_pb_grpc
from registry_client.errors import RegistryError

if TYPE_CHECKING:  # the distributed backend's modules (temporalio, boto3) load only when it is chosen
    from quantledger.distributed.frontend import TemporalBackend

log = logging.getLogger(__name__)
GRACE_SECONDS = 5.0
SERVICES = ("quantize", "recommend", "registry")
AUTH_NOTES = {
    "none": " (every call runs as the local admin: keep the loopback bind)",
    "tokens": " (every call but health and reflection needs a token: quantledger tokens create NAME)",
}
REGISTRY_SERVICE_NAME = registry_pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


class Companion(Protocol):
    """Another surface served beside gRPC on the same event loop (the HTTP/JSON API): started once the
    gRPC server serves, stopped after it has stopped."""

    async def start(self) -> dict[str, str]:
        """Start serving; what the start-up announcement adds (say, ``{"http": "http://127.0.0.1:8080"}``)."""
        ...

    async def stop(self) -> None: ...


class QuantledgerServer:
    """The gRPC server and the engines behind it."""

    def __init__(self, settings: Settings, services: Sequence[str] = SERVICES) -> None:
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown services {unknown}; available: {', '.join(SERVICES)}")
        self.settings = settings
        self._services = tuple(services)
        self._listen_warning = check_grpc_listen(settings)  # InsecureListen before anything starts
        # bad or missing files (a client CA without a certificate too): CertificateInvalid now
        self.tls = ServerTls(settings) if settings.tls or settings.tls_client_ca else None
        # grpc sets SO_REUSEPORT by default: a second server on a busy port would start and the kernel
        # would split connections between the two; without it a busy port is an error
        # a request larger than max_message_bytes is RESOURCE_EXHAUSTED before any servicer runs
        interceptors = interceptors_for(settings)
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
            ],
            interceptors=interceptors,
        )
        # what the HTTP/JSON surface shares with gRPC: the one authentication (its limiter and audit log)
        # and the servicer objects themselves, by service full name
        self.authentication: AuthenticationInterceptor | None = next(
            (i for i in interceptors if isinstance(i, AuthenticationInterceptor)), None
        )
        self.servicers: dict[str, Any] = {}
        self._health = health.aio.HealthServicer()
        self._engine: JobEngine | None = None
        self._backend: TemporalBackend | None = None
        self._flows: Any = None  # the workflow worker of a temporal frontend
        self._flows_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self.port = 0

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun (health is NOT_SERVING from then on)."""
        return self._stopping

    @property
    def tls_mode(self) -> str:
        """What the start-up announcement says about TLS."""
        return self.tls.describe() if self.tls is not None else "off"

    def reload_certificates(self, why: str) -> None:
        """Read the TLS files again now (SIGHUP); new connections get what they hold if it passes the checks."""
        if self.tls is not None:
            self.tls.reload(why)

    async def start(self) -> int:
        settings = self.settings
        if self._listen_warning:
            log.warning("%s", self._listen_warning)
        settings.ensure_dirs()
        names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        if "quantize" in self._services:
            await asyncio.to_thread(catalogue)  # probe llama.cpp's types once, before the first request
            quantize = QuantizeServicer(await self._start_backend())
            pb_grpc.add_QuantizeServiceServicer_to_server(quantize, self._server)
            names.append(pb.DESCRIPTOR.services_by_name["QuantizeService"].full_name)
            self.servicers[names[-1]] = quantize
        if "recommend" in self._services:  # imported here: a quantize-only server does without it
            from quantledger.grpc_api.recommend_servicer import RecommendServicer
            from quantledger.recommend.wiring import make_recommender
            from quantledger.v1 import recommend_service_pb2 as recommend_pb
            from quantledger.v1 import recommend_service_pb2_grpc as recommend_pb_grpc

            store = self._engine.store if self._engine is not None else SqliteJobStore(str(settings.database))
            recommender = await asyncio.to_thread(make_recommender, settings, store)
            recommend = RecommendServicer(recommender)
            recommend_pb_grpc.add_RecommendServiceServicer_to_server(recommend, self._server)
            names.append(recommend_pb.DESCRIPTOR.services_by_name["RecommendService"].full_name)
            self.servicers[names[-1]] = recommend
        if "registry" in self._services:
            servicer = RegistryServicer(make_reader(settings))
            registry_pb_grpc.add_RegistryServiceServicer_to_server(servicer, self._server)
            names.append(REGISTRY_SERVICE_NAME)
            self.servicers[REGISTRY_SERVICE_NAME] = servicer
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(names, self._server)
        address = f"{settings.host}:{settings.port}"
        try:
            if self.tls is not None:
                self.port = self._server.add_secure_port(address, self.tls.credentials())
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpc raises when it cannot bind
            self.port = 0
        if self.port == 0:
            raise PortInUse(
                f"cannot listen on {address}: the port is in use (never shared) or the address is not this machine's"
            )
        await self._server.start()
        for name in [*names, ""]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def _start_backend(self) -> JobEngine | TemporalBackend:
        """The jobs' backend: the embedded engine (SQLite, local workers), or Temporal and an artifact
        store (``--backend temporal``), whose workflows this frontend also hosts."""
        settings = self.settings
        if settings.backend == "temporal":
            from quantledger.distributed.connection import connect_temporal, open_store
            from quantledger.distributed.frontend import TemporalBackend
            from quantledger.distributed.worker import workflow_worker

            client = await connect_temporal(settings)
            registrar = make_registrar(settings)  # workers register; the frontend finds (or deploys) the registry
            if registrar is not None:
                await _attach_registry(registrar)
            self._backend = TemporalBackend(settings, client, open_store(settings))
            await self._backend.start()
            self._flows = workflow_worker(client)
            self._flows_task = asyncio.create_task(self._flows.run(), name="quantledger-workflows")
            return self._backend
        registrar = make_registrar(settings)
        if registrar is not None:
            await _attach_registry(registrar)
        self._engine = JobEngine(settings, SqliteJobStore(str(settings.database)), registrar)
        await self._engine.start()
        return self._engine

    async def set_service_health(self, name: str, serving: bool) -> None:
        """Health of one hosted service (say, RegistryService while its chain is down); ignored once stopping,
        when every service is NOT_SERVING for good."""
        if self._stopping:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(name, status)
        log.info("health of %s: %s", name, "SERVING" if serving else "NOT_SERVING")

    async def stop(self) -> None:
        """Graceful shutdown (idempotent; a second call waits for the first to finish)."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("shutting down: health NOT_SERVING, stopping running jobs")
        try:
            await self._health.enter_graceful_shutdown()
            if self._engine is not None:
                await self._engine.shutdown()
            if self._flows is not None:
                await self._flows.shutdown()
            if self._backend is not None:
                await self._backend.shutdown()
            await self._server.stop(GRACE_SECONDS)
        finally:
            self._stopped.set()

    async def wait(self) -> None:
        """Return once stop() has completed."""
        await self._stopped.wait()


async def _attach_registry(registrar: Registrar) -> None:
    """Find (or deploy) the registry now, so other services can read it; a chain that is away is no failure."""
    try:
        client = await asyncio.to_thread(registrar.client)
        log.info("registering outputs on %s at %s as %s", registrar.url, client.address, registrar.attester)
    except RegistryError as exc:
        log.warning("registry not reachable yet (%s); outputs stay PENDING until it is", exc.message)


async def serve(
    settings: Settings,
    services: Sequence[str] = SERVICES,
    *,
    as_json: bool = False,
    announce: dict[str, str] | None = None,
    on_started: Callable[[QuantledgerServer], None] | None = None,
    companion: Callable[[QuantledgerServer], Companion] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; announce the address on stdout.
    ``on_started`` is called (on the event loop) once the server serves, before the announcement;
    ``companion`` makes a surface served beside gRPC (the HTTP/JSON API), started before the announcement."""
    server = QuantledgerServer(settings, services)
    port = await server.start()
    beside: Companion | None = None
    if companion is not None:
        beside = companion(server)
        try:
            announce = {**(announce or {}), **await beside.start()}
        except BaseException:
            await server.stop()
            raise
    if on_started is not None:
        on_started(server)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(server.stop()))
    handled = [signal.SIGTERM, signal.SIGINT]
    if server.tls is not None:  # SIGHUP: read the certificate files again
        reload = functools.partial(server.reload_certificates, "SIGHUP")
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(asyncio.to_thread(reload)))
        handled.append(signal.SIGHUP)
    address = f"{settings.host}:{port}"
    if as_json:
        body = {
            "serving": list(services),
            "address": address,
            "data_dir": str(settings.home),
            "tls": server.tls_mode,
            "authentication": settings.auth,
            **(announce or {}),
        }
        print(json.dumps(body), flush=True)
    else:
        extra = "".join(f", {key} {value}" for key, value in (announce or {}).items())
        print(
            f"quantledger serving {', '.join(services)} on {address} (data dir {settings.home}{extra}); "
            f"TLS: {server.tls_mode}"
        )
        print(f"authentication: {settings.auth}{AUTH_NOTES[settings.auth]}", flush=True)
    try:
        await server.wait()
    finally:
        if beside is not None:
            await beside.stop()
        for signum in handled:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
