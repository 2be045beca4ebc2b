"""Signing keys: the admin key kept in the data dir (mode 0600), or a key named by the environment."""

from __future__ import annotations

import os
import pathlib
import stat

from eth_account import Account
from eth_account.signers.local import LocalAccount

from registry_client import restore_recursion_limit
from registry_client.errors import KeyUnavailable

restore_recursion_limit()  # eth-account / web3 raised it (see registry_client/__init__.py)

KEY_ENV = "QUANTLEDGER_CHAIN_KEY"
KEY_FILE_ENV = "QUANTLEDGER_CHAIN_KEY_FILE"


def _parse_key(text: str, origin: str) -> LocalAccount:
    raw = text.strip().lower().removeprefix("0x")
    try:
        if len(raw) != 64:
            raise ValueError("not 32 bytes")
        account: LocalAccount = Account.from_key(bytes.fromhex(raw))
        return account
    except ValueError as exc:
        raise KeyUnavailable(f"{origin} does not hold a hex private key (64 hex characters)") from exc


def read_key_file(path: pathlib.Path) -> LocalAccount:
    """Load a hex private key from ``path``; refuses a file that others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyUnavailable(f"key file {path} does not exist") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyUnavailable(f"key file {path} is readable by others; run chmod 600 {path}")
    return _parse_key(path.read_text(encoding="ascii", errors="replace"), f"key file {path}")


def load_or_create_key(path: pathlib.Path) -> LocalAccount:
    """The key at ``path``, created (random, mode 0600, written atomically) when it does not exist yet."""
    if path.exists():
        return read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    account: LocalAccount = Account.create()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(account.key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)  # fails if another process created the key meanwhile; theirs wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return read_key_file(path)


def key_from_environment(default_file: pathlib.Path | None = None) -> LocalAccount | None:
    """``QUANTLEDGER_CHAIN_KEY`` (hex), else ``QUANTLEDGER_CHAIN_KEY_FILE``, else ``default_file`` if it exists."""
    if os.environ.get(KEY_ENV, "").strip():
        return _parse_key(os.environ[KEY_ENV], KEY_ENV)
    named = os.environ.get(KEY_FILE_ENV, "").strip()
    if named:
        return read_key_file(pathlib.Path(named).expanduser())
    if default_file is not None and default_file.exists():
        return read_key_file(default_file)
    return None
