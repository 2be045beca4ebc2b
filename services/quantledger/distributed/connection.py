"""Connecting to Temporal and the artifact store from settings, with typed errors for both.

Temporal: ``--temporal HOST:PORT`` and ``--temporal-namespace``; TLS with ``--temporal-tls-ca`` (a
private CA) and, for mutual TLS, ``--temporal-tls-cert``/``--temporal-tls-key``; Temporal Cloud's API
keys come from ``QUANTLEDGER_TEMPORAL_API_KEY`` (never a flag: flags show in ``ps``).
"""

from __future__ import annotations

import os
import pathlib
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import KeepAliveConfig, RetryConfig, TLSConfig

from quantledger.artifacts.store import ArtifactStore
from quantledger.config import Settings
from quantledger.errors import BackendUnavailable, ConfigInvalid

CONNECT_ATTEMPTS = 3


def _tls(settings: Settings) -> TLSConfig | bool:
    if not (settings.temporal_tls_ca or settings.temporal_tls_cert or settings.temporal_tls_key):
        return bool(os.environ.get("QUANTLEDGER_TEMPORAL_API_KEY"))  # an API key implies TLS
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        raise ConfigInvalid("--temporal-tls-cert and --temporal-tls-key go together", variable="--temporal-tls-cert")

    def read(path: str, flag: str) -> bytes | None:
        if not path:
            return None
        try:
            return pathlib.Path(path).read_bytes()
        except OSError as exc:
            raise ConfigInvalid(f"{flag} {path} cannot be read: {exc.strerror}", variable=flag) from None

    return TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_ca, "--temporal-tls-ca"),
        client_cert=read(settings.temporal_tls_cert, "--temporal-tls-cert"),
        client_private_key=read(settings.temporal_tls_key, "--temporal-tls-key"),
    )


async def connect_temporal(settings: Settings) -> Client:
    """A client of the configured Temporal namespace; BACKEND_UNAVAILABLE when it does not answer."""
    address = settings.temporal_address
    if not address:
        raise ConfigInvalid("the temporal backend needs --temporal HOST:PORT (or QUANTLEDGER_TEMPORAL)")
    try:
        return await Client.connect(
            address,
            namespace=settings.temporal_namespace,
            tls=_tls(settings),
            api_key=os.environ.get("QUANTLEDGER_TEMPORAL_API_KEY") or None,
            retry_config=RetryConfig(max_retries=CONNECT_ATTEMPTS),
            keep_alive_config=KeepAliveConfig(interval_millis=10_000, timeout_millis=5_000),
        )
    except RuntimeError as exc:  # the core SDK's connect failures
        raise BackendUnavailable(
            f"Temporal at {address} (namespace {settings.temporal_namespace}) did not answer: {exc}", address=address
        ) from None


def open_store(settings: Settings) -> ArtifactStore:
    """The artifact store of ``--artifacts s3://BUCKET/PREFIX`` (credentials: the standard AWS chain)."""
    if not settings.artifacts_uri:
        raise ConfigInvalid("the temporal backend needs --artifacts s3://BUCKET/PREFIX (or QUANTLEDGER_ARTIFACTS)")
    return ArtifactStore.from_uri(settings.artifacts_uri)


RPC_TIMEOUT = timedelta(seconds=10)
