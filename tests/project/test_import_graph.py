"""No import cycle anywhere in the tree: every ``import`` of every module of the package (module level and the
lazy ones inside functions alike, since a lazy import that closes a loop is a cycle waiting for the first
caller) forms a graph, read statically from the source, that must have no strongly connected component of
more than one module. The folder -> package mapping is read from setup.py's ``MAPPED``, the one rule."""
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[2]


def _mapping() -> Dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MAPPED" for t in node.targets):
            mapped = ast.literal_eval(node.value)
            return {"beit3_plugins": "beit3_plugins", **{folder: f"beit3_plugins.{name}" for name, folder in mapped.items()},
                    "examples/beit3_plugin_example/beit3_plugin_example": "beit3_plugin_example"}
    raise AssertionError("setup.py has no MAPPED")


def _modules() -> Dict[str, Path]:
    modules = {}
    for folder, package in _mapping().items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """Modules of the tree that ``module`` imports anywhere in its body."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in graph:
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycle_anywhere_in_the_tree():
    modules = _modules()
    assert len(modules) > 80 and "beit3_plugins.zoo.entries" in modules and "beit3_plugins.pipelines.factory" in modules
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "beit3_plugins.registry" in graph["beit3_plugins.zoo.entries"]        # the graph sees real edges
    assert "beit3_plugins.data.images" in graph["beit3_plugins.pipelines.base"]  # lazy ones included
    assert _cycles(graph) == []


def test_the_checker_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
