"""The package's shape (docs/layout.md) holds: a short top floor, no nn.Module in a top-level module, no import
circle among msvit's modules (imports inside functions counted), nothing importing the package face from inside,
no function over 80 lines and no module over 400."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "msvit"
MAX_FUNCTION, MAX_MODULE, MAX_TOP_ENTRIES = 80, 400, 15


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported(name: str, path: Path) -> set[str]:
    """msvit's modules that `name` imports anywhere in its file (inside functions too), with the packages that
    importing them runs first (less `name`'s own packages, which run before it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()  # `from . import lif`
            targets |= submodules
            if len(submodules) < len(node.names):
                targets.add(base)
    own = set(ancestors(name))
    implied = {package for target in targets for package in ancestors(target) if package not in own}
    return (targets | implied) & MODULES.keys() - {name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph` (strongly connected components of more than one module), by Tarjan's
    algorithm."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_sees_function_level_and_relative_imports():
    assert "msvit.neurons.lif_cpu" in imported("msvit.neurons.lif", MODULES["msvit.neurons.lif"])
    assert {"msvit.models", "msvit.models._registry"} <= imported("msvit.config.checks", MODULES["msvit.config.checks"])
    assert "msvit.neurons" not in imported("msvit.neurons.lif", MODULES["msvit.neurons.lif"])  # its own package


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert circles({name: imported(name, path) for name, path in MODULES.items()}) == []


def test_nothing_inside_imports_the_package_face():
    assert [name for name, path in MODULES.items() if name != "msvit" and "msvit" in imported(name, path)] == []


def test_a_short_top_floor_without_modules_of_layers():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert len(top) <= MAX_TOP_ENTRIES, top
    for path in PACKAGE.glob("*.py"):
        classes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)]
        bases = {ast.unparse(base) for node in classes for base in node.bases}
        assert not bases & {"nn.Module", "torch.nn.Module"}, f"{path.name} defines a module: move it to a subpackage"


def test_short_functions_and_modules():
    long = []
    for name, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE:
            long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []
