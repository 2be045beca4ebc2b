"""The chain journal: every transaction the embedded node accepted, appended and fsynced before the ack.

Line 1 is a header (format version, genesis timestamp, funded accounts); every further line is one mined
block: ``{"raw": "0x<signed transaction>", "timestamp": <block timestamp>}``. A kill -9 in the middle of
an append leaves a torn last line, which ``open`` cuts away (that transaction was never acknowledged).
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

FORMAT = 1


class ChainJournalCorrupt(Exception):
    """The journal cannot be read back (not a torn last line: real damage)."""


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
        self._handle = open(path, "ab")  # noqa: SIM115 - kept open for appends

    @classmethod
    def open(cls, path: pathlib.Path, new_header: JournalHeader) -> Journal:
        """Read (repairing a torn tail) or create the journal; ``new_header`` is used only when creating."""
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"format": FORMAT, "genesisTimestamp": new_header.genesis_timestamp,
                               "funded": list(new_header.funded)}) + "\n"  # fmt: skip
            _write_synced(path, line.encode())
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
        """Durably record one mined transaction (returns after fsync)."""
        line = json.dumps({"raw": entry.raw, "timestamp": entry.timestamp}) + "\n"
        self._handle.write(line.encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries.append(entry)

    def close(self) -> None:
        self._handle.close()


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
