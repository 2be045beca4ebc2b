"""Hugging Face Hub sources: ``owner/name[@revision]`` or ``hf://owner/name[@revision]``.

Fetching goes through huggingface_hub, so ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HOME`` /
``HF_HUB_CACHE`` and the standard cache behave as users expect. Only the files a conversion needs
are fetched (config, tokenizer, safetensors weights); nothing from the repository is ever executed
(no ``trust_remote_code``, no pickles). The token is handed to huggingface_hub by the environment and
is never logged or stored.

A repository, revision or file that does not exist (or that the token may not see) is SOURCE_NOT_FOUND;
a hub that does not answer (network down, DNS, a refused connection, a timeout, a 5xx or 429) with
nothing usable in the local cache is HUB_UNAVAILABLE: the same request may work later.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import socket
from dataclasses import dataclass

from quantledger.errors import HubUnavailable, SourceInvalid, SourceNotFound

_HUB_ID = re.compile(
    r"^(?:hf://)?(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})(?:@(?P<revision>[A-Za-z0-9_./-]{1,200}))?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# What a conversion reads; weights only as safetensors (pickled .bin files are never fetched).
ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "sentencepiece.bpe.model",  # XLM-RoBERTa's tokenizer
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "modules.json",
    "1_Pooling/config.json",
)


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str  # as asked ("main" when none was given)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


@dataclass(frozen=True)
class HubSnapshot:
    ref: HubRef
    commit: str  # the revision resolved to a commit sha
    folder: pathlib.Path
    lfs_sha256: dict[str, str]  # relative path -> SHA-256 the hub records for that LFS file


def parse_hub_id(source: str) -> HubRef | None:
    """The repo and revision named by ``source``, or None when it is not a hub id."""
    match = _HUB_ID.match(source.strip())
    if match is None or ".." in source:
        return None
    return HubRef(repo_id=match["repo"], revision=match["revision"] or "main")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    """The hub cache as the environment names it now (``HF_HUB_CACHE``, else ``HF_HOME``/hub): huggingface_hub
    reads these once, when it is first imported, so a process that imported it earlier (transformers does)
    would otherwise keep an older answer."""
    if os.environ.get("HF_HUB_CACHE", "").strip():
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME", "").strip():
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the hub did not answer", whichever HTTP library huggingface_hub uses."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module_name, names in (
        ("httpx2", ("TransportError",)),  # huggingface_hub 2.x
        ("httpx", ("TransportError",)),  # huggingface_hub 1.x
        ("requests.exceptions", ("ConnectionError", "Timeout")),  # huggingface_hub 0.x
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        kinds.extend(kind for kind in (getattr(module, name, None) for name in names) if isinstance(kind, type))
    return tuple(kinds)


def _unreachable(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the hub did not answer (a connection failure or timeout,
    a 5xx or 429), or None. Offline mode and 4xx answers are not that: those stay SOURCE_NOT_FOUND."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    transport = _transport_errors()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OfflineModeIsEnabled):
            return None
        if isinstance(current, HfHubHTTPError):
            response = getattr(current, "response", None)
            status = getattr(response, "status_code", 0) or 0
            if status >= 500 or status == 429:
                return current
        elif isinstance(current, transport):
            return current
        current = current.__cause__ or current.__context__
    return None


def _hub_unavailable(ref: HubRef, cause: BaseException) -> HubUnavailable:
    return HubUnavailable(
        f"{ref.repo_id}@{ref.revision}: the Hugging Face hub does not answer ({type(cause).__name__}) and the "
        "local cache does not hold it; retry later, or set HF_HUB_OFFLINE=1 with a filled cache",
        repo=ref.repo_id,
    )


def _fetch(ref: HubRef, patterns: tuple[str, ...]) -> pathlib.Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=list(patterns),
            local_files_only=_offline(),
            cache_dir=_cache_dir(),
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise SourceNotFound(
            f"{ref.repo_id}@{ref.revision}: {type(exc).__name__} (check the name, revision and HF_TOKEN)",
            repo=ref.repo_id,
        ) from exc
    except LocalEntryNotFoundError as exc:
        unreachable = None if _offline() else _unreachable(exc)
        if unreachable is not None:
            raise _hub_unavailable(ref, unreachable) from exc
        where = "the local Hugging Face cache (HF_HUB_OFFLINE is set)" if _offline() else "the hub or the local cache"
        raise SourceNotFound(f"{ref.repo_id}@{ref.revision} is not in {where}", repo=ref.repo_id) from exc
    except HFValidationError as exc:
        raise SourceInvalid(f"{ref.repo_id}@{ref.revision} is not a valid Hugging Face repo id or revision") from exc
    except Exception as exc:
        unreachable = _unreachable(exc)
        if unreachable is not None:
            raise _hub_unavailable(ref, unreachable) from exc
        if not isinstance(exc, OSError):
            raise
        raise SourceNotFound(f"{ref.repo_id}@{ref.revision} could not be fetched: {exc}", repo=ref.repo_id) from exc
    if isinstance(folder, list):  # dry_run answers; never asked for
        raise SourceNotFound(f"{ref.repo_id}: unexpected answer from huggingface_hub")
    return pathlib.Path(folder)


def fetch_config(ref: HubRef) -> pathlib.Path:
    """Only config.json (and the pooling config), for preflight before any weight download."""
    return _fetch(ref, ("config.json", "1_Pooling/config.json", "model.safetensors.index.json"))


def fetch_snapshot(ref: HubRef) -> HubSnapshot:
    """Config, tokenizer and safetensors weights of ``ref``; the revision resolved to a commit sha."""
    folder = _fetch(ref, ALLOW_PATTERNS)
    commit = folder.name  # huggingface_hub's cache layout: snapshots/{commit sha}/
    return HubSnapshot(ref=ref, commit=commit, folder=folder, lfs_sha256=_lfs_digests(folder))


def _lfs_digests(folder: pathlib.Path) -> dict[str, str]:
    """SHA-256 of LFS files as the hub recorded them: in the cache, an LFS file's blob is named by it."""
    digests = {}
    for path in folder.rglob("*"):
        if path.is_symlink():
            blob = pathlib.Path(os.readlink(path)).name
            if _SHA256.match(blob):
                digests[path.relative_to(folder).as_posix()] = blob
    return digests
