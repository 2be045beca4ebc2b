"""Who may import whom, checked on the source (``ast``), never by importing it.

The rules (docs/ARCHITECTURE.md, "Packages and import rules") are package-level, so a new module in
a package is covered the moment it exists:

- ``registry_client`` is the lowest layer: it never imports ``quantledger`` (nor grpc);
- a package imports only packages on its own layer or below (``LAYERS``, lowest first); the one
  exception is the job vocabulary (``UPWARD_ALLOWED``);
- domain packages (everything but ``grpc_api``, ``http_api``, ``cli`` and ``v1``) import no grpc, no
  generated API, no CLI and no HTTP framework; only the API packages and ``cli`` import ``quantledger.v1``.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "services", ROOT)  # quantledger lives under services/, registry_client at the root

# Lowest layer first; a package may import its own layer and those before it. "quantledger" is the
# package's top level: its __init__, config, errors and the small cross-cutting modules.
LAYERS: tuple[str, ...] = (
    "registry_client",
    "quantledger",
    "quantledger.security",
    "quantledger.artifacts",
    "quantledger.gguf",
    "quantledger.testing",
    "quantledger.convert",
    "quantledger.hf",
    "quantledger.hf_export",
    "quantledger.quality",
    "quantledger.registry",
    "quantledger.quantize",
    "quantledger.recommend",
    "quantledger.jobs",
    "quantledger.distributed",
    "quantledger.grpc_api",
    "quantledger.http_api",
    "quantledger.cli",
)
# Generated from protos/: imported by the API and the CLI only, imports nothing but itself.
GENERATED = "quantledger.v1"
API_PACKAGES = frozenset({"quantledger.grpc_api", "quantledger.http_api", "quantledger.cli", GENERATED})
# Modules of a higher layer that lower ones may import, with the reason.
UPWARD_ALLOWED: dict[str, str] = {
    "quantledger.jobs.model": "the job vocabulary (Job, JobSpec, Artifact, SourceInfo) every stage reads and fills",
    "quantledger.jobs.store": "the job store, read by the size estimator and the recommender for measured rates",
}
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.rpc", "google.protobuf")
HTTP_FRAMEWORKS = (
    "aiohttp",
    "fastapi",
    "flask",
    "http.server",
    "starlette",
    "tornado",
    "uvicorn",
    "werkzeug",
)


def _module_files() -> Iterator[tuple[str, pathlib.Path]]:
    for base, top in ((ROOT / "services", "quantledger"), (ROOT, "registry_client")):
        for path in sorted((base / top).rglob("*.py")):
            relative = path.relative_to(base).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            yield ".".join(parts), path


MODULES = dict(_module_files())
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def package_of(module: str) -> str:
    """The rule unit of a module: registry_client, quantledger (top level), or quantledger.<sub-package>."""
    parts = module.split(".")
    if parts[0] == "registry_client":
        return "registry_client"
    if len(parts) >= 2 and ".".join(parts[:2]) in PACKAGES:
        return ".".join(parts[:2])
    return "quantledger"


def imports_of(module: str, path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement, TYPE_CHECKING and function-local ones included."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else base


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations() -> list[str]:
    rank = {package: index for index, package in enumerate(LAYERS)}
    found: list[str] = []
    for module, path in MODULES.items():
        package = package_of(module)
        where = f"{path.relative_to(ROOT)}"
        for line, target in imports_of(module, path):
            at = f"{where}:{line} imports {target}"
            if package == "registry_client":
                if _is_under(target, ("quantledger", *GRPC)):
                    found.append(f"{at}: registry_client is the lower layer and never imports quantledger or grpc")
                continue
            if package == GENERATED:
                if _is_under(target, ("quantledger",)) and not _is_under(target, (GENERATED,)):
                    found.append(f"{at}: generated code imports only itself")
                continue
            if package not in API_PACKAGES:
                if _is_under(target, GRPC + HTTP_FRAMEWORKS):
                    found.append(f"{at}: domain packages import no grpc and no HTTP framework")
                    continue
                if _is_under(target, tuple(API_PACKAGES)):
                    found.append(f"{at}: domain packages never import grpc_api, cli or the generated v1 API")
                    continue
            if not _is_under(target, ("quantledger", "registry_client")):
                continue
            if _is_under(target, (GENERATED,)):
                continue  # API packages only, checked above
            if target in UPWARD_ALLOWED or _is_under(target, tuple(UPWARD_ALLOWED)):
                continue
            imported = package_of(target)
            if rank[imported] > rank[package]:
                found.append(
                    f"{at}: {package} (layer {rank[package]}) may not import {imported} (layer {rank[imported]})"
                )
    return found


def test_every_package_has_a_layer() -> None:
    """A new sub-package must be placed in LAYERS (and in docs/ARCHITECTURE.md) before it can be used."""
    packages = {package_of(module) for module in MODULES}
    assert packages - {GENERATED} == set(LAYERS), "add new packages to LAYERS and to docs/ARCHITECTURE.md"


def test_layers_match_the_architecture_doc() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = doc.split("## Packages and import rules", 1)[1]
    shown = [line.split("|")[2].strip().strip("`") for line in table.splitlines() if line.startswith("| ")][1:]
    assert shown[: len(LAYERS)] == [package.removeprefix("quantledger.") for package in LAYERS]


def test_import_rules_hold() -> None:
    assert violations() == []


def test_the_checker_sees_a_broken_rule(tmp_path: pathlib.Path) -> None:
    """The checker itself: an upward, a grpc and a registry_client -> quantledger import are all found."""
    rank = {package: index for index, package in enumerate(LAYERS)}
    source = tmp_path / "probe.py"
    source.write_text(
        "import grpc\nfrom quantledger.jobs import engine\nfrom ..cli import main\nfrom . import reader\n"
        "def f():\n    from quantledger.grpc_api.server import serve\n"
    )
    found = list(imports_of("quantledger.gguf.probe", source))
    assert [target for _, target in found] == [
        "grpc",
        "quantledger.jobs.engine",
        "quantledger.cli.main",
        "quantledger.gguf.reader",
        "quantledger.grpc_api.server",
    ]
    assert rank[package_of("quantledger.jobs.engine")] > rank[package_of("quantledger.gguf.probe")]
    assert package_of("quantledger.jobs.any_new_module") == "quantledger.jobs"
    assert package_of("quantledger.errors") == "quantledger"
    assert package_of("registry_client.chain.node") == "registry_client"


def test_the_service_does_not_import_gguf_py() -> None:
    """gguf-py (the PyPI ``gguf``) is the tests' independent second reader and writer, a dev dependency
    only: the service reads and writes GGUF with its own ``quantledger.gguf`` package."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in MODULES.items()
        for line, target in imports_of(module, path)
        if _is_under(target, ("gguf",))
    ]
    assert found == []
