"""The audit log: one JSON object a line in ``<data dir>/audit.log`` (mode 0600), appended, never rewritten.

``AuditLog.record(event, principal, **fields)`` writes ``{"time", "event", "principal", **fields}``
as one line with one ``write`` on a descriptor opened ``O_APPEND`` (unbuffered, so nothing waits for a
flush, and lines of several processes never interleave). Strings are cut to ``MAX_FIELD_CHARS``,
lists to ``MAX_LIST_ITEMS``, and JSON escapes control characters, so a client's strings can neither
forge a line nor make one huge.
Nothing secret belongs in a field: authentication refusals record the token's id, never the token.

Events: ``authentication_refused`` (peer, method, reason, token_id when the token was well formed;
``suppressed``: refusals over the attempt limit not written since the last one of that peer), and from
the job engine ``job.create``, ``job.cancel``, ``job.delete`` (files removed, freed bytes, files left in
place) and ``job.expire`` (principal "retention").
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
from typing import Any

MAX_FIELD_CHARS = 500
MAX_LIST_ITEMS = 64


def _bounded(value: Any) -> Any:
    """A JSON scalar, or a list of them (at most MAX_LIST_ITEMS, then a note); anything else as its str."""
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f"… ({len(value)} characters)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for v in value]
        shown = [_bounded(v) for v in items[:MAX_LIST_ITEMS]]
        return shown + ([f"… ({len(items)} items)"] if len(items) > MAX_LIST_ITEMS else [])
    return _bounded(str(value))


class AuditLog:
    """Appends audit entries to one file (thread-safe; several processes may share the file)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: pathlib.Path) -> AuditLog:
        return cls(home / "audit.log")

    def _descriptor(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path, flags, 0o600)
            os.fchmod(fd, 0o600)
            self._fd = fd
        return self._fd

    def record(self, event: str, principal: str, **fields: Any) -> None:
        """Append one entry; ``fields`` are JSON scalars (anything else is written as its ``str``)."""
        now = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "event": event,
            "principal": principal,
            **{key: _bounded(value) for key, value in fields.items()},
        }
        line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
        with self._lock:
            os.write(self._descriptor(), line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
