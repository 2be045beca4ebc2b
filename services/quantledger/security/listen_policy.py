"""Which addresses a server may listen on with the transport security it has.

Loopback (``127.0.0.0/8``, ``::1``, ``localhost``) is the zero-configuration default: only processes on
this machine reach it. Any other address (``0.0.0.0``, ``::``, a LAN address, a host name) is reachable by
others, so a gRPC server binds it only with TLS *and* authentication (API tokens, or client certificates
through ``--tls-client-ca``). The embedded chain's JSON-RPC has neither, so it binds loopback only.
``--insecure-listen`` overrides both refusals; the server then logs a warning on every start.
"""

from __future__ import annotations

import ipaddress

from quantledger.config import Settings
from quantledger.errors import InsecureListen

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name, IPv6 with or without brackets) is reachable from this machine only.

    A host name other than localhost counts as non-loopback: it may resolve to anything."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_grpc_listen(settings: Settings) -> str | None:
    """Refuse (InsecureListen) a non-loopback gRPC bind without TLS and authentication; the warning to log
    when ``insecure_listen`` allowed one, else None."""
    if is_loopback(settings.host):
        return None
    missing = []
    if not settings.tls:
        missing.append("TLS (--tls-cert FILE --tls-key FILE)")
    if settings.auth == "none" and not settings.tls_client_ca:
        missing.append("authentication (--auth tokens, or client certificates with --tls-client-ca FILE)")
    if not missing:
        return None
    what = " and ".join(missing)
    if settings.insecure_listen:
        return (
            f"INSECURE: listening on {settings.host} without {what} (--insecure-listen): anyone who reaches "
            "this port can read and change every job; put it behind a private network or add them"
        )
    raise InsecureListen(
        f"refusing to listen on {settings.host} without {what}: add them, bind loopback (--host 127.0.0.1), "
        "or pass --insecure-listen to accept the risk"
    )


def check_chain_listen(settings: Settings) -> str | None:
    """Refuse (InsecureListen) a non-loopback bind of the embedded chain, which has no TLS and no
    authentication; the warning to log when ``insecure_listen`` allowed one, else None."""
    if is_loopback(settings.host):
        return None
    if settings.insecure_listen:
        return (
            f"INSECURE: the embedded chain's JSON-RPC listens on {settings.host} (--insecure-listen): it has no "
            "TLS and no authentication; anyone who reaches it can send transactions"
        )
    raise InsecureListen(
        f"refusing to serve the embedded chain on {settings.host}: its JSON-RPC has no TLS and no authentication, "
        "so it binds loopback only (--host 127.0.0.1); put a TLS proxy in front of it, or pass --insecure-listen "
        "to accept the risk"
    )
