"""Compiles contracts/QuantizedModelRegistry.sol into the artifact this package ships.

The compiler is the npm package ``solc`` (solcjs) behind ``contracts/solcjs-standard-json.js``, driven
through py-solc-x's ``compile_standard``. Compiler and EVM versions are pinned here; the artifact records
both together with the SHA-256 of each source, and ``tests/test_registry_contract.py`` recompiles and
fails on any difference from the committed artifact.

Run ``python -m registry_client.compile`` after editing the contract.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import sys
from typing import Any

from registry_client.artifact import ARTIFACT_PATH, CONTRACT_NAME, ContractArtifact
from registry_client.errors import CompilationFailed

SOLC_VERSION = "0.8.37"
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 1_000

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO_ROOT / "contracts"
SOURCE_FILES = ("IQuantizedModelRegistry.sol", "QuantizedModelRegistry.sol")
SOLCJS_SHIM = CONTRACTS_DIR / "solcjs-standard-json.js"


def standard_json_input() -> dict[str, Any]:
    """The solc standard-JSON input: every source inline, pinned settings, ABI and bytecode out."""
    sources = {name: {"content": (CONTRACTS_DIR / name).read_text(encoding="utf-8")} for name in SOURCE_FILES}
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "viaIR": True,
            "metadata": {"bytecodeHash": "none"},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def compile_registry() -> ContractArtifact:
    """Compile the registry from source; raises CompilationFailed with solc's messages."""
    import solcx  # imported here: only building needs it, not using the client
    import solcx.exceptions

    if shutil.which("node") is None:
        raise CompilationFailed("node is not on PATH; the contract compiles with the npm package solc")
    compiler_input = standard_json_input()
    try:
        version = str(solcx.wrapper.get_solc_version(SOLCJS_SHIM, with_commit_hash=True))
        output = solcx.compile_standard(compiler_input, solc_binary=SOLCJS_SHIM)
    except solcx.exceptions.SolcError as exc:
        raise CompilationFailed(str(exc)) from exc
    if not version.startswith(SOLC_VERSION):
        raise CompilationFailed(f"solc {version} found; the build pins {SOLC_VERSION} (npm install in tests/node)")
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompilationFailed("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    warnings = [e.get("formattedMessage", "") for e in output.get("errors", []) if e.get("severity") == "warning"]
    compiled = output["contracts"]["QuantizedModelRegistry.sol"][CONTRACT_NAME]
    return ContractArtifact(
        contract_name=CONTRACT_NAME,
        abi=compiled["abi"],
        bytecode="0x" + compiled["evm"]["bytecode"]["object"],
        deployed_bytecode="0x" + compiled["evm"]["deployedBytecode"]["object"],
        compiler=f"solc {version}",
        settings=compiler_input["settings"],
        source_sha256={
            name: hashlib.sha256(source["content"].encode("utf-8")).hexdigest()
            for name, source in compiler_input["sources"].items()
        },
        warnings=tuple(warnings),
    )


def main() -> int:
    artifact = compile_registry()
    for warning in artifact.warnings:
        print(warning, file=sys.stderr)
    ARTIFACT_PATH.write_text(json.dumps(artifact.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {ARTIFACT_PATH.relative_to(REPO_ROOT)} ({len(artifact.deployed_bytecode) // 2 - 1} bytes deployed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
