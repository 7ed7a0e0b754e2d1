"""The dependency direction of docs/architecture.md: rewards, rollout -> pretraining -> learner -> services
(every import counts, deferred ones inside functions included), no import cycle between modules (the
imports that run when a module is imported: its top level, ``typing.TYPE_CHECKING`` blocks aside), and no
two modules that import each other in any way (deferred and ``TYPE_CHECKING`` imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYER = {"rewards": 0, "rollout": 0, "pretraining": 1, "learner": 2, "services": 3}
ALLOWED_SIDEWAYS = {("rollout", "rewards")}  # rollout may use rewards' types (DESIGN.md)


def _top_level(tree: ast.Module):
    """The statements that run at import time, ``if TYPE_CHECKING:`` blocks left out."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]
        else:
            yield node


def module_imports(import_time_only: bool = False) -> dict[str, set[str]]:
    """``{"rollout.engine": {"rollout.config", ...}}`` over every production module."""
    graph: dict[str, set[str]] = {}
    for pkg in LAYER:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            deps: set[str] = set()
            tree = ast.parse(path.read_text())
            for node in (_top_level(tree) if import_time_only else ast.walk(tree)):
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            graph[name] = {d for d in deps if d.split(".")[0] in LAYER}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, deps in module_imports().items():
        top = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if LAYER[other] > LAYER[top] or (LAYER[other] == LAYER[top] and other != top
                                              and (top, other) not in ALLOWED_SIDEWAYS):
                bad.append(f"{mod} imports {dep}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_modules():
    graph = module_imports(import_time_only=True)
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_two_modules_import_each_other_even_deferred():
    graph = module_imports()
    mutual = sorted({" <-> ".join(sorted((m, d))) for m, deps in graph.items() for d in deps if m in graph[d]})
    assert not mutual, "modules that import each other (put the shared piece where it belongs):\n" + "\n".join(mutual)
