"""The package's import graph has no cycle (ARCHITECTURE.md: each layer imports only the layers
below it), and the read side (analysis, leaderboards, results) imports nothing from the runner.

Every import counts, those inside functions too: a late import that dodges a cycle at start-up is
still a cycle in the design. ``from X import name`` is an edge to the module ``X.name`` when that is
a module, else to ``X``; relative imports are resolved. A parent package that Python runs first
(``vtab_lily.adapters`` before ``vtab_lily.adapters.lily``) is not an edge of the importer: a
package's ``__init__`` importing its own submodules is how packages are built.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vtab_lily"
RUNNER = ("vtab_lily.run", "vtab_lily.runconfig", "vtab_lily.runexec", "vtab_lily.runbatch", "vtab_lily.official",
          "vtab_lily.train", "vtab_lily.train_setup", "vtab_lily.sweep")
READERS = ("vtab_lily.analyze", "vtab_lily.leaderboard", "vtab_lily.results")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path] | set[str], source: str | None = None) -> set[str]:
    """The package modules ``path`` (or ``source``, as if it were that file) imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    found = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            found |= subs
            if len(subs) < len(node.names):  # names defined in the module (or its __init__) itself
                found.add(target)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_the_cycle_finder_finds_cycles():  # the checker itself can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_level_imports_are_edges():
    known = {"vtab_lily.x", "vtab_lily.y", "vtab_lily.p", "vtab_lily.p.z", "vtab_lily.p.w"}
    source = ("import os\nfrom .p.w import thing\n"
              "def f():\n    from .y import g\n    from .p import z\n    import vtab_lily.p\n")
    assert imports(PACKAGE / "x.py", known, source) == {"vtab_lily.y", "vtab_lily.p.z", "vtab_lily.p", "vtab_lily.p.w"}
    assert imports(PACKAGE / "p" / "w.py", known, "from .. import y\nfrom . import z\n") == {
        "vtab_lily.y", "vtab_lily.p.z"}


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert found == [], "import cycles (each line one set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_read_side_imports_nothing_from_the_runner():
    edges = graph()
    bad = sorted(f"{m} -> {i}" for m, deps in edges.items() if _within(m, READERS)
                 for i in deps if _within(i, RUNNER))
    assert bad == [], "analysis/leaderboards/results reach into the runner:\n" + "\n".join(bad)
