"""What the README's install command brings: no torch in the base install, only torch's CPU build through
the ``hf`` extra, and CI runs exactly the README's commands.

The base install (``pip install quantledger``) stays torch-free: GGUF conversion, quantization, quality and
the registry need none of it. The ``hf`` extra (the Hugging Face output formats, docs/HF_EXPORT.md), which
the dev extra includes for the tests, brings torch pinned to its CPU release: an open range, or a package
that asks for torch itself (sentence-transformers did, through the package that ships all-MiniLM-L6-v2),
would pull a CUDA build of several GB. The requirements are followed through the installed packages'
metadata, so a new requirement that brings torch in another way fails here.
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
    visited: set[tuple[str, frozenset[str]]] = set()  # a package once per set of extras asked of it
    # markers are evaluated when a requirement is found (with the extra that led to it), not again
    todo = [(r, "quantledger") for r in map(Requirement, requirements) if r.marker is None or r.marker.evaluate()]
    while todo:
        requirement, via = todo.pop()
        name = canonical(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        path = f"{via} -> {name}"
        seen.setdefault(name, path)
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


def test_the_base_install_brings_no_torch_and_the_hf_extra_only_its_cpu_build() -> None:
    base = reachable(PYPROJECT["project"]["dependencies"])
    assert "numpy" in base and "llama-cpp-python" in base  # the walk does follow the requirements
    assert {name: base[name] for name in HEAVY & base.keys()} == {}
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = reachable(PYPROJECT["project"]["dependencies"] + extras["dev"])
    assert "torch" in dev and "bitsandbytes" in dev
    assert {name: dev[name] for name in (HEAVY - {"torch"}) & dev.keys()} == {}
    without_hf = reachable([r for r in extras["dev"] if r != "quantledger[hf]"])
    assert "torch" not in without_hf, without_hf.get("torch")  # the hf extra is torch's only way in
    pins = [Requirement(r) for r in extras["hf"] if canonical(Requirement(r).name) == "torch"]
    assert [str(p.specifier) for p in pins] == ["==2.13.0"]
    import torch

    assert torch.version.cuda is None, torch.__version__  # the CPU build: no CUDA libraries came with it


def test_ci_runs_the_readme_commands_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert [c for c in ci if c in commands] == commands
