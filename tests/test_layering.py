"""Layering (DESIGN.md principle 9): the library half (core, ops, rules, graph, metrics) never
imports the experiment half (runner, experiments, papers), checked module by module in a fresh
interpreter; and no two packages of biograd import each other (the package-level import graph,
read from the source with ``ast``, has no cycle)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "biograd"
LIBRARY = ("core", "ops", "rules", "graph", "metrics")
EXPERIMENT = ("biograd.runner", "biograd.experiments", "biograd.papers", "biograd.cli")

# imports only add to sys.modules, so one interpreter importing every library module in turn
# sees each module's own effect: the first one after which an experiment module is loaded
PROBE = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    out[name] = sorted(m for m in sys.modules if m.startswith(tuple(%r)))
print(json.dumps(out))
"""


def _modules(package: str) -> list[str]:
    root = SRC / package
    return sorted(
        "biograd." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in root.rglob("*.py"))


def test_library_modules_never_import_the_experiment_half() -> None:
    names = [n for package in LIBRARY for n in _modules(package)]
    assert len(names) > 40
    res = subprocess.run([sys.executable, "-c", PROBE % (EXPERIMENT,), *names],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.splitlines()[-1])
    for name in names:  # in import order: the first offender is named
        assert loaded[name] == [], f"importing {name} imports {loaded[name]}"


def test_the_probe_sees_an_experiment_import() -> None:
    res = subprocess.run([sys.executable, "-c", PROBE % (EXPERIMENT,), "biograd.plots",
                          "biograd.experiments.compare"], capture_output=True, text=True,
                         timeout=300)
    loaded = json.loads(res.stdout.splitlines()[-1])
    assert loaded["biograd.plots"] == []
    assert "biograd.runner.train" in loaded["biograd.experiments.compare"]


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "biograd" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    """biograd modules imported anywhere in ``path`` (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("biograd.")}


def package_graph() -> dict[str, set[str]]:
    """Which biograd packages (or top-level modules) each one imports."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("").parts
        if rel == ("__init__",) or rel == ("__main__",):
            continue  # the package root re-exports the public API and runs the CLI
        me = rel[0]
        for module in _imports(path):
            other = _package_of(module)
            if other and other != me and ((SRC / other).is_dir() or (SRC / f"{other}.py").exists()):
                graph.setdefault(me, set()).add(other)
    return graph


def test_no_import_cycles_between_packages() -> None:
    graph = package_graph()
    assert "runner" in graph["experiments"] and "rules" not in graph.get("core", set())
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle between packages: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a path back to its start), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_modules() -> None:
    """Module by module, with imports inside functions counted (a lazy import hides a cycle,
    it does not remove it); package ``__init__`` files only re-export and are left out."""
    modules = {}
    for path in SRC.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        modules[".".join(("biograd", *path.relative_to(SRC).with_suffix("").parts))] = path
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    assert "biograd.experiments.hardware" in graph["biograd.experiments.store"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])
