"""``quantledger up`` and ``quantledger serve quantize|registry|chain``.

``up`` runs everything on one machine: the embedded chain as a child process (it dies with ``up``),
the registry deployed on it once (recorded in the data dir's address book), then one gRPC server
hosting every service. With ``--chain-url`` (or ``QUANTLEDGER_CHAIN_URL``) ``up`` uses that chain
instead and starts none.

``up`` supervises its chain (``quantledger.registry.chain_supervisor``): a chain that dies is restarted with
backoff, and meanwhile gRPC health of ``quantledger.v1.RegistryService`` is NOT_SERVING. The overall
health (service ``""``) and QuantizeService stay SERVING: quantizing needs no chain, and outputs made
meanwhile stay PENDING until the engine's retry registers them on the restarted chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from quantledger.config import Settings
from quantledger.security.listen_policy import check_chain_listen, check_grpc_listen

# registry_client (web3, eth-account) is imported inside the functions that use a chain, so a server
# without one does not carry it

log = logging.getLogger(__name__)
CHAIN_START_SECONDS = 120.0
PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    with contextlib.suppress(OSError):  # not Linux: up still stops the chain on its way out
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_chain(settings: Settings, *, as_json: bool) -> int:
    """The embedded chain in the foreground; its admin key (created on first use) is funded at genesis.
    It has no TLS and no authentication, so it binds loopback only unless ``insecure_listen``."""
    from registry_client.chain import serve_chain as run_chain
    from registry_client.keys import load_or_create_key

    warning = check_chain_listen(settings)
    if warning:
        log.warning("%s", warning)
    admin = load_or_create_key(settings.admin_key_path)

    def announce(url: str) -> None:
        if as_json:
            print(json.dumps({"serving": ["chain"], "url": url, "admin": admin.address}), flush=True)
        else:
            print(f"quantledger chain serving JSON-RPC on {url} (admin {admin.address})", flush=True)

    run_chain(settings.chain_dir, settings.host, settings.chain_port, [admin.address], on_ready=announce)
    return 0


def refuse_a_busy_chain_port(settings: Settings) -> None:
    """PORT_IN_USE when something already listens on the chain port: whatever answers there is not the
    chain ``up`` would start (another home's chain, say), and writing to it would mix two registries."""
    from quantledger.errors import PortInUse

    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # as the chain's own server binds: connections of a chain that just died (TIME_WAIT) do not make the
    # port busy, a listener does
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", settings.chain_port))
    except OSError as exc:
        raise PortInUse(
            f"cannot start the embedded chain on 127.0.0.1:{settings.chain_port}: the port is in use "
            f"({exc.strerror}); pick another with --chain-port or use that chain with --chain-url",
            port=settings.chain_port,
        ) from None
    finally:
        probe.close()


def start_embedded_chain(settings: Settings) -> subprocess.Popen[bytes]:
    """Start ``serve chain`` as a child and wait until it answers JSON-RPC."""
    from quantledger.registry.chain_supervisor import ChainStartFailed

    refuse_a_busy_chain_port(settings)
    try:
        return launch_embedded_chain(settings)
    except ChainStartFailed as exc:
        raise SystemExit(str(exc)) from None


def launch_embedded_chain(settings: Settings, cancel: threading.Event | None = None) -> subprocess.Popen[bytes]:
    """Start ``serve chain`` as a child and wait until it answers JSON-RPC; ``ChainStartFailed`` if it exits,
    does not answer within CHAIN_START_SECONDS, or ``cancel`` is set meanwhile (the child is then killed)."""
    from quantledger.registry.chain_supervisor import ChainStartFailed
    from registry_client.client import RegistryClient
    from registry_client.errors import RegistryUnavailable

    settings.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "chain", "--host", "127.0.0.1",
            "--chain-port", str(settings.chain_port)]  # fmt: skip
    env = {**os.environ, "QUANTLEDGER_HOME": str(settings.home)}  # the chain, its journal and key live here
    with open(settings.logs / "chain.log", "ab") as log:  # the child keeps its own descriptor of it
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_terminate_with_parent)
    deadline = time.monotonic() + CHAIN_START_SECONDS
    while True:
        try:
            RegistryClient.web3_for(settings.embedded_chain_url, timeout=2.0)
            if child.poll() is None:
                return child
        except RegistryUnavailable:
            pass
        # exited (a busy port among the reasons: then whatever answered above was not our chain), or too slow
        if child.poll() is not None or time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
            child.kill()
            child.wait()
            raise ChainStartFailed(f"the embedded chain did not start; see {settings.logs / 'chain.log'}")
        time.sleep(0.2)


def run_services(settings: Settings, services: Sequence[str], *, as_json: bool, embedded_chain: bool) -> int:
    from quantledger.grpc_api.server import REGISTRY_SERVICE_NAME, QuantledgerServer, serve
    from quantledger.registry.chain_supervisor import ChainSupervisor

    if list(services) == ["chain"]:
        return serve_chain(settings, as_json=as_json)
    check_grpc_listen(settings)  # refuse an unsafe bind before the chain starts (the server checks it again)
    settings.ensure_dirs()
    supervisor: ChainSupervisor | None = None
    announce: dict[str, str] = {}
    try:
        if embedded_chain:
            from registry_client.address_book import AddressBook
            from registry_client.client import RegistryClient
            from registry_client.keys import load_or_create_key

            account = load_or_create_key(settings.admin_key_path)
            launch_settings = settings
            supervisor = ChainSupervisor(
                lambda cancel: launch_embedded_chain(launch_settings, cancel), start_embedded_chain(settings)
            )
            supervisor.start()
            settings = dataclasses.replace(settings, chain_url=settings.embedded_chain_url)
            registry = RegistryClient.ensure_deployed(settings.chain_url, account, AddressBook.in_home(settings.home))
            announce = {"chain_url": settings.chain_url, "registry": registry.address, "attester": account.address}
        elif settings.chain_url:
            announce = {"chain_url": settings.chain_url}

        def follow_chain(server: QuantledgerServer) -> None:
            """RegistryService health follows the supervised chain (called on the server's event loop)."""
            if supervisor is None or "registry" not in services:
                return
            loop = asyncio.get_running_loop()

            def changed(running: bool) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: up is on its way out
                    asyncio.run_coroutine_threadsafe(server.set_service_health(REGISTRY_SERVICE_NAME, running), loop)

            supervisor.listen(changed)

        from quantledger.http_api.serving import http_companion

        companion = http_companion if settings.http_port else None
        asyncio.run(
            serve(settings, services, as_json=as_json, announce=announce, on_started=follow_chain, companion=companion)
        )
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0
