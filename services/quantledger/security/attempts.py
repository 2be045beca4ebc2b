"""Failed authentications per peer: a token bucket, so guessing costs time and the server no hashes.

Each peer host (the address without its port) has a bucket of ``burst`` attempts that refills at
``per_minute``. An attempt that needs checking takes one before the check (so concurrent guesses are
bounded too) and a successful one gives it back; an empty bucket refuses the attempt unchecked
(TOO_MANY_ATTEMPTS). At most ``max_peers`` buckets are kept, least recently used dropped first: a
dropped bucket is a full one again, which costs an attacker with that many addresses nothing they
did not already have.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

DEFAULT_PER_MINUTE = 10
MAX_PEERS = 10_000


class AttemptLimiter:
    """Token buckets of authentication attempts, one per peer (thread-safe)."""

    def __init__(
        self, per_minute: int = DEFAULT_PER_MINUTE, *, burst: int | None = None, max_peers: int = MAX_PEERS
    ) -> None:
        self.per_minute = max(1, per_minute)
        self.burst = float(burst if burst is not None else self.per_minute)
        self.max_peers = max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, peer: str, now: float) -> float:
        tokens, at = self._buckets.get(peer, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_minute / 60.0)

    def take(self, peer: str, now: float | None = None) -> bool:
        """Take one attempt for ``peer``; False (nothing taken) when its bucket is empty."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level = self._level(peer, now)
            allowed = level >= 1.0
            self._buckets[peer] = (level - 1.0 if allowed else level, now)
            self._buckets.move_to_end(peer)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
            return allowed

    def give_back(self, peer: str, now: float | None = None) -> None:
        """Return the attempt a successful authentication took."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if peer in self._buckets:
                self._buckets[peer] = (min(self.burst, self._level(peer, now) + 1.0), now)
