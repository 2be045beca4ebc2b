"""What the README's install command brings: no torch, and CI runs exactly the README's commands.

torch (with its CUDA libraries, about 3 GB) is needed only by llama.cpp's own converter, which the
fallback-converter test installs into a virtual environment of its own. The requirements of the base
install and of the dev extra are followed through the installed packages' metadata here, so a new
requirement that pulls torch in (as sentence-transformers did, through the package that ships
all-MiniLM-L6-v2) fails this test.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from conftest import REPO
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HEAVY = {"torch", "tensorflow", "jax", "sentence-transformers"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def reachable(requirements: list[str]) -> dict[str, str]:
    """Every installed distribution the requirements lead to, each with the path that reached it."""
    seen: dict[str, str] = {}
    todo = [(Requirement(text), "quantledger") for text in requirements]
    while todo:
        requirement, via = todo.pop()
        name = canonical(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        path = f"{via} -> {name}"
        seen[name] = path
        for extra in requirement.extras or {""}:
            try:
                requires = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue  # not installed here: its own requirements are unknown, and it is not torch's way in
            for text in requires:
                nested = Requirement(text)
                if nested.marker is None or nested.marker.evaluate({"extra": extra}):
                    todo.append((nested, path))
    return seen


def test_the_base_install_and_the_dev_extra_bring_no_torch() -> None:
    requirements = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    found = reachable(requirements)
    assert "numpy" in found and "llama-cpp-python" in found  # the walk does follow the requirements
    assert {name: found[name] for name in HEAVY & found.keys()} == {}


def test_ci_runs_the_readme_commands_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert [c for c in ci if c in commands] == commands
