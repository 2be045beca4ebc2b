"""The worker's partial output files, claimed before llama.cpp writes them.

llama.cpp opens its output by name (``std::ofstream``: it follows a symlink and truncates whatever
file is there). So before it runs, the worker removes whatever sits at each partial name in the
output directory (a planted link goes, its target is never touched; a directory there is refused),
creates each partial file itself with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to a descriptor of
the directory (reached without following symlinks), and hands llama.cpp a path to the file it
created, not a name to resolve: ``/proc/self/fd/N`` of the file for a single output, and for
``keep_split`` (llama.cpp appends ``-0000i-of-0000n.gguf`` to a prefix) the prefix under
``/proc/self/fd/D`` of the pinned directory. After llama.cpp returns, every partial name must still
be the file the worker created (a split output written by name could otherwise have been swapped).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
from collections.abc import Iterator

from quantledger.errors import QuantizeFailed, quote_client
from registry_client.atomic_files import create_exclusive, open_directory


def partial_names(name: str, count: int) -> list[str]:
    """The file names llama.cpp writes for the prefix ``name``: itself, or one per shard."""
    if count <= 1:
        return [name]
    return [f"{name}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _clear(name: str, dir_fd: int) -> None:
    try:
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(found.st_mode):
        raise QuantizeFailed(f"{quote_client(name)} in the output directory is a directory; remove it")
    os.unlink(name, dir_fd=dir_fd)  # a symlink is removed itself, never its target


@contextlib.contextmanager
def claimed_partials(output: str, count: int = 1) -> Iterator[str]:
    """Create the partial files of ``output`` (see the module docstring) and yield the path to give
    llama.cpp; QuantizeFailed when a partial name was taken over while llama.cpp ran."""
    directory, name = os.path.split(os.path.abspath(output))
    try:
        dir_fd = open_directory(pathlib.Path(directory), resolve=False)  # the plan resolved it
    except OSError as exc:
        raise QuantizeFailed(
            f"the output directory cannot be opened safely ({exc.strerror}): a part of its path changed since "
            "the job was checked"
        ) from exc
    fds: list[int] = []
    try:
        names = partial_names(name, count)
        for one in names:
            _clear(one, dir_fd)
            try:
                fds.append(create_exclusive(one, dir_fd))
            except FileExistsError as exc:
                raise QuantizeFailed(f"{quote_client(one)} appeared in the output directory as it was claimed") from exc
        yield f"/proc/self/fd/{fds[0]}" if count <= 1 else f"/proc/self/fd/{dir_fd}/{name}"
        for one, fd in zip(names, fds, strict=True):
            mine = os.fstat(fd)
            try:
                now = os.stat(one, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                raise QuantizeFailed(f"the partial file {quote_client(one)} was replaced while llama.cpp wrote it")
    finally:
        for fd in fds:
            os.close(fd)
        os.close(dir_fd)
