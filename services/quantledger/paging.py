"""Pagination of every List RPC: page sizes and opaque, authenticated page tokens.

A token is ``base64url(position as 8 bytes big-endian ‖ HMAC-SHA256(key, listing ‖ position)[:16])``:
a client cannot forge one, cannot move one to another listing (the listing — "jobs", "quant-types",
"records/files/…" — is inside the MAC), and nothing in it is parsed beyond a fixed-length byte string,
so a hostile token costs one length check. The key is 32 random bytes kept in the data dir
(``keys/page-tokens.key``, mode 0600), so tokens stay valid across restarts and between frontends
that share a data dir.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import pathlib
import secrets
from dataclasses import dataclass

from quantledger.errors import InvalidArgument

_POSITION_BYTES = 8
_MAC_BYTES = 16
TOKEN_LENGTH = len(base64.urlsafe_b64encode(b"\0" * (_POSITION_BYTES + _MAC_BYTES)).rstrip(b"="))
KEY_BYTES = 32


@dataclass(frozen=True)
class PageSize:
    """The default and the largest page a listing serves."""

    default: int
    largest: int

    def of(self, requested: int) -> int:
        """The page size to serve for ``requested`` (0 = the default); negative is INVALID_ARGUMENT."""
        if requested < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        return min(requested or self.default, self.largest)


class PageTokens:
    """Issues and checks the page tokens of one deployment."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page-token key needs at least 16 bytes")
        self._key = key

    @classmethod
    def in_home(cls, home: pathlib.Path) -> PageTokens:
        return cls(_load_or_create_key(home / "keys" / "page-tokens.key"))

    def _mac(self, listing: str, position: bytes) -> bytes:
        message = listing.encode("utf-8", "surrogatepass") + b"\0" + position
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, listing: str, position: int) -> str:
        """The token that continues ``listing`` at ``position`` (a non-negative integer)."""
        raw = position.to_bytes(_POSITION_BYTES, "big")
        return base64.urlsafe_b64encode(raw + self._mac(listing, raw)).rstrip(b"=").decode("ascii")

    def decode(self, listing: str, token: str) -> int | None:
        """The position of a token this deployment issued for ``listing``; None for "" (the first page)."""
        if not token:
            return None
        refused = InvalidArgument("page_token is not a token this service issued for this listing", field="page_token")
        if len(token) != TOKEN_LENGTH or not token.isascii():
            raise refused
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        position, mac = raw[:_POSITION_BYTES], raw[_POSITION_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(listing, position)):
            raise refused
        return int.from_bytes(position, "big")


def _load_or_create_key(path: pathlib.Path) -> bytes:
    """The key in ``path``, made (exclusively, mode 0600) when there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    for _ in range(100):  # another process may have created the file and not yet written it
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            key = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(key) == KEY_BYTES:
            return key
        os.sched_yield()
    raise OSError(f"{path} does not hold a {KEY_BYTES}-byte page-token key")
