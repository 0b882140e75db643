"""The package map as a test: imports only go down the floors, and no cycles.

docs/ARCHITECTURE.md draws the same map. A module may import its own package and any package on a lower floor;
imports inside functions count too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast

from package_map import FLOORS, PACKAGE, VIEWER_MAY_IMPORT, module_name


def unit(module: str) -> str:
    """``nanogpt_runner.runs.rundir`` -> ``runs``; a ground-floor module is its own unit."""
    return module.split(".")[1]


def floor(name: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if name in names)


def internal_imports() -> dict[str, set[str]]:
    """Every module of the package (dotted name) -> the modules of the package it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if module.startswith("nanogpt_runner.conf"):
            continue
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanogpt_runner"):
                targets.update(f"{node.module}.{alias.name}" if node.module.count(".") == 1 and
                               (PACKAGE / node.module.split(".")[1] / f"{alias.name}.py").exists() else node.module
                               for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("nanogpt_runner."))
        graph[module] = {t for t in targets if t.count(".") >= 1}
    return graph


def test_every_package_is_on_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "conf"}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    placed = set().union(*FLOORS) | {"viewer"}
    assert packages | modules <= placed, f"put {sorted((packages | modules) - placed)} on a floor (and in ARCHITECTURE)"


def test_imports_only_go_down():
    wrong = []
    for module, targets in internal_imports().items():
        if module == "nanogpt_runner":
            continue
        here = unit(module)
        for target in targets:
            there = unit(target)
            if there == here:
                continue
            allowed = there in VIEWER_MAY_IMPORT if here == "viewer" else \
                there != "viewer" and floor(there) < floor(here)
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    graph = internal_imports()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt in graph and not state.get(nxt) and (cycle := visit(nxt, [*trail, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if not state.get(start) and (cycle := visit(start, [])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
