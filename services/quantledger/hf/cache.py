"""The conversion cache: GGUF intermediates keyed by what went into them.

Key = SHA-256 of (source root digest, converter version, output type, LoRA digest, model name): the name
is the intermediate's general.name, so the same files under another folder name are another entry. An entry is a
complete ``{key}.gguf`` plus ``{key}.json`` (what it is) or nothing: entries are written under a
temporary name and renamed. The cache keeps at most ``max_bytes``; when a new entry needs room the
least recently used entries go first (use refreshes a file's mtime). Entries in use by a running job
are pinned and never evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from registry_client.atomic_files import write_atomic


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: pathlib.Path
    size_bytes: int


def cache_key(
    root_digest: str, converter_version: str, out_type: str, lora_digest: str = "", model_name: str = ""
) -> str:
    material = json.dumps([root_digest, converter_version, out_type.upper(), lora_digest, model_name])
    return hashlib.sha256(material.encode()).hexdigest()


class ConversionCache:
    """Size-capped, least-recently-used store of converted GGUF files."""

    def __init__(self, root: pathlib.Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._pinned: dict[str, int] = {}
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[pathlib.Path, pathlib.Path]:
        return self.root / f"{key}.gguf", self.root / f"{key}.json"

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` (its use recorded), or None."""
        gguf, meta = self._paths(key)
        if not (gguf.is_file() and meta.is_file()):
            return None
        now = time.time()
        with contextlib.suppress(OSError):
            os.utime(gguf, (now, now))
        return CacheEntry(key, gguf, gguf.stat().st_size)

    def temp_path(self, key: str) -> pathlib.Path:
        """Where a conversion for ``key`` writes before ``store`` (same file system as the cache)."""
        return self.root / f".{key}.{os.getpid()}.{threading.get_ident()}.partial.gguf"

    def store(self, key: str, produced: pathlib.Path, description: dict[str, object]) -> CacheEntry:
        """Move a finished conversion into the cache, evicting old entries to stay under the cap."""
        gguf, meta = self._paths(key)
        size = produced.stat().st_size
        with open(produced, "rb") as handle:  # the bytes reach the disk before the entry exists
            os.fsync(handle.fileno())
        with self._lock:
            self._evict(max(0, self.max_bytes - size), keep=key)
            os.replace(produced, gguf)
            # fsyncs the directory too, so the renamed GGUF is durable before its description exists
            write_atomic(meta, json.dumps({**description, "key": key, "size_bytes": size}, indent=1).encode())
        return CacheEntry(key, gguf, size)

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[None]:
        """Keep ``key`` from eviction while a job reads it."""
        with self._lock:
            self._pinned[key] = self._pinned.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pinned[key] -= 1
                if not self._pinned[key]:
                    del self._pinned[key]

    def entries(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        found = []
        for gguf in self.root.glob("*.gguf"):
            if gguf.name.startswith(".") or not gguf.with_suffix(".json").is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((gguf.stat().st_mtime, CacheEntry(gguf.stem, gguf, gguf.stat().st_size)))
        return [entry for _, entry in sorted(found, key=lambda item: item[0])]

    def _evict(self, budget: int, keep: str) -> None:
        entries = self.entries()
        total = sum(e.size_bytes for e in entries)
        for entry in entries:
            if total <= budget:
                break
            if entry.key == keep or entry.key in self._pinned:
                continue
            gguf, meta = self._paths(entry.key)
            with contextlib.suppress(FileNotFoundError):
                meta.unlink()
                gguf.unlink()
            total -= entry.size_bytes

    def remove_partials(self) -> None:
        """Delete conversions a dead process left half-written."""
        for leftover in self.root.glob(".*.partial*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
