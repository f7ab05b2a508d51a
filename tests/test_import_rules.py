"""The package's import rules, read from the source with ``ast`` (nothing is imported).

1. The libraries (``LIBRARIES``) never import the layers that compose them: the run config
   (``boxsup.config``), ``platform``, ``trainers``, the CLI and the demos. They take plain values and
   typed objects; reading a config file is the caller's business.
2. ``boxsup.assign`` (the label update: numpy on candidate pools) imports only itself and the bottom
   modules in ``BELOW_ASSIGN``, which themselves import nothing but each other.
3. No import cycle between boxsup modules, nor between its packages (``boxsup.data``, ...; a top-level
   module such as ``boxsup.config`` counts as one): the layers stack.

Every import statement counts: at module level, inside functions and under ``if TYPE_CHECKING:``.
An import deferred into a function still makes one module depend on the other, so a cycle through
one is still a cycle in the design (and an import-order accident waiting for someone to hoist it).
``from X import Y`` is an edge to ``X.Y`` when that is a module, else to ``X``. Importing a module
does not count as importing its parent packages' ``__init__`` (those only re-export their modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "boxsup"

# Packages that are plain libraries. serving counts: it imports data, models, evaluation and utils
# only, and the MLflow model's loader (serving.mlflow_model) must work without the run config.
LIBRARIES = ("boxsup.data", "boxsup.proposals", "boxsup.assign", "boxsup.models", "boxsup.evaluation",
             "boxsup.serving", "boxsup.utils")
# What the libraries must not import: the layers above them.
ABOVE_LIBRARIES = ("boxsup.config", "boxsup.platform", "boxsup.trainers", "boxsup.cli", "boxsup.demo",
                   "boxsup.demo_extra_boxes")

# What boxsup.assign may import besides itself: errors and utils (the package's bottom), the types it
# works on (boxes, annotations and label constants; candidate pools) and the pools' file format.
BELOW_ASSIGN = ("boxsup.errors", "boxsup.utils", "boxsup.data.annotations", "boxsup.proposals.pool",
                "boxsup.proposals.store")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from`` import (relative ones resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(name: str) -> dict[str, int]:
    """The boxsup modules ``name`` imports (anywhere in it), each with the line of its first import."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(MODULES[name].read_text(), str(MODULES[name]))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            if target == "boxsup" or target.startswith("boxsup."):
                while target not in MODULES:  # `import boxsup.x.y` of a name that is not a module: its module
                    target = target.rpartition(".")[0]
                if target != name:
                    found.setdefault(target, node.lineno)
    return found


GRAPH: dict[str, dict[str, int]] = {name: imports_of(name) for name in MODULES}


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def edge(importer: str, imported: str) -> str:
    path = MODULES[importer].relative_to(PACKAGE.parent)
    return f"{importer} -> {imported} ({path}:{GRAPH[importer][imported]})"


def failure(rule: str, lines: list[str], what: str = "offending import(s)") -> str:
    return f"{rule}; {len(lines)} {what}:\n  " + "\n  ".join(lines)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the package's ~100 modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    """Guards the test itself: it sees the package, follows `from X import Y` to modules and sees deferred imports."""
    assert {"boxsup.config", "boxsup.cli", "boxsup.data.sources", "boxsup.evaluation.crf"} <= set(MODULES)
    assert "boxsup.errors" in GRAPH["boxsup.config"]
    assert "boxsup.platform.launch" in GRAPH["boxsup.cli"]  # imported inside a function


def test_libraries_do_not_import_the_layers_above_them():
    bad = [edge(a, b) for a, targets in sorted(GRAPH.items()) if within(a, LIBRARIES)
           for b in sorted(targets) if within(b, ABOVE_LIBRARIES)]
    assert not bad, failure(f"a library ({', '.join(LIBRARIES)}) imports {', '.join(ABOVE_LIBRARIES)}", bad)


def test_assign_imports_only_itself_and_the_bottom_modules():
    bad = [edge(a, b) for a, targets in sorted(GRAPH.items()) if within(a, ("boxsup.assign",))
           for b in sorted(targets) if not within(b, ("boxsup.assign", *BELOW_ASSIGN))]
    assert not bad, failure(f"boxsup.assign imports beyond itself and {', '.join(BELOW_ASSIGN)}", bad)


def test_the_bottom_modules_are_the_bottom():
    bad = [edge(a, b) for a, targets in sorted(GRAPH.items()) if within(a, BELOW_ASSIGN)
           for b in sorted(targets) if not within(b, BELOW_ASSIGN)]
    assert not bad, failure(f"a bottom module ({', '.join(BELOW_ASSIGN)}) imports beyond them", bad)


def test_no_import_cycles():
    found = cycles(GRAPH)
    lines = [f"among {', '.join(c)}:\n    " + "\n    ".join(edge(a, b) for a in c for b in sorted(GRAPH[a]) if b in c)
             for c in found]
    assert not found, failure("boxsup modules import each other in a cycle", lines, "cycle(s), each with its imports")


def layer(name: str) -> str:
    """The package a module belongs to (``boxsup.data.voc`` -> ``boxsup.data``), or a top-level module itself."""
    return ".".join(name.split(".")[:2])


def test_no_import_cycles_between_packages():
    layers: dict[str, dict[str, int]] = {layer(name): {} for name in GRAPH}
    for a, targets in GRAPH.items():
        layers[layer(a)].update({layer(b): 1 for b in targets if layer(b) != layer(a)})
    found = cycles(layers)
    lines = [f"among {', '.join(c)}:\n    " + "\n    ".join(edge(a, b) for a in sorted(GRAPH) for b in sorted(GRAPH[a])
                                                         if layer(a) in c and layer(b) in c and layer(a) != layer(b))
             for c in found]
    assert not found, failure("boxsup packages import each other in a cycle", lines, "cycle(s), each with its imports")


def test_a_cycle_is_found_and_named():
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


# ---------------------------------------------------------------- docs/architecture.md's picture

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
EVERYWHERE = ("boxsup", "boxsup.errors", "boxsup.utils")  # imported by every layer (boxsup: __version__): left out


def layer_edges() -> list[tuple[str, str]]:
    """The package graph without ``EVERYWHERE``, transitively reduced (an edge implied by a longer path is
    dropped): ``a --> b`` means a imports b directly and through no other layer."""
    layers: dict[str, set[str]] = {}
    for a, targets in GRAPH.items():
        if layer(a) in EVERYWHERE or a == "boxsup":
            continue
        layers.setdefault(layer(a), set()).update(layer(b) for b in targets
                                                  if layer(b) not in (layer(a), *EVERYWHERE))

    def reachable(start: str, skipped: tuple[str, str]) -> set[str]:
        seen: set[str] = set()
        todo = [b for b in layers[start] if (start, b) != skipped]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(layers.get(node, ()))
        return seen

    return [(a, b) for a in sorted(layers) for b in sorted(layers[a]) if b not in reachable(a, (a, b))]


def test_the_architecture_picture_is_the_code():
    """The mermaid graph in docs/architecture.md is the package graph the source has (regenerate it from
    the failure message when the layers change)."""
    expected = [f"    {a.removeprefix('boxsup.')} --> {b.removeprefix('boxsup.')}" for a, b in layer_edges()]
    text = ARCHITECTURE.read_text()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0].splitlines()
    drawn = [line for line in block if "-->" in line]
    assert drawn == expected, "docs/architecture.md's graph should read:\n" + "\n".join(expected)
