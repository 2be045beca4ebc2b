"""Deleting a finished job's output files (DeleteQuantizeJob and retention), and nothing else.

Only the files the job recorded are removed: each output file at its recorded path, if it is still a
regular file of its recorded size, and the provenance JSON the job wrote beside it, if it is still a
regular file with its recorded SHA-256. Each file is unlinked through a descriptor of its directory
opened without following any symlink, so a directory swapped for a link since the job ran sends the
deletion nowhere. A file that is gone already is fine; one that no longer matches its record (replaced
by another file) is left where it is and reported. The job record stays, with ``delete_time`` set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from quantledger.client_files import read_capped
from quantledger.jobs.model import Artifact, Job
from quantledger.registry.provenance import SUFFIX as PROVENANCE_SUFFIX
from registry_client.atomic_files import open_directory

log = logging.getLogger(__name__)
PROVENANCE_MAX_BYTES = 1 << 20  # a provenance JSON is a few KiB; anything larger is not the one we wrote


@dataclass
class Deletion:
    """What deleting a job's outputs did."""

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # paths that no longer match the record: left alone
    freed_bytes: int = 0


def delete_outputs(job: Job) -> Deletion:
    """Remove every output file of ``job`` and the provenance JSON beside it (see the module docstring)."""
    done = Deletion()
    for artifact in job.outputs:
        for path, size in _files_of(artifact):
            _remove(path, done, partial(_size_matches, size), size)
        if artifact.folder:
            _remove_empty_folders(artifact)
        provenance = _provenance_of(artifact)
        if provenance is not None:
            path, digest = provenance
            _remove(path, done, partial(_digest_matches, digest), 0)
    return done


def _remove_empty_folders(artifact: Artifact) -> None:
    """A Hugging Face output's folder and its sub-folders, deepest first, where removing its files left
    them empty (rmdir never removes anything else, and a link is never followed)."""
    top = pathlib.Path(artifact.path)
    folders = {p for f in artifact.files for p in pathlib.Path(f.path).parents if p == top or top in p.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink():
            try:
                folder.rmdir()
            except OSError:
                continue  # not empty: something the job did not write is in it


def _files_of(artifact: Artifact) -> list[tuple[str, int]]:
    if artifact.files:
        return [(f.path, f.size_bytes) for f in artifact.files]
    return [(artifact.path, artifact.size_bytes)] if artifact.path else []


def _provenance_of(artifact: Artifact) -> tuple[str, str] | None:
    """The provenance JSON the job wrote for ``artifact``: only ever the one beside its first file."""
    entry = artifact.registry
    if entry is None or not entry.provenance_path or not artifact.path:
        return None
    if entry.provenance_path != artifact.path + PROVENANCE_SUFFIX:
        return None
    return entry.provenance_path, entry.provenance_sha256


# each check gets the file's lstat and (directory fd, name): it reads the file only through that directory
Matches = Callable[[os.stat_result, int, str], bool]


def _size_matches(size: int, st: os.stat_result, directory: int, name: str) -> bool:
    return st.st_size == size


def _digest_matches(digest: str, st: os.stat_result, directory: int, name: str) -> bool:
    if st.st_size > PROVENANCE_MAX_BYTES:
        return False
    if not digest:
        return True
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        return hashlib.sha256(read_capped(handle, PROVENANCE_MAX_BYTES)).hexdigest() == digest


def _remove(path: str, done: Deletion, matches: Matches, size: int) -> None:
    target = pathlib.Path(path)
    try:
        directory = open_directory(target.parent, resolve=False)
    except OSError:  # the directory is gone, or a link now stands in its path
        if os.path.lexists(path):
            done.kept.append(path)
        return
    try:
        try:
            st = os.stat(target.name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode) or not matches(st, directory, target.name):
            log.warning("%s does not match the job's record; left in place", path)
            done.kept.append(path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target.name, dir_fd=directory)
            done.removed.append(path)
            done.freed_bytes += size
    finally:
        os.close(directory)
