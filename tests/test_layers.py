"""The house's layers hold: every import inside `hpcjob/` — at the top of a module, inside a
function, or under `if TYPE_CHECKING:` — points down a layer or stays in its own, and no modules
import each other in a circle. docs/architecture.md draws the same picture in words."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpcjob"

# Bottom to top. A module's layer is that of its longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 1. the pure vocabulary
    (
        "hpcjob",
        "hpcjob.errors",
        "hpcjob.clock",
        "hpcjob.jobstate",
        "hpcjob.resources",
        "hpcjob.cost",
        "hpcjob.budget",
        "hpcjob.config",
        "hpcjob.slurm",
        "hpcjob.spec",
        "hpcjob.sweep",
        "hpcjob.render",
        "hpcjob.envscript",
        "hpcjob.envlog",
        "hpcjob.joblog",
        "hpcjob.provenance",
        "hpcjob.failure",
        "hpcjob.probe",
        "hpcjob.checkup",
    ),
    # 2. the user's project on this machine, the seams and the ledger
    ("hpcjob.project",),
    ("hpcjob.shell",),
    ("hpcjob.ssh",),
    ("hpcjob.scheduler", "hpcjob.ledger"),
    # 3. operations on runs, and setup-env on top of them
    ("hpcjob.run",),
    ("hpcjob.env",),
    # 4. insight
    ("hpcjob.insight",),
    # 5. the command line
    ("hpcjob.cli", "hpcjob.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, found = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "hpcjob" and module.startswith(prefix + "."))
            if matches and len(prefix) > best:
                best, found = len(prefix), index
    if found < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the docs)")
    return found


def imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """Every hpcjob module this file imports, with the line, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hpcjob":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base.split(".")[0] != "hpcjob":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from hpcjob.x import y`: y is a module when there is such a file.
                yield (candidate if _is_module(candidate) else base), node.lineno


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def graph() -> dict[str, dict[str, int]]:
    edges: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        found = edges.setdefault(module, {})
        for target, line in imports(path, module):
            if target != module:
                found.setdefault(target, line)
    return edges


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        f"{source} (layer {layer_of(source) + 1}) imports {target} (layer {layer_of(target) + 1}) "
        f"at line {line}"
        for source, targets in graph().items()
        for target, line in targets.items()
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_ssh_needs_only_the_shell_seam() -> None:
    """The SSH transport knows nothing of runs, schedulers or profiles: a Shell, and errors."""
    reached = {
        target
        for source, targets in graph().items()
        if source.startswith("hpcjob.ssh")
        for target in targets
        if not target.startswith("hpcjob.ssh")
    }
    assert reached <= {"hpcjob.shell", "hpcjob.errors"}


def test_no_import_cycles_even_inside_functions() -> None:
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The two checks fail on a cycle and on an upward edge (the test of the test)."""
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == [["a", "b", "c"]]
    assert layer_of("hpcjob.cli.submit") > layer_of("hpcjob.run.submit") > layer_of("hpcjob.spec")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("elsewhere.module")


def test_help_and_a_local_status_stay_light() -> None:
    """`hpcjob --help` needs none of the run layer; nothing below the CLI imports Typer or Rich
    at module level (the CLI imports them lazily where it can)."""
    heavy_at_top = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module.startswith("hpcjob.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            heavy = [n for n in names if n.split(".")[0] in ("typer", "rich")]
            heavy_at_top += [f"{module}: {n}" for n in heavy]
    assert heavy_at_top == []
