"""The package layout keeps its one-way rule: no import circle inside ``qft_cli``, and the stages
import only downwards (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import qft_cli

ROOT = Path(qft_cli.__file__).parent
#: Each stage and the stages it may import (besides itself); docs/architecture.md draws the same.
ALLOWED = {
    "system": set(),
    "runs": {"system"},
    "models": {"runs", "system"},
    "data": {"models", "runs", "system"},
    "measure": {"models", "data", "runs", "system"},
    "train": {"measure", "models", "data", "runs", "system"},
    "report": {"measure", "train", "runs", "system"},
    "sweep": {"runs", "system"},
    "demo": {"measure", "train", "report", "data", "models", "runs", "system"},
    "cli": {"sweep", "demo", "measure", "train", "report", "data", "models", "runs", "system"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """qft modules imported by ``name`` (module-level and inside functions), resolved to modules."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
                break
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_stages_import_only_downwards():
    bad = []
    for module, targets in _graph().items():
        stage = _stage(module)
        if stage not in ALLOWED:
            continue
        for target in targets:
            other = _stage(target)
            if other not in (stage, "root") and other not in ALLOWED[stage]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the one-way rule (docs/architecture.md): " + ", ".join(sorted(bad))


def test_every_module_belongs_to_a_stage():
    loose = sorted(m for m in _modules() if _stage(m) not in ALLOWED and m.count(".") == 1
                   and m not in ("qft_cli.__main__",))
    assert not loose, f"modules outside the stage folders: {loose} (add them to a stage and to docs/architecture.md)"


def test_the_check_finds_a_circle(tmp_path):
    """The walker itself: a two-module circle written here is found (so the test above can fail)."""
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n")
    known = {"pkg.a", "pkg.b"}
    assert _imports("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}
    assert _imports("pkg.b", tmp_path / "b.py", known) == {"pkg.a"}
