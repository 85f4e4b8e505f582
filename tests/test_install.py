"""The install a user does is the install CI tests: README.md's commands, constraints.txt pins
every dependency pyproject.toml names, within its tested ranges, and nothing is built from source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return reqs


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0]
    return pins


def test_every_dependency_has_an_upper_bound_and_a_pin_inside_it():
    from packaging.requirements import Requirement

    pins = _pins()
    for text in _requirements():
        req = Requirement(text)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{text}: no tested upper bound"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"


def test_ci_runs_the_readme_test_block():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Tests"):]
    block = block[block.index("```bash") + 7:]
    lines = [x for x in block[:block.index("```")].splitlines() if x.strip()]
    assert lines[-1] == "python -m pytest -q"
    assert all("-c constraints.txt" in x or "--no-deps" in x for x in lines if x.startswith("pip install"))
    assert "## Tests" in (ROOT / ".ci" / "run").read_text()  # .ci/run reads that block, not a copy of it
    assert "llama-cpp-python" not in (ROOT / "constraints.txt").read_text().lower().replace("_", "-")
