"""How many long-lived streams each principal holds open at once.

A WatchQuantizeJob stream costs the server a task and a subscription for as long as the job runs; a
client that opens thousands would hold them all. ``StreamLimits.hold(name)`` counts the open streams of
the principal ``name`` and refuses one past the limit with TooManyStreams (RESOURCE_EXHAUSTED,
TOO_MANY_STREAMS) before any work. Counts live in memory: streams die with the server.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from quantledger.errors import TooManyStreams, quote_client


class StreamLimits:
    """Open streams per principal, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a stream limit must be at least 1")
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def open_streams(self, principal: str) -> int:
        with self._lock:
            return self._open.get(principal, 0)

    @contextlib.contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """One stream of ``principal`` for the duration of the block; TooManyStreams past the limit."""
        with self._lock:
            count = self._open.get(principal, 0)
            if count >= self.limit:
                raise TooManyStreams(
                    f"{quote_client(principal, 100)} already has {count} open watch streams, the most one "
                    f"principal may hold (QUANTLEDGER_MAX_WATCH_STREAMS); close one first",
                    limit=str(self.limit),
                )
            self._open[principal] = count + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._open[principal] - 1
                if left:
                    self._open[principal] = left
                else:
                    del self._open[principal]
