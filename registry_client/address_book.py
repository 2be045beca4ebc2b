"""Where the registry is deployed, per chain id: ``<data dir>/registry/addresses.json``."""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

from registry_client.atomic_files import write_atomic


@dataclass(frozen=True)
class Deployment:
    """One registry deployment on one chain."""

    chain_id: int
    address: str
    transaction: str
    block_number: int
    code_sha256: str


class AddressBook:
    """A small JSON file mapping chain ids to deployments; writes are atomic (temp file + rename)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    @classmethod
    def in_home(cls, home: pathlib.Path) -> AddressBook:
        return cls(home / "registry" / "addresses.json")

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, chain_id: int) -> Deployment | None:
        entry = self._load().get(str(chain_id))
        if not isinstance(entry, dict):
            return None
        try:
            return Deployment(
                chain_id=chain_id,
                address=str(entry["address"]),
                transaction=str(entry["transaction"]),
                block_number=int(str(entry["block_number"])),
                code_sha256=str(entry["code_sha256"]),
            )
        except (KeyError, ValueError):
            return None

    def put(self, deployment: Deployment) -> None:
        data = self._load()
        entry = asdict(deployment)
        del entry["chain_id"]
        data[str(deployment.chain_id)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
