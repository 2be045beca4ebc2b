"""The compiled QuantizedModelRegistry shipped with this package (ABI, bytecode, how it was built)."""

from __future__ import annotations

import functools
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

CONTRACT_NAME = "QuantizedModelRegistry"
ARTIFACT_PATH = pathlib.Path(__file__).resolve().parent / "artifacts" / f"{CONTRACT_NAME}.json"


@dataclass(frozen=True)
class ContractArtifact:
    """ABI and bytecode of one contract plus the compiler, settings and source digests that made them."""

    contract_name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler: str
    settings: dict[str, Any]
    source_sha256: dict[str, str]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "contractName": self.contract_name,
            "abi": self.abi,
            "bytecode": self.bytecode,
            "deployedBytecode": self.deployed_bytecode,
            "compiler": self.compiler,
            "settings": self.settings,
            "sourceSha256": self.source_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContractArtifact:
        return cls(
            contract_name=data["contractName"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            compiler=data["compiler"],
            settings=data["settings"],
            source_sha256=data["sourceSha256"],
        )


@functools.cache
def registry_artifact() -> ContractArtifact:
    """The committed artifact (built by ``python -m registry_client.compile``)."""
    return ContractArtifact.from_json(json.loads(ARTIFACT_PATH.read_text(encoding="utf-8")))
