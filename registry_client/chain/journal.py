"""The chain journal: every transaction the embedded node accepted, appended and fsynced before the ack.

Line 1 is a header (format version, genesis timestamp, funded accounts); every further line is one mined
block: ``{"raw": "0x<signed transaction>", "timestamp": <block timestamp>}``. A kill -9 in the middle of
an append leaves a torn last line, which ``open`` cuts away (that transaction was never acknowledged).
An append that fails (a full disk, an I/O error) cuts its partial line off at once and raises
:class:`JournalWriteFailed`: the journal on disk stays exactly the acknowledged transactions.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from registry_client.atomic_files import write_atomic

FORMAT = 1


class ChainJournalCorrupt(Exception):
    """The journal cannot be read back (not a torn last line: real damage)."""


class JournalWriteFailed(OSError):
    """An append did not reach the disk (``errno`` says why: ENOSPC for a full disk); nothing of it remains.

    ``broken`` is true when even cutting the partial line off failed: the journal then refuses further
    appends until the node is restarted (``open`` repairs the torn tail)."""

    def __init__(self, error: OSError, *, broken: bool = False) -> None:
        code = error.errno if error.errno is not None else errno.EIO
        super().__init__(code, os.strerror(code))
        self.broken = broken


@dataclass(frozen=True)
class JournalHeader:
    genesis_timestamp: int
    funded: tuple[str, ...]


@dataclass(frozen=True)
class JournalEntry:
    raw: str
    timestamp: int


class Journal:
    """Append-only, fsynced journal of accepted transactions."""

    def __init__(self, path: pathlib.Path, header: JournalHeader, entries: list[JournalEntry]) -> None:
        self.path = path
        self.header = header
        self.entries = entries
        # unbuffered: a failed write must leave nothing behind in a buffer that a later flush would write
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._broken: OSError | None = None

    @classmethod
    def open(cls, path: pathlib.Path, new_header: JournalHeader) -> Journal:
        """Read (repairing a torn tail) or create the journal; ``new_header`` is used only when creating."""
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            line = (
                json.dumps(
                    {
                        "format": FORMAT,
                        "genesisTimestamp": new_header.genesis_timestamp,
                        "funded": list(new_header.funded),
                    }
                )
                + "\n"
            )
            write_atomic(path, line.encode())
            return cls(path, new_header, [])
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail:  # no trailing newline: a torn append; cut it off
            with open(path, "r+b") as handle:
                handle.truncate(len(data) - len(tail))
                handle.flush()
                os.fsync(handle.fileno())
        try:
            head: dict[str, Any] = json.loads(complete[0])
            if head.get("format") != FORMAT:
                raise ChainJournalCorrupt(f"{path}: unknown journal format {head.get('format')!r}")
            header = JournalHeader(int(head["genesisTimestamp"]), tuple(head["funded"]))
            entries = [JournalEntry(str(e["raw"]), int(e["timestamp"])) for e in map(json.loads, complete[1:])]
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise ChainJournalCorrupt(f"{path} is damaged: {exc}") from exc
        return cls(path, header, entries)

    def append(self, entry: JournalEntry) -> None:
        """Durably record one mined transaction (returns after fsync).

        Raises :class:`JournalWriteFailed` when the line could not be written and synced; the file is cut
        back to its length before the call, so the entry is not in the journal."""
        if self._broken is not None:
            raise JournalWriteFailed(self._broken, broken=True)
        data = (json.dumps({"raw": entry.raw, "timestamp": entry.timestamp}) + "\n").encode()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError:
                self._broken = exc
                raise JournalWriteFailed(exc, broken=True) from exc
            raise JournalWriteFailed(exc) from exc
        self.entries.append(entry)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
