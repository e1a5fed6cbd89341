"""The package's shape: no import circle and no private name used across modules in bnsweep/ (function-local
imports count: a circle held together by a late import is still a circle); its layers, each module importing only
from its own layer or below; the orchestration never importing the training code except where a trial is run;
and analysis/ reading bnsweep's variant table and nothing else of bnsweep."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bnsweep"
ANALYSIS = PACKAGE.parent / "analysis"

# bnsweep's layers, lowest first. A module imports from its own layer or below, never above; a new module must be
# placed here (the test fails on a module no layer names). A name not (yet) in the package is passed over.
LAYERS = {
    "base": ["errors", "variants", "rules", "memory"],  # no torch, no Ray: what every layer reads
    "config": ["config", "schema", "cohorts"],  # a trial's options, the tables' columns, who may be fused
    "storage": ["records", "lock", "checkpoints"],  # the results directory
    "training": ["ghost", "norms", "data", "models", "optim", "losses", "dynamics", "curvature", "numerics", "probes",
                 "provenance", "trial", "fused"],  # torch: one trial (or a fused cohort), in one process
    "planning": ["sweep", "plan", "estimate", "schedule"],  # which trials, in what order, how long
    "running": ["worker", "executor"],  # Ray: the one executor and the function its workers run
    "reporting": ["status"],  # what a person reads of the records
    "searching": ["boundary"],  # the critical-learning-rate search: a plan that reads its own records
    "top": ["driver", "suite", "cli", "__main__", "", "bench"],  # the faces: `bnsweep run`, the CLI, Python, benchmarks
}
# Orchestration modules that run a trial, and so may import the training layer (lazily, in the worker or the
# timing pass); every other module above the training layer stays free of it (and of torch's start-up cost).
RUNS_TRIALS = {"worker", "schedule", "cli", "bench"}


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


def layer_of(module: str, package: str = "bnsweep") -> str | None:
    """The layer of bnsweep.X (bench.* by its folder; the package itself is ''), or None if no layer names it."""
    name = module.removeprefix(package).removeprefix(".").split(".")[0]
    return next((layer for layer, names in LAYERS.items() if name in names), None)


def layer_breaks(edges: dict[str, set[str]], package: str = "bnsweep") -> list[str]:
    """Each import that runs up the layers or from the orchestration into the training code, and each module that
    no layer places."""
    order = list(LAYERS)
    found = [f"{m} is in no layer of tests/test_imports.py LAYERS" for m in sorted(edges)
             if layer_of(m, package) is None]
    for module, deps in sorted(edges.items()):
        mine = layer_of(module, package)
        if mine is None:
            continue
        short = module.removeprefix(package).removeprefix(".").split(".")[0]
        for dep in sorted(deps):
            theirs = layer_of(dep, package)
            if theirs is None:
                continue
            if order.index(theirs) > order.index(mine):
                found.append(f"{module} ({mine}) imports {dep} ({theirs}), a layer above it")
            elif (theirs == "training" and order.index(mine) > order.index("training")
                  and short not in RUNS_TRIALS):
                found.append(f"{module} ({mine}) imports {dep}: the training code, though it runs no trial")
    return found


def test_bnsweep_keeps_its_layers():
    edges, _ = import_graph(PACKAGE)
    assert not layer_breaks(edges), layer_breaks(edges)


def test_the_layer_check_finds_an_upward_import_a_training_import_and_an_unplaced_module(tmp_path):
    pkg = tmp_path / "bnsweep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "records.py").write_text("from bnsweep.errors import BnsweepError\n")
    (pkg / "errors.py").write_text("")
    (pkg / "trial.py").write_text("from bnsweep import records\n")
    (pkg / "executor.py").write_text("def f():\n    from bnsweep.status import duration\n")
    (pkg / "status.py").write_text("from bnsweep.boundary import report\n")
    (pkg / "boundary.py").write_text("from bnsweep import records\n")
    (pkg / "driver.py").write_text("def f():\n    from bnsweep.trial import run\n")
    assert layer_breaks(import_graph(pkg)[0]) == [
        "bnsweep.driver (top) imports bnsweep.trial: the training code, though it runs no trial",
        "bnsweep.executor (running) imports bnsweep.status (reporting), a layer above it",
        "bnsweep.status (reporting) imports bnsweep.boundary (searching), a layer above it",
    ]
    (pkg / "status.py").write_text("from bnsweep.driver import f\n")
    (pkg / "newthing.py").write_text("")
    assert layer_breaks(import_graph(pkg)[0]) == [
        "bnsweep.newthing is in no layer of tests/test_imports.py LAYERS",
        "bnsweep.driver (top) imports bnsweep.trial: the training code, though it runs no trial",
        "bnsweep.executor (running) imports bnsweep.status (reporting), a layer above it",
        "bnsweep.status (reporting) imports bnsweep.driver (top), a layer above it",
    ]


def test_analysis_reads_the_variant_table_and_nothing_else_of_bnsweep():
    """analysis/ reads the Parquet results, never the training code: of bnsweep it may import the torch-free
    variant table (names, order, colours) alone."""
    edges, _ = import_graph(ANALYSIS)
    imported = set()
    for path in ANALYSIS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bnsweep":
                imported |= {f"{node.module}.{a.name}" if node.module == "bnsweep" else node.module
                             for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.split(".")[0] == "bnsweep"}
    assert imported <= {"bnsweep.variants"}, imported
    assert find_circle(edges) is None
