"""API tokens: made once, stored only as a salted hash, checked with one hash per attempt.

A token reads ``qlt_<id>_<secret>``: ``id`` is 16 hex digits (8 random bytes), the key of its record,
so finding the record costs one dictionary lookup and each attempt at most one hash; ``secret`` is 32
random bytes (``secrets.token_urlsafe``). The id is not secret (``tokens list`` shows it, the audit log
records it); the secret is shown once, by ``tokens create``, and never stored.

The store (``<data dir>/keys/api-tokens.json``, mode 0600) keeps per token: name, admin, created,
expires, revoked, last used, the per-principal settings (allowed roots, output dirs, quotas) and
``scrypt(secret, salt)`` with a 16-byte random salt. Why scrypt (``hashlib.scrypt``) rather than
argon2id: it is in the standard library (no new dependency, no native wheel to trust) and memory-hard
like argon2id; the secret is 256 random bits, so the hash guards a stolen store file, not a weak
password, and any memory-hard KDF of this strength does that. Parameters (n=2^14, r=8, p=1: 16 MiB,
some tens of milliseconds) are stored with each record, so they can be raised later.

Checking is constant-time where it matters: the computed hash is compared with
``hmac.compare_digest``, and so is the SHA-256 of a secret already verified once (``TokenVerifier``
keeps, per token id, the SHA-256 of the secret it last verified, so a client's later calls cost one
SHA-256 instead of one scrypt; the memory holds no secret).

Every writer (the CLI's create/revoke, a server's last-used stamp) holds an ``flock`` on
``api-tokens.json.lock`` for its read-modify-write and replaces the file with the one atomic-write
helper; a server re-reads the file whenever its inode, size or mtime changes (one ``stat`` per
check), so a revoked or new token takes effect on the next call, without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import pathlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from quantledger.errors import (
    AuthenticationFailed,
    ConfigInvalid,
    InvalidArgument,
    TokenExpired,
    TokenNameTaken,
    TokenNotFound,
    quote_client,
)
from quantledger.security.principal import Principal, Quotas
from registry_client.atomic_files import AtomicFile

TOKEN_PREFIX = "qlt_"
ID_HEX_DIGITS = 16
SECRET_BYTES = 32
SALT_BYTES = 16
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
HASH_BYTES = 32
LAST_USED_EVERY_SECONDS = 60.0  # a server stamps a token's last use at most this often
STORE_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(rf"{TOKEN_PREFIX}(?P<id>[0-9a-f]{{{ID_HEX_DIGITS}}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
INVALID_MESSAGE = "authentication failed: send a valid token (--token-file or QUANTLEDGER_TOKEN)"


def token_id(token: str) -> str | None:
    """The id part of a well-formed token (safe to log), else None."""
    match = _TOKEN.fullmatch(token)
    return match["id"] if match else None


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=HASH_BYTES)


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: everything but the secret."""

    id: str
    name: str
    admin: bool
    created: float
    salt: str  # hex
    digest: str  # hex scrypt(secret, salt)
    scrypt: tuple[int, int, int] = (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    allowed_roots: tuple[str, ...] | None = None
    output_dirs: tuple[str, ...] | None = None
    quotas: Quotas = field(default_factory=Quotas)

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def principal(self) -> Principal:
        def paths(values: tuple[str, ...] | None) -> tuple[pathlib.Path, ...] | None:
            return None if values is None else tuple(pathlib.Path(v) for v in values)

        return Principal(
            name=self.name,
            admin=self.admin,
            via="token",
            allowed_roots=paths(self.allowed_roots),
            output_dirs=paths(self.output_dirs),
            quotas=self.quotas,
        )

    def public(self) -> dict[str, Any]:
        """What ``tokens list`` shows: never the hash or its salt."""
        return {
            "id": self.id,
            "name": self.name,
            "admin": self.admin,
            "created": _iso(self.created),
            "expires": _iso(self.expires),
            "revoked": _iso(self.revoked),
            "last_used": _iso(self.last_used),
            "allowed_roots": list(self.allowed_roots) if self.allowed_roots is not None else None,
            "output_dirs": list(self.output_dirs) if self.output_dirs is not None else None,
            "max_running_jobs": self.quotas.max_running_jobs,
            "max_queued_jobs": self.quotas.max_queued_jobs,
            "max_kept_bytes": self.quotas.max_kept_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        body = self.public() | {"salt": self.salt, "digest": self.digest, "scrypt": list(self.scrypt)}
        body.update(created=self.created, expires=self.expires, revoked=self.revoked, last_used=self.last_used)
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TokenRecord:
        def strings(value: Any) -> tuple[str, ...] | None:
            return None if value is None else tuple(str(v) for v in value)

        n, r, p = (int(v) for v in body["scrypt"])
        return cls(
            id=str(body["id"]),
            name=str(body["name"]),
            admin=bool(body["admin"]),
            created=float(body["created"]),
            salt=str(body["salt"]),
            digest=str(body["digest"]),
            scrypt=(n, r, p),
            expires=body.get("expires"),
            revoked=body.get("revoked"),
            last_used=body.get("last_used"),
            allowed_roots=strings(body.get("allowed_roots")),
            output_dirs=strings(body.get("output_dirs")),
            quotas=Quotas(
                max_running_jobs=body.get("max_running_jobs"),
                max_queued_jobs=body.get("max_queued_jobs"),
                max_kept_bytes=body.get("max_kept_bytes"),
            ),
        )


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class TokenStore:
    """The token file of a data dir (see the module docstring)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    @classmethod
    def in_home(cls, home: pathlib.Path) -> TokenStore:
        return cls(home / "keys" / "api-tokens.json")

    def read(self) -> dict[str, TokenRecord]:
        """Every record by id (empty when there is no file yet)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as source:
            raw = source.read()
        try:
            body = json.loads(raw)
            return {record.id: record for record in map(TokenRecord.from_json, body["tokens"])}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a damaged file: refuse, never guess
            raise ConfigInvalid(
                f"the token store {self.path} is damaged ({type(exc).__name__}); restore it from a backup, "
                "or move it away and make new tokens",
                path=str(self.path),
            ) from None

    def stat_key(self) -> tuple[int, int, int] | None:
        """What changes whenever the file is replaced or written (None: no file)."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        """The records, under the writers' lock; what the block leaves in the dict is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self.read()
            before = dict(records)
            yield records
            if records != before:
                self._write(records)
        finally:
            os.close(fd)  # releases the lock

    def _write(self, records: dict[str, TokenRecord]) -> None:
        body = {"version": STORE_VERSION, "tokens": [r.to_json() for r in records.values()]}
        with AtomicFile(self.path) as atomic:
            os.fchmod(atomic.file.fileno(), 0o600)
            atomic.file.write(json.dumps(body, indent=1).encode() + b"\n")

    def create(
        self,
        name: str,
        *,
        admin: bool = False,
        expires_in: float | None = None,
        allowed_roots: tuple[str, ...] | None = None,
        output_dirs: tuple[str, ...] | None = None,
        quotas: Quotas | None = None,
        now: float | None = None,
    ) -> tuple[str, TokenRecord]:
        """A new token for ``name`` (unique among unrevoked tokens): the token, shown once, and its record."""
        if not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"token name {quote_client(name)}: 1-64 letters, digits, '.', '_', '@' or '-', starting alphanumeric"
            )
        if expires_in is not None and expires_in <= 0:
            raise InvalidArgument("--expires must be a positive duration, such as 30d, 12h or 90s")
        now = time.time() if now is None else now
        secret = secrets.token_urlsafe(SECRET_BYTES)
        salt = secrets.token_bytes(SALT_BYTES)
        digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        with self._locked() as records:
            if any(r.name == name and r.revoked is None for r in records.values()):
                raise TokenNameTaken(f"a token named {quote_client(name)} exists: revoke it first", name=name)
            ident = secrets.token_hex(ID_HEX_DIGITS // 2)
            while ident in records:
                ident = secrets.token_hex(ID_HEX_DIGITS // 2)
            record = TokenRecord(
                id=ident,
                name=name,
                admin=admin,
                created=now,
                salt=salt.hex(),
                digest=digest.hex(),
                expires=None if expires_in is None else now + expires_in,
                allowed_roots=allowed_roots,
                output_dirs=output_dirs,
                quotas=quotas or Quotas(),
            )
            records[ident] = record
        return f"{TOKEN_PREFIX}{ident}_{secret}", record

    def records(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        return sorted(self.read().values(), key=lambda r: (r.created, r.id))

    def revoke(self, name: str, *, now: float | None = None) -> TokenRecord:
        """Revoke the unrevoked token named ``name``; every server refuses it from its next call on."""
        with self._locked() as records:
            for record in records.values():
                if record.name == name and record.revoked is None:
                    revoked = replace(record, revoked=time.time() if now is None else now)
                    records[record.id] = revoked
                    return revoked
        raise TokenNotFound(f"no unrevoked token named {quote_client(name)} (see `quantledger tokens list`)")

    def touch(self, ident: str, when: float) -> None:
        """Stamp a token's last use."""
        with self._locked() as records:
            record = records.get(ident)
            if record is not None:
                records[ident] = replace(record, last_used=when)


class TokenVerifier:
    """Checks tokens against a store, following the store's file as it changes (thread-safe)."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._records: dict[str, TokenRecord] = {}
        self._verified: dict[str, tuple[str, bytes]] = {}  # id -> (record digest, SHA-256 of its secret)

    def _current(self, ident: str) -> TokenRecord | None:
        key = self.store.stat_key()
        with self._lock:
            if key != self._key or key is None:
                self._records = self.store.read() if key is not None else {}
                self._key = key
                self._verified = {
                    i: seen
                    for i, seen in self._verified.items()
                    if i in self._records and self._records[i].digest == seen[0]
                }
            return self._records.get(ident)

    def check_known(self, token: str, now: float | None = None) -> TokenRecord | None:
        """The token's record when this verifier already verified the same secret (one SHA-256, no scrypt);
        None when that needs :meth:`verify`. Raises for a malformed, revoked or expired token."""
        ident, secret = _split(token)
        record = self._current(ident)
        if record is None:
            raise AuthenticationFailed(INVALID_MESSAGE)
        with self._lock:
            seen = self._verified.get(ident)
        if seen is None or seen[0] != record.digest or not hmac.compare_digest(seen[1], _sha256(secret)):
            return None
        return _usable(record, time.time() if now is None else now)

    def verify(self, token: str, now: float | None = None) -> TokenRecord:
        """The token's record after one scrypt of its secret (constant-time compare); raises
        AuthenticationFailed (unknown, wrong, revoked) or TokenExpired."""
        ident, secret = _split(token)
        record = self._current(ident)
        if record is None:
            raise AuthenticationFailed(INVALID_MESSAGE)
        n, r, p = record.scrypt
        computed = _scrypt(secret, bytes.fromhex(record.salt), n, r, p)
        if not hmac.compare_digest(computed, bytes.fromhex(record.digest)):
            raise AuthenticationFailed(INVALID_MESSAGE)
        with self._lock:
            self._verified[ident] = (record.digest, _sha256(secret))
        return _usable(record, time.time() if now is None else now)

    @staticmethod
    def stamp_due(record: TokenRecord, now: float) -> bool:
        """Whether a use of ``record`` now should be stamped (the last is older than LAST_USED_EVERY_SECONDS)."""
        return record.last_used is None or now - record.last_used >= LAST_USED_EVERY_SECONDS

    def stamp(self, record: TokenRecord, now: float) -> None:
        """Record a use of ``record`` in the store (blocking: a locked read-modify-write of the file)."""
        with self._lock:  # the next check re-reads the file; meanwhile do not stamp again
            self._records[record.id] = replace(record, last_used=now)
        self.store.touch(record.id, now)


def _split(token: str) -> tuple[str, str]:
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise AuthenticationFailed(INVALID_MESSAGE)
    return match["id"], match["secret"]


def _usable(record: TokenRecord, now: float) -> TokenRecord:
    if record.revoked is not None:
        raise AuthenticationFailed(INVALID_MESSAGE)
    if record.expired(now):
        raise TokenExpired(f"the token {record.id} expired at {_iso(record.expires)}: make a new one")
    return record
