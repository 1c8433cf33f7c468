"""The package's shape (DESIGN.md "Layout"): no import circle, the core never imports the toy world, small files."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "streamr1"
MAX_LINES = 520  # "a file past about 500 lines is two concepts"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """``streamr1.*`` modules imported by ``path`` (at module level only, or anywhere), ``TYPE_CHECKING`` left out."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("streamr1"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamr1"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            if not top_level_only or isinstance(node, (ast.If, ast.Try, ast.With)):
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])

    visit(tree.body)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(path, top_level_only) if m in files} for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles of a module graph (depth-first search; a package importing its own submodules is skipped)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + ".") and node in graph.get(dep, ()):
                continue  # streamr1.models.wan -> streamr1.models -> streamr1.models.wan: the package's own re-export
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep] if dep in stack else [node, dep])
            elif dep not in state:
                dfs(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name, [name])
    return cycles


def test_cycle_finder_on_hand_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"p": {"p.x"}, "p.x": {"p"}}) == []


def test_no_import_circle_at_module_level():
    cycles = find_cycles(_graph(top_level_only=True))
    assert not cycles, f"import circles: {cycles}"


def test_the_core_never_imports_the_toy_world():
    graph = _graph(top_level_only=False)
    offenders = {name: sorted(d for d in deps if d.startswith("streamr1.toy"))
                 for name, deps in graph.items() if not name.startswith("streamr1.toy")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"framework modules importing streamr1.toy: {offenders}"


def test_no_source_file_is_two_concepts():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"
