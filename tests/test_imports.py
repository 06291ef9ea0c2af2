"""The package's modules import each other without cycles: every import statement counts, at module level or inside a
function (a deferred import still ties two modules together), under TYPE_CHECKING too. The package's root
(continual_lm/__init__.py) is the public facade: it names its exports as strings and imports nothing of the package,
and no module imports it."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "continual_lm"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (an imported name that is a submodule counts as it)."""
    root = package.name
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names]
            else:
                continue
            targets |= {known(name) for name in names if name == root or name.startswith(root + ".")}
        graph[module] = targets - {module, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["continual_lm.train.loop"]  # the graph is really built
    assert cycles(graph) == []


def test_the_package_root_imports_nothing_and_nothing_imports_it():
    graph = import_graph(PACKAGE)
    assert graph["continual_lm"] <= {"continual_lm.version"}
    assert [m for m, targets in graph.items() if "continual_lm" in targets] == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
