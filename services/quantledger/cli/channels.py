"""Every gRPC channel the CLI opens, and what a failure to reach the server means.

:class:`ClientTransport` is how to reach ``--server``: plaintext (the loopback default), or TLS when a
CA to verify the server is given (``--tls-ca`` / ``$QUANTLEDGER_TLS_CA``) or a client certificate
(``--tls-cert``/``--tls-key``, ``$QUANTLEDGER_TLS_CLIENT_CERT``/``$QUANTLEDGER_TLS_CLIENT_KEY``; the
server is then verified against the system's roots unless a CA is given). ``--tls-server-name`` checks
the server's certificate for another name than the host in ``--server``. ``--insecure`` forces
plaintext whatever the environment says. Flags win over the environment.

:func:`unavailable_message` turns gRPC's UNAVAILABLE details into what to do next, TLS handshake
failures included ("TLS handshake failed: CERTIFICATE_VERIFY_FAILED …").

The API token comes from ``--token-file PATH`` (first line of the file) or else ``$QUANTLEDGER_TOKEN``;
every channel sends it as ``authorization: Bearer …`` metadata, and the CLI never prints, logs or
stores it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from quantledger.errors import CertificateInvalid, InvalidArgument, quote_client
from quantledger.security.certificates import read_pem


def add_transport_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The client's transport flags, before the command (``top``) or after it; after wins."""
    unset = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--tls-ca", default=unset, metavar="FILE", help="verify the server with this CA (default $QUANTLEDGER_TLS_CA)"
    )
    parser.add_argument(
        "--tls-cert",
        default=unset,
        metavar="FILE",
        help="client certificate for mutual TLS (default $QUANTLEDGER_TLS_CLIENT_CERT); "
        "for up/serve: the server's certificate",
    )
    parser.add_argument(
        "--tls-key",
        default=unset,
        metavar="FILE",
        help="key of --tls-cert (default $QUANTLEDGER_TLS_CLIENT_KEY); for up/serve: the server's key",
    )
    parser.add_argument(
        "--tls-server-name",
        default=unset,
        metavar="NAME",
        help="name the server's certificate must carry, when not the host of --server",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="plaintext, even when $QUANTLEDGER_TLS_CA is set",
    )


@dataclass(frozen=True)
class ClientTransport:
    """How the CLI reaches a server."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""
    insecure: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientTransport:
        def pick(flag: str, variable: str) -> str:
            value = getattr(args, flag, None)
            return str(value) if value is not None else os.environ.get(variable, "").strip()

        return cls(
            ca=pick("tls_ca", "QUANTLEDGER_TLS_CA"),
            cert=pick("tls_cert", "QUANTLEDGER_TLS_CLIENT_CERT"),
            key=pick("tls_key", "QUANTLEDGER_TLS_CLIENT_KEY"),
            server_name=pick("tls_server_name", "QUANTLEDGER_TLS_SERVER_NAME"),
            insecure=bool(getattr(args, "insecure", False)),
        )

    @property
    def tls(self) -> bool:
        return not self.insecure and bool(self.ca or self.cert or self.key)

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise CertificateInvalid("a client certificate needs both --tls-cert FILE and --tls-key FILE")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem("--tls-ca", self.ca) if self.ca else None,
            private_key=read_pem("--tls-key", self.key) if self.key else None,
            certificate_chain=read_pem("--tls-cert", self.cert) if self.cert else None,
        )

    def open(self, address: str) -> grpc.Channel:
        """A channel to ``address`` (HOST:PORT) over this transport."""
        if not self.tls:
            return grpc.insecure_channel(address)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, self.credentials(), options=options)


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


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """The channel to ``--server`` with the transport the flags and environment ask for, sending the
    API token (if any) on every call."""
    channel = ClientTransport.from_args(args).open(args.server)
    token = client_token(args)
    return channel if token is None else grpc.intercept_channel(channel, BearerToken(token))


_SSL_ERROR = re.compile(r"OPENSSL_internal:(?P<code>[A-Z0-9_]+)(?::\s*(?P<text>[^:]+))?")
_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not signed by the CA of --tls-ca ($QUANTLEDGER_TLS_CA)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS: leave out --tls-ca/--tls-cert or pass --insecure",
    "CERTIFICATE_REQUIRED": "the server requires a client certificate: pass --tls-cert FILE --tls-key FILE",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA that signed --tls-cert",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate (--tls-cert)",
}


def unavailable_message(details: str, transport: ClientTransport) -> str:
    """What to tell a user whose call ended UNAVAILABLE with gRPC's ``details``."""
    lowered = details.lower()
    if "handshake failed" in lowered:
        match = _SSL_ERROR.search(details)
        if match is not None:
            reason = match["code"] + (f" ({match['text'].strip()})" if match["text"] else "")
            hint = _HINTS.get(match["code"], "check --tls-ca, --tls-cert and --tls-key")
        else:
            reason, hint = details.rsplit(": ", 1)[-1], "check --tls-ca, --tls-cert and --tls-key"
        return f"TLS handshake failed: {reason}: {hint}"
    if "hostname verification" in lowered or ("peer name" in lowered and "not in peer certificate" in lowered):
        name = f"--tls-server-name {transport.server_name}" if transport.server_name else "the host of --server"
        return (
            f"TLS handshake failed: the server's certificate does not carry {name}; "
            "pass --tls-server-name NAME with a name it carries"
        )
    if "socket closed" in lowered or "connection reset" in lowered:
        if transport.tls and not transport.cert:
            return (
                "TLS handshake failed: the server closed the connection; it may require a client certificate: "
                "pass --tls-cert FILE --tls-key FILE"
            )
        if transport.tls:
            return "TLS handshake failed: the server closed the connection; it may not trust the client certificate"
        return (
            f"the server closed the connection ({details}); if it serves TLS, pass --tls-ca FILE "
            "(or set $QUANTLEDGER_TLS_CA)"
        )
    return f"no quantledger server answers: {details} (start one with `quantledger up`)"
