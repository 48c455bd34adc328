"""The import structure of sr4: no cycles, and layers that only import downwards (an import-linter of our own).

Every import statement counts, also those inside functions (a cycle hidden in a function is still a cycle).
``from package import name`` is an edge to the submodule when `name` is one, else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sr4"

#: layers, lowest first: a module may import its own layer and those below, never one above.
LAYERS = [
    ["sr4.errors", "sr4.utils", "sr4.optional", "sr4.ops", "sr4.checkpoints", "sr4.image"],
    ["sr4.networks", "sr4.models"],
    ["sr4.refiner", "sr4.metrics", "sr4.integrations"],
    ["sr4.pipeline", "sr4.training"],
    ["sr4.web"],
    ["sr4.cli", "sr4.__main__"],
]
#: pairs of the same layer that must not import each other either.
FORBIDDEN = [("sr4.training", "sr4.pipeline"), ("sr4.pipeline", "sr4.training"), ("sr4.metrics", "sr4.refiner"),
             ("sr4.refiner", "sr4.metrics"), ("sr4.networks", "sr4.models")]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if m != "sr4" and _layer(m) is None] == []


def test_layers_only_import_downwards():
    graph = import_graph()
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if m != "sr4" and t != "sr4" and _layer(t) > _layer(m)]
    assert upward == []
    crossing = [(m, t) for m, targets in graph.items() for t in targets for a, b in FORBIDDEN
                if _under(m, a) and _under(t, b)]
    assert crossing == []


def test_parsers_and_errors_import_only_the_standard_library():
    """What every command's start imports (all parsers are built) and the error types: no torch, numpy or PIL."""
    import subprocess
    import sys

    code = ("import sys; import sr4.errors, sr4.optional; from sr4.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]; assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
