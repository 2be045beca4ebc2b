"""The principal a call runs as: a named user or service, an admin or not, with its own limits.

Every job belongs to the principal that created it. ``LOCAL`` is the principal of the embedded,
unauthenticated default (one person on loopback): an admin with the server's own roots and no quota.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Quotas:
    """Per-principal limits; ``None`` is unlimited."""

    max_running_jobs: int | None = None  # jobs of this principal RUNNING at once (the rest wait QUEUED)
    max_queued_jobs: int | None = None  # jobs of this principal QUEUED or RUNNING at create time
    max_kept_bytes: int | None = None  # bytes of outputs of this principal's jobs kept on disk


@dataclass(frozen=True)
class Principal:
    """Who a call runs as."""

    name: str
    admin: bool = False
    via: str = "local"  # how it was authenticated: "local" (no authentication), "token", "mtls"
    # where this principal may read sources and write outputs; None: the server's own settings
    allowed_roots: tuple[pathlib.Path, ...] | None = None
    output_dirs: tuple[pathlib.Path, ...] | None = None
    quotas: Quotas = field(default_factory=Quotas)

    def owns(self, owner: str) -> bool:
        """May this principal see and act on a job whose owner is ``owner``?"""
        return self.admin or owner == self.name


LOCAL = Principal(name="local", admin=True, via="local")
