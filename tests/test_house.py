"""The shape of the package: no import cycles, every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crowdtk"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The crowdtk modules ``name`` imports anywhere in its body (function-level imports included:
    a lazy import still ties the two modules together)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            candidates = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_import_cycle() -> None:
    # A package's __init__ re-exporting its own modules is not a cycle of concerns; imports
    # between different modules are.
    graph = {
        m: {i for i in _imports(m) if not (MODULES[m].name == "__init__.py" and _package_of(m) == i.rpartition(".")[0])}
        for m in MODULES
    }
    graph = {m: {i for i in deps if i != "crowdtk"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("reverse", [False, True], ids=["sorted", "reversed"])
def test_every_module_imports_in_any_order(reverse: bool) -> None:
    """In a fresh interpreter, in two opposite orders: no module may rely on another being imported first."""
    code = ";".join(f"import {m}" for m in sorted(MODULES, reverse=reverse))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_formats_leaves_the_umask_alone_at_import() -> None:
    code = "import os; os.umask(0o027); import crowdtk.formats, crowdtk.files; print(oct(os.umask(0)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0o27"
