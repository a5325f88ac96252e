"""The task registry is pure data: no import cycle between vtab_lily.tasks and the data layer."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vtab_lily"


def test_tasks_imports_without_the_data_layer():
    # vtab_lily.data blocked: importing it raises; the registry (demo suite included) must not need it
    code = ("import sys; sys.modules['vtab_lily.data'] = None\n"
            "from vtab_lily.tasks import suite, get_task\n"
            "assert get_task('count', 'demo').num_classes == 5 and len(suite('vtab')) == 19\n"
            "assert not any(m.startswith('vtab_lily.data') for m in sys.modules if sys.modules[m])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere (lazy imports inside functions count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vtab_lily")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vtab_lily"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def test_data_layer_and_registry_have_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    ours = {m for m in modules if m == "vtab_lily.tasks" or m.startswith("vtab_lily.data")}
    graph = {m: {i for i in _imports(modules[m]) if i in modules and i != m} for m in ours}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and nxt in graph and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    cycles = [m for m in ours if reaches(m, m, set())]
    assert cycles == [], f"import cycle through {cycles}"
    assert "vtab_lily.data.demo" not in {i for i in _imports(modules["vtab_lily.tasks"])}
