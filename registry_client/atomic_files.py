"""Writing files atomically, where a client may have planted links: the one write-then-rename of the service.

``AtomicFile(target)`` creates its temporary file in the target's directory under an unpredictable
name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link or file planted there can neither be written
through nor reused), relative to a descriptor of that directory reached from ``/`` without following
any symlink (a directory swapped for a link after its path was resolved is refused). ``commit``
flushes and fsyncs the file, renames it over the target (a link at the target is replaced, never
followed) and fsyncs the directory; a failure before that removes the temporary file.
``write_atomic(path, data)`` does all of it for bytes in memory.

It lives in ``registry_client``, the lower of the two packages, so the chain's snapshots and address
book use the same helper as the services' provenance files, conversions and imatrix files.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from types import TracebackType
from typing import BinaryIO

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_directory(directory: pathlib.Path, *, resolve: bool = True) -> int:
    """A descriptor of ``directory`` (its real path, walked from ``/`` with O_NOFOLLOW at every step).
    With ``resolve=False`` the path must already be real: a symlink anywhere in it is refused (OSError)."""
    real = pathlib.Path(os.path.realpath(directory) if resolve else os.path.abspath(directory))
    fd = os.open("/", _DIRECTORY_FLAGS)
    try:
        for part in real.parts[1:]:
            next_fd = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_exclusive(name: str, dir_fd: int, mode: int = 0o666) -> int:
    """A new, empty regular file ``name`` in ``dir_fd``; FileExistsError when anything is there already."""
    return os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)


class AtomicFile:
    """A temporary file that becomes ``target`` on ``commit`` (see the module docstring)."""

    def __init__(self, target: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.target = pathlib.Path(target)
        self.fsync = fsync
        self._dir_fd = open_directory(self.target.parent)
        try:
            self.temp_name = f".{self.target.name[:120]}.{secrets.token_hex(8)}.tmp"
            self.file: BinaryIO = os.fdopen(create_exclusive(self.temp_name, self._dir_fd), "wb")
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._done = False

    @property
    def reopen_path(self) -> str:
        """A path naming the temporary file itself, for writers that take only a path (Linux /proc)."""
        return f"/proc/self/fd/{self.file.fileno()}"

    def commit(self) -> None:
        if self._done:
            return
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp_name, self.target.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            if self.fsync:
                os.fsync(self._dir_fd)
        except BaseException:
            self.abort()
            raise
        self._done = True
        os.close(self._dir_fd)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_name, dir_fd=self._dir_fd)
        os.close(self._dir_fd)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def write_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    with AtomicFile(path, fsync=fsync) as atomic:
        atomic.file.write(data)
