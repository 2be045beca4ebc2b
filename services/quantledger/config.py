"""Settings: command-line flags win, then ``QUANTLEDGER_*`` environment variables, then defaults.

A variable that cannot be read is :class:`~quantledger.errors.ConfigInvalid` (CONFIG_INVALID); the CLI
turns it into exit status 1 and the reason, like any other error.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from quantledger.errors import ConfigInvalid, quote_client

DEFAULT_PORT = 50051
DEFAULT_CHAIN_PORT = 8545


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigInvalid(f"{name} must be an integer, got {quote_client(raw)}", variable=name) from exc


@dataclass(frozen=True)
class Settings:
    """Everything the services read from their environment."""

    home: pathlib.Path
    allowed_roots: tuple[pathlib.Path, ...]
    max_parallel_jobs: int = 1
    disk_reserve_bytes: int = 256 << 20
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    chain_port: int = DEFAULT_CHAIN_PORT
    chain_url: str = ""
    conversion_cache_bytes: int = 20 << 30
    registry_address: str = ""
    registry_retry_seconds: float = 10.0
    # time bounds: one worker step (fetch, convert, quantize one type, evaluate one output), a whole job,
    # and checking a request's files at create (the client's deadline, when shorter, wins)
    stage_timeout_seconds: float = 6 * 3600.0
    job_timeout_seconds: float = 48 * 3600.0
    validation_timeout_seconds: float = 60.0
    # request limits (docs/SECURITY.md "Request limits"): the largest request message a server accepts
    # (RESOURCE_EXHAUSTED beyond), and how many WatchQuantizeJob streams one principal may hold open
    max_message_bytes: int = 4 << 20
    max_watch_streams: int = 16

    @property
    def database(self) -> pathlib.Path:
        return self.home / "jobs.sqlite3"

    @property
    def artifacts(self) -> pathlib.Path:
        return self.home / "artifacts"

    @property
    def chain_dir(self) -> pathlib.Path:
        """The embedded chain's journal and snapshots."""
        return self.home / "chain"

    @property
    def admin_key_path(self) -> pathlib.Path:
        """The embedded chain's admin key (hex, mode 0600); it deploys the registry and attests."""
        return self.home / "keys" / "admin.key"

    @property
    def embedded_chain_url(self) -> str:
        return f"http://127.0.0.1:{self.chain_port}"

    @property
    def logs(self) -> pathlib.Path:
        return self.home / "logs"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.artifacts, self.logs):
            path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from the environment; keyword arguments (flags) take precedence when not None."""
        home = pathlib.Path(os.environ.get("QUANTLEDGER_HOME") or "~/.quantledger").expanduser().resolve()
        roots_raw = os.environ.get("QUANTLEDGER_ALLOWED_ROOTS", "")
        roots = [pathlib.Path(r).expanduser() for r in roots_raw.split(os.pathsep) if r.strip()]
        if not roots:
            roots = [home, pathlib.Path.cwd()]
        values: dict[str, object] = {
            "home": home,
            "allowed_roots": tuple(r.resolve() for r in roots),
            "max_parallel_jobs": max(1, _env_int("QUANTLEDGER_MAX_PARALLEL_JOBS", 1)),
            "disk_reserve_bytes": max(0, _env_int("QUANTLEDGER_DISK_RESERVE_BYTES", 256 << 20)),
            "host": os.environ.get("QUANTLEDGER_HOST") or "127.0.0.1",
            "port": _env_int("QUANTLEDGER_PORT", DEFAULT_PORT),
            "chain_port": _env_int("QUANTLEDGER_CHAIN_PORT", DEFAULT_CHAIN_PORT),
            "chain_url": os.environ.get("QUANTLEDGER_CHAIN_URL", ""),
            "conversion_cache_bytes": max(0, _env_int("QUANTLEDGER_CONVERSION_CACHE_BYTES", 20 << 30)),
            "registry_address": os.environ.get("QUANTLEDGER_REGISTRY_ADDRESS", "").strip(),
            "registry_retry_seconds": max(1, _env_int("QUANTLEDGER_REGISTRY_RETRY_SECONDS", 10)),
            "stage_timeout_seconds": max(1, _env_int("QUANTLEDGER_STAGE_TIMEOUT_SECONDS", 6 * 3600)),
            "job_timeout_seconds": max(1, _env_int("QUANTLEDGER_JOB_TIMEOUT_SECONDS", 48 * 3600)),
            "validation_timeout_seconds": max(1, _env_int("QUANTLEDGER_VALIDATION_TIMEOUT_SECONDS", 60)),
            "max_message_bytes": max(1024, _env_int("QUANTLEDGER_MAX_MESSAGE_BYTES", 4 << 20)),
            "max_watch_streams": max(1, _env_int("QUANTLEDGER_MAX_WATCH_STREAMS", 16)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
