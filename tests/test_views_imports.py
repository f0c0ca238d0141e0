"""The views stay apart from the report and the pipeline: the import rule of ``xfdiff/views/__init__.py``.

Imports are read from the source (module level and inside functions alike;
only ``if TYPE_CHECKING:`` blocks are left out, since they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xfdiff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _runtime_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """xfdiff modules that ``name`` imports when it runs (any nesting level, TYPE_CHECKING blocks excluded)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(base: str, names: list[str]) -> None:
        if not base.startswith("xfdiff"):
            return
        for n in names:  # `from pkg import mod` names a module; `from mod import obj` names the module itself
            full = f"{base}.{n}"
            found.add(full if full in known else base)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xfdiff"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            resolve(base, [a.name for a in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return {m for m in found if m in known}


def _graph() -> dict[str, set[str]]:
    known = _known_modules()
    return {name: _runtime_imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def _is_view(m: str) -> bool:
    return m == "xfdiff.views" or m.startswith(("xfdiff.views.", "xfdiff.dashboard"))


def test_no_import_cycle_passes_through_the_views_or_the_dashboard():
    graph = _graph()
    assert "xfdiff.views.html_report" in graph and "xfdiff.dashboard.callbacks" in graph
    assert graph["xfdiff.report"] >= {"xfdiff.views.text", "xfdiff.views.notebook", "xfdiff.views.html_report"}
    bad = [sorted(c) for c in _cycles(graph) if any(_is_view(m) for m in c)]
    assert bad == []


def test_views_import_neither_the_report_nor_the_pipeline_nor_the_dashboard_when_they_run():
    graph = _graph()
    views = [m for m in graph if m == "xfdiff.views" or m.startswith("xfdiff.views.")]
    assert len(views) >= 8
    for m in views:
        outside = {d for d in graph[m] if not d.startswith("xfdiff.views")}
        assert outside <= {"xfdiff.version"}, (m, outside)


def test_nothing_outside_the_dashboard_imports_it_but_the_public_entry_points():
    graph = _graph()
    users = {m for m, deps in graph.items() if any(d.startswith("xfdiff.dashboard") for d in deps)}
    assert {u for u in users if not u.startswith("xfdiff.dashboard")} <= {"xfdiff", "xfdiff.cli"}


def test_the_views_load_without_dash_or_plotly():
    code = (
        "import sys, xfdiff.views.html_report, xfdiff.views.text, xfdiff.views.notebook; "
        "print(sorted(m for m in ('dash', 'plotly', 'torch', 'jax', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
