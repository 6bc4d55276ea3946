"""Packages depend one way: no import cycles, and ``profilers`` imports nothing of ``dac_search``.

The graph is read from the source (every ``import``, lazy ones inside functions included), with an edge
to each parent package a dotted import executes: ``from a.b.c import x`` runs ``a/b/__init__.py`` too,
which is how a cycle hides behind a lucky import order (a module's own parent packages are left out:
they are always initialised first). The two roots' own ``__init__`` files, which
re-export the public names, are the only nodes left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dac_search", "profilers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports, each with the sub-packages on the way to it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    edges: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(2, len(parts) + 1):  # a.b, a.b.c, ...: each __init__ on the way runs
            prefix = ".".join(parts[:depth])
            if prefix in known:
                edges.add(prefix)
    ancestors = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)}
    return edges - ancestors - {name}  # a module's own packages are always initialised before it


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(path, name, known) for name, path in modules.items() if name not in PACKAGES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` if there is any (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif child in graph and state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif child in graph and not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_walker_finds_a_cycle_through_a_package_init() -> None:
    graph = {"p.plan": {"p.decompose"}, "p.decompose": {"p.decompose.surgery"}, "p.decompose.surgery": {"p.plan"}}
    assert _cycle(graph) == ["p.plan", "p.decompose", "p.decompose.surgery", "p.plan"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    graph = _graph()
    assert "dac_search.plan" in graph and graph["dac_search.decompose.surgery"] >= {"dac_search.plan"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_profilers_import_nothing_of_dac_search() -> None:
    offenders = {name: sorted(t for t in targets if t.startswith("dac_search"))
                 for name, targets in _graph().items() if name.startswith("profilers")}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_profilers_import_with_dac_search_absent() -> None:
    """The package really loads on its own: ``dac_search`` is made unimportable in a fresh interpreter."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dac_search' or name.startswith('dac_search.'):\n"
        "            raise ImportError('dac_search is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import profilers, profilers.pool, profilers.runner\n"
        "print(sorted(m for m in sys.modules if m.startswith('dac_search')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
