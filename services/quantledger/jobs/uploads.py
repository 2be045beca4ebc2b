"""Files a client sends in a request body (a GGUF source, an imatrix), for users whose files are not on
the server's disk.

``receive`` streams the bytes into a hidden partial file in the owner's upload folder
(``Settings.uploads_for``), computing the SHA-256 on the way, and renames it to
``<folder>/<sha256>/<filename>`` once the last byte is in: the same file sent twice is kept once, and a
job of that owner may name the path as its source or ``imatrix_path`` whatever its allowed roots
(``Scope.settings``). A body past ``max_bytes`` (REQUEST_TOO_LARGE), a declared length the disk cannot
hold (INSUFFICIENT_DISK), a bad file name (INVALID_ARGUMENT) or a client that goes away leaves nothing
behind. Nothing here knows HTTP: the caller hands over the body's chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pathlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from quantledger.config import Settings
from quantledger.errors import InsufficientDisk, InvalidArgument, RequestTooLarge, quote_client
from quantledger.quantize.estimate import free_bytes

FLUSH_BYTES = 4 << 20  # bytes gathered before one write (and hash update) off the event loop
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class Upload:
    path: pathlib.Path
    sha256: str
    size_bytes: int


def checked_name(filename: str) -> str:
    """The file name to keep (a plain name: no folders, no leading dot), or INVALID_ARGUMENT."""
    if not _NAME.fullmatch(filename):
        raise InvalidArgument(
            f"filename {quote_client(filename)} must be a plain file name (letters, digits, . _ + -; at most "
            "200 characters, not starting with a dot), such as model-f16.gguf",
            field="filename",
        )
    return filename


def _write(sink: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    sink.write(data)
    digest.update(data)


async def receive(
    settings: Settings, owner: str, filename: str, chunks: AsyncIterator[bytes], declared: int | None = None
) -> Upload:
    """Store one uploaded file of ``owner`` (see the module docstring)."""
    name = checked_name(filename)
    limit = settings.max_upload_bytes
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"the upload is {declared} bytes; this server takes files of at most {limit}")
    folder = settings.uploads_for(owner)
    folder.mkdir(parents=True, exist_ok=True)
    free = free_bytes(folder, settings.disk_reserve_bytes)
    if declared is not None and declared > free:
        raise InsufficientDisk(
            f"the upload is {declared} bytes but {folder} has {free} free (after the reserve)",
            needed=str(declared),
            free=str(free),
        )
    partial = folder / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "xb") as sink:
            pending: list[bytes] = []
            buffered = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"the upload passes {limit} bytes, the largest file this server takes")
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= FLUSH_BYTES:
                    await asyncio.to_thread(_write, sink, digest, b"".join(pending))
                    pending, buffered = [], 0
            await asyncio.to_thread(_write, sink, digest, b"".join(pending))
            await asyncio.to_thread(os.fsync, sink.fileno())
        sha = digest.hexdigest()
        final = folder / sha / name
        final.parent.mkdir(exist_ok=True)
        os.replace(partial, final)  # the same bytes under the same name again: one file
        return Upload(final, sha, size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
