"""Authentication of every call: who a call runs as, set before the servicer runs.

``AuthenticationInterceptor`` (a ``grpc.aio.ServerInterceptor``) wraps every method handler, unary and
streaming, except health (``grpc.health.v1``) and reflection, which stay open. Inside the handler's own
task it asks each ``Authenticator`` in turn; the first to return a ``Principal`` wins and
``set_principal`` makes it ``current_principal()`` for the servicer. A call none of them recognises is
UNAUTHENTICATED / TOKEN_INVALID; an authenticator that refuses a credential raises the error to send
(TOKEN_INVALID, TOKEN_EXPIRED, TOO_MANY_ATTEMPTS). Every refusal is written to the audit log.

Two authenticators exist: ``TokenAuthenticator`` (``--auth tokens``) and ``CertificateAuthenticator``
(a server with ``--tls-client-ca``: the verified client certificate is the principal); with both, a
call's token wins and a call without one runs as its certificate. The interface::

    class Authenticator(Protocol):
        async def authenticate(
            self, metadata: Sequence[tuple[str, str | bytes]], context: grpc.aio.ServicerContext
        ) -> Principal | None: ...

``metadata`` is the call's invocation metadata (keys lower-case); ``context`` gives the peer
(``context.peer()``) and its TLS identity (``context.auth_context()``). Return the principal, None when
the call carries no credential of this kind, or raise a ``QuantledgerError`` for one that is refused.

``TokenAuthenticator`` reads ``authorization: Bearer <token>``. Failed attempts are limited
(``security/attempts.py``, ``Settings.auth_failures_per_minute`` per bucket): an attempt that needs the
hash (a real token's id with a secret not verified before) takes one from the bucket of its peer host
and token id first; one that fails without a hash (no token, a malformed one, an unknown id) is charged
to the bucket of its peer host. An empty bucket is RESOURCE_EXHAUSTED / TOO_MANY_ATTEMPTS without
hashing. So guessing one token's secret from one address is slow, and another client's failures from
that address (clients behind one NAT, a misconfigured neighbour) never lock out a valid token.
Concurrent first calls with one token share one check (one hash, one attempt). A secret is compared in
constant time: ``hmac.compare_digest`` on the scrypt hash (or on the SHA-256 of a secret already
verified once), in ``security/tokens.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import grpc

from quantledger.config import Settings
from quantledger.errors import AuthenticationFailed, QuantledgerError, TooManyAttempts
from quantledger.grpc_api.auth import set_principal
from quantledger.grpc_api.errors import abort_with
from quantledger.grpc_api.tls import principal_from_peer
from quantledger.security.attempts import MAX_PEERS, AttemptLimiter
from quantledger.security.audit import AuditLog
from quantledger.security.principal import Principal
from quantledger.security.tokens import INVALID_MESSAGE, TokenRecord, TokenStore, TokenVerifier, token_id

log = logging.getLogger(__name__)
# methods every client may call without credentials: health and server reflection
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
TOO_MANY_MESSAGE = "too many failed authentications from this address: wait a minute"
SUPPRESSED_LOG_SECONDS = 60.0  # over the attempt limit, a peer's refusals are written once a minute
Metadata = Sequence[tuple[str, str | bytes]]


class Authenticator(Protocol):
    """Turns a call's credentials into a Principal (see the module docstring)."""

    async def authenticate(self, metadata: Metadata, context: grpc.aio.ServicerContext) -> Principal | None: ...


def peer_host(peer: str) -> str:
    """The host of a grpc peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:/path``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


def hashed_attempts_key(peer: str, token: str) -> str:
    """The attempt bucket of a check that needs the hash: the peer host and the token's id."""
    return f"{peer} {token_id(token)}"


def bearer_token(metadata: Metadata) -> str | None:
    """The token of an ``authorization: Bearer …`` entry, if any."""
    for key, value in metadata:
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenAuthenticator:
    """API tokens from the data dir's token store, re-read whenever the file changes."""

    def __init__(self, store: TokenStore, limiter: AttemptLimiter) -> None:
        self._verifier = TokenVerifier(store)
        self._limiter = limiter
        # checks under way, by token: concurrent first calls with one token share one hash and one attempt
        self._checking: dict[str, asyncio.Future[TokenRecord]] = {}

    async def _verify_once(self, peer: str, token: str) -> TokenRecord:
        key = hashlib.sha256(token.encode()).hexdigest()
        shared = self._checking.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        hashed = hashed_attempts_key(peer, token)
        if not self._limiter.take(hashed):
            raise TooManyAttempts(TOO_MANY_MESSAGE)
        check = asyncio.ensure_future(asyncio.to_thread(self._verifier.verify, token))
        self._checking[key] = check
        check.add_done_callback(lambda _: self._checking.pop(key, None))
        record = await asyncio.shield(check)
        self._limiter.give_back(hashed)
        return record

    async def authenticate(self, metadata: Metadata, context: grpc.aio.ServicerContext) -> Principal | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        peer = peer_host(context.peer())
        taken = False
        try:
            record = self._verifier.check_known(token)  # one stat and one SHA-256 for a token seen before
            if record is None:
                # the id is a real token's: the hash is limited per (peer, token id), so one address's
                # failures with other or malformed tokens never lock out a valid token from that address
                taken = True
                record = await self._verify_once(peer, token)  # raises when refused
        except AuthenticationFailed:
            # refused before any hash (malformed, unknown id; revoked or expired after a remembered match):
            # charged to the peer; refused by the hash: charged to (peer, id) already
            if not taken and not self._limiter.take(peer):
                raise TooManyAttempts(TOO_MANY_MESSAGE) from None
            raise
        now = time.time()
        if self._verifier.stamp_due(record, now):
            try:
                await asyncio.to_thread(self._verifier.stamp, record, now)
            except OSError as exc:  # a read-only store still authenticates
                log.warning("cannot record the last use of token %s: %s", record.id, exc)
        return record.principal()


