"""Source identity: a SHA-256 per file and one root digest over them.

The root digest is SHA-256 over the lines ``"{relative posix path}\\0{sha256 hex}\\n"`` sorted by path,
so it names the exact bytes of every file that went into a conversion, independent of where the
folder lives. (sigstore's model-transparency takes a model digest the same way: over sorted per-file
digests.)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from quantledger.client_files import folder_file
from quantledger.hashing import CHUNK


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


def folder_files(folder: pathlib.Path) -> list[str]:
    """Every regular file under ``folder`` (links not followed), relative with "/" separators, sorted: what
    an output folder's manifest hashes."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_symlink() and p.is_file())


def build_manifest(
    folder: pathlib.Path, relative_paths: Iterable[str], progress: Callable[[int, int], None] | None = None
) -> SourceManifest:
    """Hash each named file of ``folder`` (streamed, each opened through client_files: inside the folder,
    a regular file) and compute the root digest; ``progress(done, total)`` follows the bytes hashed."""
    names = sorted(set(relative_paths))
    sizes = {}
    for name in names:
        with folder_file(folder, name, subfolders=True) as handle:
            sizes[name] = os.fstat(handle.fileno()).st_size
    total = sum(sizes.values())
    done = 0
    files = []
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for relative in names:
        digest = hashlib.sha256()
        size = 0
        with folder_file(folder, relative, subfolders=True) as handle:
            while chunk := handle.readinto(buffer):
                digest.update(view[:chunk])
                size += chunk
                done += chunk
                if progress is not None:
                    progress(done, total)
        files.append(FileDigest(path=relative, size_bytes=size, sha256=digest.hexdigest()))
    return SourceManifest(files=tuple(files), root_digest=root_digest(files))
