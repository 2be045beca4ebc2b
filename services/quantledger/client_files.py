"""Opening the files a client named, and only those inside the roots the service may read.

Every file the service reads on a client's behalf is opened here, in one of two ways:

- ``open_client_file(path, roots)``: a path the client named (a GGUF source, an imatrix, an
  evaluation text). Its real path (every symlink and ``..`` resolved) must lie under ``roots``;
  the check is made on the path string before anything is opened, so a path outside the roots is
  PATH_NOT_ALLOWED whether it exists or not, and the error never says where a link points.
- ``folder_file(folder, name)``: a file of a folder already checked (a Hugging Face model folder, a
  LoRA adapter folder, a split model's directory), by its plain name. The name must not be absolute
  or contain ``..``, ``.`` or NUL (a weight index cannot send the reader elsewhere), and its real path
  must lie inside the folder itself, or for a Hugging Face hub snapshot inside the hub cache
  (whose files are links to ``../../blobs``). A symlinked ``model.safetensors`` pointing out is refused.

Opening never blocks and never follows a link swapped in after the check: the real path is walked
from ``/`` one component at a time with ``O_NOFOLLOW`` (a component replaced by a symlink since the
check fails), the last one is ``lstat``-ed and must be a regular file before it is opened (FIFOs,
sockets and devices are refused without opening them), it is opened ``O_NONBLOCK`` and ``fstat``-ed
again, and it must be the very file that was ``lstat``-ed. Libraries that insist on a path get
``reopen_path(handle)``, ``/proc/self/fd/N``: the file already opened, not a name to resolve again.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import stat
from collections.abc import Sequence
from typing import BinaryIO

from quantledger.errors import PathNotAllowed, QuantledgerError, SourceInvalid, SourceNotFound, quote_client
from registry_client.atomic_files import open_directory

_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY


def real_path(raw: str) -> pathlib.Path:
    """``raw`` made absolute with every symlink and ``..`` resolved (only ``~`` and ``~/…`` are expanded)."""
    text = os.path.expanduser(raw) if raw == "~" or raw.startswith("~/") else raw
    return pathlib.Path(os.path.realpath(text))


def containing_root(real: pathlib.Path, roots: Sequence[pathlib.Path]) -> pathlib.Path | None:
    """The root (as a real path) that ``real`` lies in, or None."""
    for root in roots:
        real_root = pathlib.Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return real_root
    return None


def allowed_path(raw: str, roots: Sequence[pathlib.Path], what: str = "source") -> pathlib.Path:
    """The real path of ``raw``; PathNotAllowed unless it lies under one of ``roots``.

    Nothing is opened or tested for existence before the check, and the refusal reads the same
    whether the path exists or not and wherever a link in it points.
    """
    if not raw or not raw.strip():
        raise SourceInvalid(f"no {what} path given")
    if "\x00" in raw:
        raise SourceInvalid(f"{what} path contains a NUL byte")
    real = real_path(raw)
    if containing_root(real, roots) is None:
        allowed = os.pathsep.join(str(r) for r in roots)
        raise PathNotAllowed(
            f"{what} {quote_client(raw)} is outside the allowed roots ({allowed}); "
            "set QUANTLEDGER_ALLOWED_ROOTS to allow it",
            path=raw,
        )
    return real


def check_member_name(name: str, *, subfolders: bool = False, what: str = "file name") -> str:
    """``name`` when it names a file inside a folder: relative, no ``..``/``.``/empty parts, no NUL;
    without ``subfolders`` also no ``/``. SourceInvalid otherwise."""
    parts = name.split("/")
    if (
        not name
        or "\x00" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts) > 1 and not subfolders)
    ):
        raise SourceInvalid(f"{what} {quote_client(name)} is not a plain file name inside the folder")
    return name


def hub_cache_root(folder: pathlib.Path) -> pathlib.Path | None:
    """The Hugging Face hub cache when ``folder`` (a real path) is one of its snapshots, else None."""
    if folder.parent.name != "snapshots":
        return None
    from huggingface_hub import constants

    cache = pathlib.Path(os.path.realpath(constants.HF_HUB_CACHE))
    return cache if cache in folder.parents else None


def folder_roots(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """Where the files of ``folder`` may really lie: the folder itself, and the hub cache for a snapshot."""
    real = pathlib.Path(os.path.realpath(folder))
    hub = hub_cache_root(real)
    return (real,) if hub is None else (real, hub)


def _open_regular(
    real: pathlib.Path, display: str, error: type[QuantledgerError], missing: type[QuantledgerError]
) -> io.BufferedReader:
    """Open the regular file at the symlink-free path ``real`` (see the module docstring)."""
    try:
        parent = open_directory(real.parent, resolve=False)  # reached from / without following a symlink
    except FileNotFoundError as exc:
        raise missing(f"{display} does not exist") from exc
    except OSError as exc:  # a component is no longer a directory, or became a symlink since the check
        raise error(f"{display} changed while it was being opened; try again") from exc
    try:
        try:
            before = os.stat(real.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise missing(f"{display} does not exist") from exc
        if stat.S_ISLNK(before.st_mode):
            raise error(f"{display} changed while it was being opened; try again")
        if not stat.S_ISREG(before.st_mode):
            raise error(f"{display} is not a regular file")
        try:
            fd = os.open(real.name, _FILE_FLAGS, dir_fd=parent)
        except PermissionError as exc:
            raise error(f"{display} is not readable by the service") from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                raise error(f"{display} changed while it was being opened; try again") from exc
            raise error(f"{display} cannot be opened ({os.strerror(exc.errno or 0)})") from exc
    finally:
        os.close(parent)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise error(f"{display} changed while it was being opened; try again")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_client_file(
    raw: str | os.PathLike[str],
    roots: Sequence[pathlib.Path],
    *,
    what: str = "file",
    error: type[QuantledgerError] = SourceInvalid,
    missing: type[QuantledgerError] = SourceNotFound,
) -> io.BufferedReader:
    """Open a file a client named, for reading; PathNotAllowed outside ``roots``, ``missing`` when it is
    not there, ``error`` when it is not a regular file or cannot be read."""
    text = os.fspath(raw)
    real = allowed_path(text, roots, what=what)
    return _open_regular(real, f"{what} {quote_client(text)}", error, missing)


def open_resolved(
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    error: type[QuantledgerError] = SourceInvalid,
    missing: type[QuantledgerError] = SourceNotFound,
) -> io.BufferedReader:
    """Open a path the service resolved and checked earlier (a worker's input): no component may be a
    symlink by now, so a link swapped in since the check is refused rather than followed."""
    text = os.fspath(path)
    return _open_regular(pathlib.Path(os.path.abspath(text)), f"{what} {quote_client(text)}", error, missing)


def folder_file(
    folder: pathlib.Path,
    name: str,
    *,
    subfolders: bool = False,
    error: type[QuantledgerError] = SourceInvalid,
    missing: type[QuantledgerError] | None = None,
) -> io.BufferedReader:
    """Open the file ``name`` of the checked folder ``folder`` (see the module docstring)."""
    check_member_name(name, subfolders=subfolders)
    real = real_path(os.fspath(folder / name))
    shown = quote_client(f"{folder.name}/{name}")
    if containing_root(real, folder_roots(folder)) is None:
        raise PathNotAllowed(f"{shown} leads outside its folder; the service reads only files inside it", file=name)
    return _open_regular(real, shown, error, missing or error)


def folder_has(folder: pathlib.Path, name: str, *, subfolders: bool = False) -> bool:
    """Whether the folder has an entry ``name`` (a link counts, wherever it points: opening it decides)."""
    check_member_name(name, subfolders=subfolders)
    return os.path.lexists(folder / name)


def folder_names(folder: pathlib.Path, suffix: str) -> list[str]:
    """Sorted names of the folder's entries ending in ``suffix`` (links included, nothing followed)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.endswith(suffix))


def reopen_path(handle: BinaryIO) -> str:
    """A path naming the already opened ``handle`` for libraries that take only paths (Linux /proc)."""
    return f"/proc/self/fd/{handle.fileno()}"


def same_file(handle: BinaryIO, other: os.stat_result) -> bool:
    """Whether ``other`` describes the file open as ``handle``."""
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)


def read_capped(handle: BinaryIO, limit: int) -> bytes:
    """The file's bytes, at most ``limit + 1`` of them (one more than allowed tells a file past the cap).

    Sized by the file, never by ``limit``: ``BufferedReader.read(n)`` allocates ``n`` bytes up front, so
    reading a small file with a 64 MiB cap would cost 64 MiB of heap per call."""
    size = os.fstat(handle.fileno()).st_size
    return handle.read(min(max(size, 0), limit) + 1)
