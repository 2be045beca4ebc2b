"""TLS for the gRPC server: reloadable credentials and the principal of a client certificate.

:class:`ServerTls` turns the operator's files (``security/certificates.py``) into
``grpc.dynamic_ssl_server_credentials``. gRPC asks its fetch callback for new material on every new
connection; the callback hands over what a changed file or a SIGHUP loaded, so new connections get
the new certificate while established connections (and their open streams) keep the one they
negotiated.

:func:`principal_from_peer` is the identity of a verified client certificate (mutual TLS);
``authn.CertificateAuthenticator`` makes it each call's principal on a server that requires client
certificates.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Collection
from typing import Any

import grpc

from quantledger.config import Settings
from quantledger.errors import CertificateInvalid
from quantledger.security.certificates import CertificateFiles, CertificateWatch, KeyMaterial
from quantledger.security.principal import Principal

log = logging.getLogger(__name__)


class ServerTls:
    """The server side of TLS: credentials for ``add_secure_port`` that follow the files."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.tls_cert and settings.tls_key):
            given = " (--tls-client-ca is TLS too)" if settings.tls_client_ca else ""
            raise CertificateInvalid(f"TLS needs both --tls-cert FILE and --tls-key FILE{given}")
        self.files = CertificateFiles(
            pathlib.Path(settings.tls_cert),
            pathlib.Path(settings.tls_key),
            pathlib.Path(settings.tls_client_ca) if settings.tls_client_ca else None,
        )
        self.watch = CertificateWatch(self.files)
        self.mutual = self.files.client_ca is not None

    def describe(self) -> str:
        """For the start-up announcement."""
        return "on (client certificates required)" if self.mutual else "on"

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self.watch.current),
            self._fetch,
            require_client_authentication=self.mutual,
        )

    def reload(self, why: str) -> None:
        """Read the files now (SIGHUP); the next connection gets what they hold if it passes the checks."""
        self.watch.reload(why)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback, on a gRPC thread at each new connection: new material, or None to keep the current."""
        try:
            fresh = self.watch.take_fresh()
        except Exception:  # never let a reload fault break a handshake: the current material stays
            log.exception("TLS reload check failed; keeping the current certificate")
            return None
        return _configuration(fresh) if fresh is not None else None


def _configuration(material: KeyMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
    )


def principal_from_peer(
    context: grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext, admins: Collection[str] = ()
) -> Principal | None:
    """The principal of the client certificate the peer of this call presented, or None.

    Contract: the name is the certificate's subject common name (CN), or its first subject
    alternative name when it has no CN; ``admin`` when that name is in ``admins`` (``--tls-admin``);
    ``via = "mtls"``. None when the call came without a client certificate (plaintext, or TLS without
    ``--tls-client-ca``) or the name is not printable UTF-8. gRPC only reports a client certificate
    after verifying it against the client CA on a server that requires one (``ServerTls`` with a
    client CA), so on such a server the identity is the CA's word.
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    candidates = [*auth.get("x509_common_name", []), *auth.get("x509_subject_alternative_name", [])]
    if not candidates:
        return None
    try:
        name = candidates[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not name or not name.isprintable():
        return None
    return Principal(name=name, admin=name in admins, via="mtls")
