"""The package's layering: data flows one way (common -> corruption -> revision -> robust -> baselines -> trainers
-> cli), so no module imports a later stage and no import cycle exists; no module grows past about 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "nnunet_noisylabels"
STAGES = ["common", "corruption", "revision", "robust", "baselines", "trainers", "cli", "nnunet_ext"]


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the modules of the package it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_noisylabels"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("nnunet_noisylabels")]
            deps |= {t for t in targets if t in modules}
        graph[name] = deps - {name}
    return graph


def _stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else -1  # package root: below all


def test_no_module_imports_a_later_stage():
    upward = [(m, d) for m, deps in _imports().items() for d in deps if _stage(d) > _stage(m)]
    assert not upward, upward


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_modules_stay_small():
    long = {str(p.relative_to(REPO_ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := p.read_text().count("\n")) > 500}
    assert not long, long
