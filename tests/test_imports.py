"""The package's shape: no import circle and no private name used across modules in bnsweep/ (function-local
imports count: a circle held together by a late import is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bnsweep"


def modules(root: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package's modules it imports anywhere in its text; and each private cross-module use."""
    mods = modules(root)
    package = root.name
    edges: dict[str, set[str]] = {}
    private: list[str] = []
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
                    if alias.name.startswith("_") and full not in mods:
                        private.append(f"{name} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == package}
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.attr.startswith("_") and not node.attr.startswith("__")
                  and f"{package}.{node.value.id}" in mods):
                private.append(f"{name} uses {node.value.id}.{node.attr}")
        edges[name] = {d for d in deps if d in mods and d not in (name, package)}
    return edges, private


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            found = visit(dep)
            if found:
                return found
        stack.pop()
        done.add(node)
        return None

    for node in sorted(edges):
        found = visit(node)
        if found:
            return found
    return None


def test_bnsweep_has_no_import_circle_and_no_private_cross_module_import():
    edges, private = import_graph(PACKAGE)
    assert find_circle(edges) is None, " -> ".join(find_circle(edges))
    assert not private, private


def test_the_check_finds_a_circle_and_a_private_import(tmp_path):
    pkg = tmp_path / "bnsweep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from bnsweep import b\n")
    (pkg / "b.py").write_text("def f():\n    from bnsweep.c import g  # a late import still closes the circle\n")
    (pkg / "c.py").write_text("import bnsweep.a\nfrom bnsweep.b import _hidden\n")
    edges, private = import_graph(pkg)
    assert find_circle(edges) == ["bnsweep.a", "bnsweep.b", "bnsweep.c", "bnsweep.a"]
    assert private == ["bnsweep.c imports bnsweep.b._hidden"]
    (pkg / "c.py").write_text("X = 1\n")
    assert find_circle(import_graph(pkg)[0]) is None