class CertificateAuthenticator:
    """The verified client certificate of a mutual-TLS server (``tls.principal_from_peer``): its name is
    the principal, an admin when listed in ``--tls-admin``."""

    def __init__(self, admins: Collection[str] = ()) -> None:
        self._admins = frozenset(admins)

    async def authenticate(self, metadata: Metadata, context: grpc.aio.ServicerContext) -> Principal | None:
        return principal_from_peer(context, self._admins)


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets the principal of every call but health and reflection, or refuses the call (see module)."""

    def __init__(self, authenticators: Sequence[Authenticator], audit: AuditLog, limiter: AttemptLimiter) -> None:
        self._authenticators = tuple(authenticators)
        self._audit = audit
        self._limiter = limiter
        self._suppressed: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (last written, count)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        return self._wrap(handler, details.method)

    async def principal_for(self, context: grpc.aio.ServicerContext, method: str) -> Principal:
        """The principal of a call, or the QuantledgerError refusing it (written to the audit log first).
        The HTTP surface calls this too, with a context of its own (``peer()``, ``invocation_metadata()``)."""
        metadata = tuple(context.invocation_metadata() or ())
        try:
            for authenticator in self._authenticators:
                principal = await authenticator.authenticate(metadata, context)
                if principal is not None:
                    return principal
            if not self._limiter.take(peer_host(context.peer())):
                raise TooManyAttempts(TOO_MANY_MESSAGE)
            raise AuthenticationFailed(INVALID_MESSAGE)
        except QuantledgerError as exc:
            self._refused(context, method, metadata, exc)
            raise

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str) -> None:
        try:
            set_principal(await self.principal_for(context, method))
        except QuantledgerError as exc:
            await abort_with(context, exc)

    def _refused(
        self, context: grpc.aio.ServicerContext, method: str, metadata: Metadata, exc: QuantledgerError
    ) -> None:
        peer = context.peer()
        fields: dict[str, Any] = {"peer": peer, "method": method, "reason": exc.reason}
        token = bearer_token(metadata)
        if token is not None:
            fields["token_id"] = token_id(token)
        if isinstance(exc, TooManyAttempts):
            now = time.monotonic()
            host = peer_host(peer)
            last, count = self._suppressed.get(host, (float("-inf"), 0))
            if now - last < SUPPRESSED_LOG_SECONDS:
                self._suppressed[host] = (last, count + 1)
                return
            self._suppressed[host] = (now, 0)
            self._suppressed.move_to_end(host)
            while len(self._suppressed) > MAX_PEERS:
                self._suppressed.popitem(last=False)
            fields["suppressed"] = count
        log.info("refused %s from %s: %s", method, peer, exc.reason)
        try:
            self._audit.record("authentication_refused", "", **fields)
        except OSError as exc_write:
            log.error("cannot write the audit log %s: %s", self._audit.path, exc_write)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        authenticate = self._authenticate

        def guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    await authenticate(context, method)
                    async for item in behavior(request, context):
                        yield item

                return stream

            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await authenticate(context, method)
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

            return call

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attribute, make in kinds:
            behavior = getattr(handler, attribute)
            if behavior is not None:
                return make(
                    guard(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


def interceptors_for(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors: none without authentication (every call is LOCAL); else one that asks
    the API token (``auth = "tokens"``) and then, on a mutual-TLS server, the client certificate."""
    limiter = AttemptLimiter(settings.auth_failures_per_minute)
    authenticators: list[Authenticator] = []
    if settings.auth == "tokens":
        authenticators.append(TokenAuthenticator(TokenStore(settings.tokens_file), limiter))
    if settings.tls_client_ca:
        authenticators.append(CertificateAuthenticator(settings.tls_admins))
    if not authenticators:
        return []
    return [AuthenticationInterceptor(authenticators, AuditLog(settings.audit_log), limiter)]
