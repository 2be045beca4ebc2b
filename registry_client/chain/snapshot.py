"""Snapshots of the embedded chain's key-value database, so a restart replays only the journal's tail.

Format: ``QLSNAP1\\n``, a JSON line ``{"entries": N, "pairs": M}`` (N = journal entries the state
includes), then M length-prefixed key/value pairs, then the SHA-256 of everything before it. Written to a
temporary file, fsynced and renamed; a snapshot that fails its checksum is ignored (full replay instead).
No pickle: loading a snapshot never runs code.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import struct

from registry_client.atomic_files import AtomicFile

MAGIC = b"QLSNAP1\n"
_LENGTH = struct.Struct(">I")


def write_snapshot(path: pathlib.Path, entries: int, store: dict[bytes, bytes]) -> None:
    digest = hashlib.sha256()
    with AtomicFile(path) as atomic:
        handle = atomic.file

        def put(data: bytes) -> None:
            digest.update(data)
            handle.write(data)

        put(MAGIC)
        put(json.dumps({"entries": entries, "pairs": len(store)}).encode() + b"\n")
        for key, value in store.items():
            put(_LENGTH.pack(len(key)) + key + _LENGTH.pack(len(value)) + value)
        handle.write(digest.digest())


def read_snapshot(path: pathlib.Path) -> tuple[int, dict[bytes, bytes]] | None:
    """(journal entries included, key-value store), or None when missing or damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    body, checksum = data[:-32], data[-32:]
    if not body.startswith(MAGIC) or hashlib.sha256(body).digest() != checksum:
        return None
    try:
        newline = body.index(b"\n", len(MAGIC))
        meta = json.loads(body[len(MAGIC) : newline])
        offset = newline + 1
        store: dict[bytes, bytes] = {}
        for _ in range(int(meta["pairs"])):
            (size,) = _LENGTH.unpack_from(body, offset)
            key = body[offset + 4 : offset + 4 + size]
            offset += 4 + size
            (size,) = _LENGTH.unpack_from(body, offset)
            store[key] = body[offset + 4 : offset + 4 + size]
            offset += 4 + size
        return int(meta["entries"]), store
    except (ValueError, KeyError, struct.error):
        return None
