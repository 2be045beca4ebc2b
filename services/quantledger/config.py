"""Settings: command-line flags win, then ``QUANTLEDGER_*`` environment variables, then defaults.

A variable that cannot be read is :class:`~quantledger.errors.ConfigInvalid` (CONFIG_INVALID); the CLI
turns it into exit status 1 and the reason, like any other error.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from dataclasses import dataclass

from quantledger.errors import ConfigInvalid, quote_client

DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8080  # the HTTP/JSON API beside gRPC; 0 turns it off
DEFAULT_CHAIN_PORT = 8545
AUTH_MODES = ("none", "tokens")
BACKENDS = ("embedded", "temporal")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigInvalid(f"{name} must be an integer, got {quote_client(raw)}", variable=name) from exc


def _env_bool(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigInvalid(f"{name} must be 1 or 0 (true or false), got {quote_client(raw)}", variable=name)


def _env_names(name: str) -> tuple[str, ...]:
    """A comma-separated list of names (blank entries dropped)."""
    return tuple(part.strip() for part in os.environ.get(name, "").split(",") if part.strip())


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(raw: str, name: str) -> float | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or plain seconds, as seconds; "" / "0" / "off": None."""
    text = raw.strip().lower()
    if text in ("", "0", "off", "none"):
        return None
    number, unit = (text[:-1], text[-1]) if text[-1] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigInvalid(
            f"{name} must be a duration such as 30d, 12h, 90m or 45s, got {quote_client(raw)}", variable=name
        )
    return seconds


