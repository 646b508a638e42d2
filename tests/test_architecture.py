"""The package's shape: subpackages by pipeline stage, imports going one way.

Read from the import statements themselves (every ``import`` and ``from``,
at module level or inside a function), nothing guessed:

* ``core``      <- everything (diagnostics, symbolic sizes, the checked model)
* ``frontend``  -> core                  (never llvmlite or numpy: ``check`` stays light)
* ``backend``   -> core
* ``runtime``   -> backend, core
* ``api``       -> frontend, backend, runtime, core, data
* ``tools``     -> the public API (``convdsl``, ``convdsl.api``, ``convdsl.data``) and core

and no cycle among the modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "convdsl"

# the subpackages (or top-level modules) each one may import, besides itself
ALLOWED = {
    "core": set(),
    "frontend": {"core"},
    "backend": {"core"},
    "runtime": {"backend", "core"},
    "data": set(),
    "api": {"frontend", "backend", "runtime", "core", "data"},
    "tools": {"__init__", "api", "core", "data"},
    "__init__": {"core"},  # (its public names are imported lazily, by name: see convdsl/__init__.py)
    "__main__": {"tools"},
}
THIRD_PARTY = {  # what each part may import from outside the standard library
    "core": set(),
    "frontend": {"lark"},
    "backend": {"llvmlite", "numpy"},
    "runtime": {"numpy", "safetensors", "torch"},  # (both imported only to read a file of their format)
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute dotted names), with line numbers."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from . import x`` may name a submodule: count ``pkg.x`` where that is a module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if _is_module(sub) else mod, node.lineno))
    return out


def _is_module(dotted: str) -> bool:
    p = PKG.parent / Path(*dotted.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _part(dotted: str) -> str:
    """The part of the package a module belongs to: ``convdsl.backend.lower`` -> ``backend``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = sorted(p for p in PKG.rglob("*.py"))
GRAPH = {_module_name(p): _imports(p) for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_one_way(path):
    me = _part(_module_name(path))
    bad = []
    for mod, line in GRAPH[_module_name(path)]:
        top = mod.split(".")[0]
        if top == "convdsl":
            other = _part(mod)
            if other != me and other not in ALLOWED[me]:
                bad.append(f"{path.relative_to(PKG)}:{line}: {me} imports {mod}")
        elif me in THIRD_PARTY and top not in sys.stdlib_module_names and top not in THIRD_PARTY[me]:
            bad.append(f"{path.relative_to(PKG)}:{line}: {me} imports {top}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {m: {i for i, _ in deps if i.startswith("convdsl") and i in GRAPH and i != m}
             for m, deps in GRAPH.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for m in edges:
        edges[m] = {d for d in edges[m] if not m.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_checker_loads_no_llvm_or_numpy():
    """``convdsl check`` runs the front end alone (what is imported, observed in a fresh process)."""
    code = ("import sys, convdsl\n"
            "r = convdsl.check_file('examples/lenet.conv')\n"
            "assert r.ok, r\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('llvmlite', 'numpy'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_rules_are_seen():
    """The graph is read at all: the known edges appear (a parser that saw nothing would pass)."""
    assert ("convdsl.core.model", ) and any(m == "convdsl.core.model" for m, _ in GRAPH["convdsl.backend.lower"])
    assert any(m == "convdsl.backend.loopir" for m, _ in GRAPH["convdsl.backend.codegen"])
    assert any(m.startswith("llvmlite") for m, _ in GRAPH["convdsl.backend.codegen"])


def test_no_pickle_anywhere():
    """No module imports pickle (or its kin), and lark is never asked for its table cache,
    which is a pickle."""
    for path in sorted(PKG.rglob("*.py")):
        for mod, line in _imports(path):
            assert mod.split(".")[0] not in ("pickle", "cPickle", "dill", "shelve", "marshal"), (path, line)
        text = path.read_text()
        assert "allow_pickle=True" not in text, path
    assert "cache=" not in (PKG / "frontend" / "parse.py").read_text()
