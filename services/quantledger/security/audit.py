"""The audit log: one JSON line per security-relevant event, appended to ``audit.log`` in the data dir.

Each line holds the event's time (Unix seconds), its name (``job.create``, ``job.cancel``,
``job.delete``, ``job.expire`` …), the principal it ran as and the event's own fields (the job's name,
freed bytes …). The file is created mode 0600 and every line is flushed as it is written, so a line
that was recorded survives the process.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time

AUDIT_FILE = "audit.log"


class AuditLog:
    """Appends events to one file; safe to call from several threads."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: pathlib.Path) -> AuditLog:
        return cls(home / AUDIT_FILE)

    def record(self, event: str, principal: str, **fields: object) -> None:
        """Append one event: ``{"time", "event", "principal", **fields}`` as one JSON line."""
        line = json.dumps(
            {"time": time.time(), "event": event, "principal": principal, **fields}, sort_keys=True, default=str
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as sink:
                sink.write(line + "\n")
                sink.flush()
