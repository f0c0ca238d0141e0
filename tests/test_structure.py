"""The package's shape: no import cycles, every file described in docs/architecture.md.

The import graph is read from the source (``ast``), so the check sees imports inside
functions too, which a runtime check of ``sys.modules`` would miss.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "xfdiff"

# The three layers the pipeline is built from; a module outside them (report, storage,
# errors, cli, ...) may reach into any of them.
LAYERS = {
    "stats": lambda m: m.startswith("xfdiff.stats"),
    "views": lambda m: m.startswith(("xfdiff.views", "xfdiff.dashboard")),
    "pipeline": lambda m: m.startswith(
        (
            "xfdiff.engine",
            "xfdiff.runs",
            "xfdiff.rows",
            "xfdiff.streaming",
            "xfdiff.localize",
            "xfdiff.align",
            "xfdiff.verdict",
            "xfdiff.floor",
            "xfdiff.splice",
            "xfdiff.lm_metrics",
            "xfdiff.evidence",
            "xfdiff.capture",
            "xfdiff.pitfalls",
        )
    ),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = mod.split(".")
        if not is_pkg:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if not base.startswith("xfdiff"):
        return []
    # `from .pkg import name` may name a submodule
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, all edges) between xfdiff modules."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    top: dict[str, set[str]] = {m: set() for m in files}
    every: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        module_level = set()
        for node in tree.body:
            module_level.add(id(node))
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks never run
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" in test:
                    for sub in ast.walk(node):
                        module_level.add(("skip", id(sub)))
        skip = {x[1] for x in module_level if isinstance(x, tuple)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, is_pkg, node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("xfdiff")]
            targets = [t for t in targets if t in files and t != mod]
            every[mod].update(targets)
            if id(node) in module_level:
                top[mod].update(targets)
    return top, every


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def _ignoring_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a cycle with them."""
    out = {}
    for m, ts in edges.items():
        out[m] = {t for t in ts if not m.startswith(t + ".")}
    return out


def test_no_module_level_import_cycle():
    top, _ = _graph()
    cycle = _cycle(_ignoring_package_inits(top))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_pipeline_stats_and_views():
    _, every = _graph()
    layer_of = {}
    for m in every:
        for name, member in LAYERS.items():
            if member(m):
                layer_of[m] = name
    edges: dict[str, set[str]] = {name: set() for name in LAYERS}
    witness = {}
    for m, ts in every.items():
        for t in ts:
            a, b = layer_of.get(m), layer_of.get(t)
            if a and b and a != b:
                edges[a].add(b)
                witness[(a, b)] = f"{m} imports {t}"
    cycle = _cycle(edges)
    assert cycle is None, "layers import each other: " + "; ".join(
        witness[(a, b)] for a, b in zip(cycle, cycle[1:], strict=False)
    )


def test_no_import_cycle_inside_the_statistics_package():
    """Backends import the shared module only; the dispatcher imports backends, never the reverse."""
    _, every = _graph()
    inside = {
        m: {t for t in ts if t.startswith("xfdiff.stats")} for m, ts in every.items() if m.startswith("xfdiff.stats")
    }
    cycle = _cycle(_ignoring_package_inits(inside))
    assert cycle is None, "import cycle in xfdiff.stats: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py")))
def test_every_package_file_is_described_in_architecture_doc(path):
    doc = (ROOT / "docs" / "architecture.md").read_text()
    name = Path(path).stem
    if name == "__init__":
        name = Path(path).parent.name
    assert name in doc, f"docs/architecture.md does not mention {path}: add one line for it"
