"""A Hugging Face hub cache written by the tests: the one test double for the hub (no network here).

The layout is huggingface_hub's own (models--{owner}--{name}/blobs, snapshots/{commit}, refs/{revision});
LFS files (weights) are stored under their SHA-256, other files under their git blob id, as the hub does.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".model")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repo(
    cache: pathlib.Path, repo_id: str, folder: pathlib.Path, revision: str = "main", commit: str | None = None
) -> str:
    """Put every file of ``folder`` into ``cache`` as ``repo_id`` at ``revision``; return the commit sha."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    commit = commit or hashlib.sha1(b"".join(p.name.encode() + p.read_bytes()[:64] for p in files)).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = hashlib.sha256(data).hexdigest() if path.name.endswith(LFS_SUFFIXES) else git_blob_id(data)
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(repo / "blobs" / blob, link.parent), link)
    (repo / "refs" / revision).write_text(commit)
    return commit