@dataclass(frozen=True)
class Settings:
    """Everything the services read from their environment."""

    home: pathlib.Path
    allowed_roots: tuple[pathlib.Path, ...]
    # where a client's output_dir may lie; None: under allowed_roots (a principal's output_dirs set it)
    output_roots: tuple[pathlib.Path, ...] | None = None
    # outputs of jobs that ended longer ago than this are deleted (QUANTLEDGER_RETAIN, --retain); None: kept
    retain_seconds: float | None = None
    max_parallel_jobs: int = 1
    disk_reserve_bytes: int = 256 << 20
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    http_port: int = DEFAULT_HTTP_PORT
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
    # transport security (docs/SECURITY.md "Transport"): a PEM certificate chain and its key turn TLS on;
    # a client CA makes the server require client certificates signed by it (mutual TLS), and a client
    # certificate whose identity is in tls_admins is an admin principal
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_admins: tuple[str, ...] = ()
    # "none": every call is the local admin (loopback default); "tokens": every call but health and
    # reflection carries a valid API token (security/tokens.py)
    auth: str = "none"
    auth_failures_per_minute: int = 10  # failed authentications a peer may make per minute (and at once)
    # listen on a non-loopback address without TLS and authentication (refused otherwise)
    insecure_listen: bool = False
    # where QuantizeService runs jobs (docs/SCALE_OUT.md): "embedded" (SQLite and local workers) or
    # "temporal" (workflows on the Temporal frontend at temporal_address, artifacts in artifacts_uri)
    backend: str = "embedded"
    temporal_address: str = ""
    temporal_namespace: str = "default"
    temporal_tls_ca: str = ""  # TLS to Temporal: a CA file (Temporal Cloud's is public: TLS without one)
    temporal_tls_cert: str = ""  # mutual TLS to Temporal: the client certificate and its key
    temporal_tls_key: str = ""
    artifacts_uri: str = ""  # s3://BUCKET/PREFIX
    heartbeat_timeout_seconds: float = 30.0  # a distributed step silent this long is retried elsewhere
    scratch_dir: str = ""  # a worker's scratch space (default: <home>/scratch); workers may share a home

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)

    @property
    def output_dir_roots(self) -> tuple[pathlib.Path, ...]:
        """The roots a client's output_dir must lie under."""
        return self.output_roots if self.output_roots is not None else self.allowed_roots

    # request limits (docs/SECURITY.md "Request limits"): the largest request message a server accepts
    # (RESOURCE_EXHAUSTED beyond), and how many WatchQuantizeJob streams one principal may hold open
    max_message_bytes: int = 4 << 20
    max_watch_streams: int = 16
    # the largest file the HTTP API's upload route takes (POST /api/v1/uploads: a source or imatrix file)
    max_upload_bytes: int = 64 << 30

    @property
    def database(self) -> pathlib.Path:
        return self.home / "jobs.sqlite3"

    @property
    def artifacts(self) -> pathlib.Path:
        return self.home / "artifacts"

    @property
    def imatrix_cache(self) -> pathlib.Path:
        """Importance matrices jobs computed (imatrix_path "auto"), by source, text and parameters."""
        return self.home / "imatrix-cache"

    @property
    def uploads(self) -> pathlib.Path:
        """Files sent over HTTP (``POST /api/v1/uploads``), one folder per owner (``uploads_for``)."""
        return self.home / "uploads"

    def uploads_for(self, owner: str) -> pathlib.Path:
        """The folder of ``owner``'s uploads: a job of that owner may read it whatever its allowed roots."""
        return self.uploads / hashlib.sha256(owner.encode()).hexdigest()[:16]

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
    def tokens_file(self) -> pathlib.Path:
        """API tokens, hashed (mode 0600; ``quantledger tokens``)."""
        return self.home / "keys" / "api-tokens.json"

    @property
    def audit_log(self) -> pathlib.Path:
        return self.home / "audit.log"

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
            "http_port": max(0, _env_int("QUANTLEDGER_HTTP_PORT", DEFAULT_HTTP_PORT)),
            "chain_port": _env_int("QUANTLEDGER_CHAIN_PORT", DEFAULT_CHAIN_PORT),
            "chain_url": os.environ.get("QUANTLEDGER_CHAIN_URL", ""),
            "conversion_cache_bytes": max(0, _env_int("QUANTLEDGER_CONVERSION_CACHE_BYTES", 20 << 30)),
            "registry_address": os.environ.get("QUANTLEDGER_REGISTRY_ADDRESS", "").strip(),
            "registry_retry_seconds": max(1, _env_int("QUANTLEDGER_REGISTRY_RETRY_SECONDS", 10)),
            "stage_timeout_seconds": max(1, _env_int("QUANTLEDGER_STAGE_TIMEOUT_SECONDS", 6 * 3600)),
            "job_timeout_seconds": max(1, _env_int("QUANTLEDGER_JOB_TIMEOUT_SECONDS", 48 * 3600)),
            "validation_timeout_seconds": max(1, _env_int("QUANTLEDGER_VALIDATION_TIMEOUT_SECONDS", 60)),
            "auth_failures_per_minute": max(1, _env_int("QUANTLEDGER_AUTH_FAILURES_PER_MINUTE", 10)),
            "tls_cert": os.environ.get("QUANTLEDGER_TLS_CERT", "").strip(),
            "tls_key": os.environ.get("QUANTLEDGER_TLS_KEY", "").strip(),
            "tls_client_ca": os.environ.get("QUANTLEDGER_TLS_CLIENT_CA", "").strip(),
            "tls_admins": _env_names("QUANTLEDGER_TLS_ADMINS"),
            "insecure_listen": _env_bool("QUANTLEDGER_INSECURE_LISTEN"),
            "retain_seconds": parse_duration(os.environ.get("QUANTLEDGER_RETAIN", ""), "QUANTLEDGER_RETAIN"),
            "max_message_bytes": max(1024, _env_int("QUANTLEDGER_MAX_MESSAGE_BYTES", 4 << 20)),
            "max_watch_streams": max(1, _env_int("QUANTLEDGER_MAX_WATCH_STREAMS", 16)),
            "max_upload_bytes": max(1, _env_int("QUANTLEDGER_MAX_UPLOAD_BYTES", 64 << 30)),
            "backend": (os.environ.get("QUANTLEDGER_BACKEND") or "embedded").strip().lower(),
            "temporal_address": os.environ.get("QUANTLEDGER_TEMPORAL", "").strip(),
            "temporal_namespace": os.environ.get("QUANTLEDGER_TEMPORAL_NAMESPACE", "").strip() or "default",
            "temporal_tls_ca": os.environ.get("QUANTLEDGER_TEMPORAL_TLS_CA", "").strip(),
            "temporal_tls_cert": os.environ.get("QUANTLEDGER_TEMPORAL_TLS_CERT", "").strip(),
            "temporal_tls_key": os.environ.get("QUANTLEDGER_TEMPORAL_TLS_KEY", "").strip(),
            "artifacts_uri": os.environ.get("QUANTLEDGER_ARTIFACTS", "").strip(),
            "heartbeat_timeout_seconds": max(1, _env_int("QUANTLEDGER_HEARTBEAT_TIMEOUT_SECONDS", 30)),
            "scratch_dir": os.environ.get("QUANTLEDGER_SCRATCH", "").strip(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        auth = str(values.get("auth") or os.environ.get("QUANTLEDGER_AUTH") or "none").strip().lower()
        if auth not in AUTH_MODES:
            raise ConfigInvalid(
                f"authentication must be one of {', '.join(AUTH_MODES)}, got {quote_client(auth)}",
                variable="QUANTLEDGER_AUTH",
            )
        values["auth"] = auth
        if values["backend"] not in BACKENDS:
            raise ConfigInvalid(
                f"the backend must be one of {', '.join(BACKENDS)}, got {quote_client(values['backend'])}",
                variable="QUANTLEDGER_BACKEND",
            )
        return cls(**values)  # type: ignore[arg-type]
