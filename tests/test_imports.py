"""The import graph of src/convnet, read from the source (every import, also those
inside functions): no cycle between modules, and the library never imports the
application (``convnet.app``)."""
from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "convnet"


def _modules(root: Path) -> dict:
    """Module name -> (is a package, its syntax tree)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (package, ast.parse(path.read_text()))
    return modules


def _base(modules: dict, module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package, _ = modules[module]
    base = module if package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def import_graph(root: Path = SOURCE) -> dict[str, set[str]]:
    """Module -> the modules it imports. ``from package import name`` leads to the
    module that defines ``name``: the submodule ``package.name``, the module a package's
    ``__init__`` re-exports it from, or the ``__init__`` itself; a name the ``__init__``
    does not bind is a submodule outside the tree (a compiled extension)."""
    modules = _modules(root)
    bound, reexported = {}, {}
    for name, (package, tree) in modules.items():
        if not package:
            continue
        bound[name], reexported[name] = set(), {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound[name].add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bound[name].update(n.id for t in targets for n in ast.walk(t)
                                   if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    bound[name].add((alias.asname or alias.name).split(".")[0])
                    if isinstance(node, ast.ImportFrom):
                        reexported[name][alias.asname or alias.name] = (
                            _base(modules, name, node), alias.name)

    def target(base: str, name: str, seen=()) -> str:
        if f"{base}.{name}" in modules or (base in bound and name not in bound[base]):
            return f"{base}.{name}"
        if name in reexported.get(base, {}) and base not in seen:
            origin, original = reexported[base][name]
            if origin in modules:
                return target(origin, original, seen + (base,))
        return base

    graph = {name: set() for name in modules}
    for name, (_, tree) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imported = alias.name
                    while imported and imported not in modules:
                        imported = imported.rpartition(".")[0]
                    if imported:
                        graph[name].add(imported)
            elif isinstance(node, ast.ImportFrom):
                base = _base(modules, name, node)
                if base.split(".")[0] == root.name:
                    graph[name].update(target(base, alias.name) for alias in node.names)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "convnet.app.train" in graph and "convnet.data.loader" in graph
    found = cycles(graph)
    detail = [f"{c}: " + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
              for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_the_library_never_imports_the_application():
    graph = import_graph()
    wrong = [f"{a} -> {b}" for a, targets in graph.items() for b in sorted(targets)
             if not a.startswith(("convnet.app", "convnet.__main__"))
             and b.startswith("convnet.app")]
    assert not wrong, "library modules import convnet.app: " + ", ".join(wrong)


def test_a_cycle_is_found(tmp_path):
    """The check itself: two modules that import each other (one inside a function),
    and a package whose __init__ re-exports a name, are read as they import."""
    pkg = tmp_path / "convnet"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .core import thing\n__version__ = '1'\n")
    (pkg / "core.py").write_text("thing = 1\n")
    (pkg / "app" / "__init__.py").write_text("")
    (pkg / "app" / "a.py").write_text("from . import b\n")
    (pkg / "app" / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "lib.py").write_text("from . import thing, __version__, _compiled\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["convnet.app.a", "convnet.app.b"]]
    assert graph["convnet.lib"] == {"convnet.core", "convnet", "convnet._compiled"}
