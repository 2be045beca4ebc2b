"""Source identity: a SHA-256 per file and one root digest over them.

The root digest is SHA-256 over the lines ``"{relative posix path}\\0{sha256 hex}\\n"`` sorted by path,
so it names the exact bytes of every file that went into a conversion, independent of where the
folder lives. (sigstore's model-transparency takes a model digest the same way: over sorted per-file
digests.)
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from quantledger.hashing import sha256_file


@dataclass(frozen=True)
class FileDigest:
    path: str  # relative, posix separators
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class SourceManifest:
    files: tuple[FileDigest, ...]
    root_digest: str

    def digest_of(self, path: str) -> str | None:
        return next((f.sha256 for f in self.files if f.path == path), None)


def root_digest(files: Iterable[FileDigest]) -> str:
    """SHA-256 over the sorted (path, digest) pairs."""
    h = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.path):
        h.update(f"{item.path}\0{item.sha256}\n".encode())
    return h.hexdigest()


def build_manifest(
    folder: pathlib.Path, relative_paths: Iterable[str], progress: Callable[[int, int], None] | None = None
) -> SourceManifest:
    """Hash each named file of ``folder`` (streamed) and compute the root digest; ``progress(done, total)``
    follows the bytes hashed."""
    names = sorted(set(relative_paths))
    total = sum((folder / name).stat().st_size for name in names)
    done = 0

    def advance(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress(done, total)

    files = []
    for relative in names:
        path = folder / relative
        digest = sha256_file(path, advance if progress is not None else None)
        files.append(FileDigest(path=relative, size_bytes=path.stat().st_size, sha256=digest))
    return SourceManifest(files=tuple(files), root_digest=root_digest(files))
