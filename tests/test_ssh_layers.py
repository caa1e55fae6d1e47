"""The modules of hpcjob/ssh import only those below them, and nothing of hpcjob beyond the Shell
protocol and the errors: read from their source, imports inside functions and TYPE_CHECKING
blocks included."""

from __future__ import annotations

import ast
from pathlib import Path

import hpcjob.ssh

PACKAGE = Path(hpcjob.ssh.__file__).parent
# Bottom first: a module may import the ones before it in this list.
LAYERS = ("target", "hostkeys", "channel", "login", "session", "connect")
OUTSIDE = {"hpcjob.errors", "hpcjob.shell"}


def hpcjob_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("hpcjob", "hpcjob.ssh"):  # `from hpcjob.ssh import target`
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            found.add("<relative>")
    return {name for name in found if name.startswith("hpcjob") or name == "<relative>"}


def test_every_module_has_a_place_in_the_layers() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


def test_imports_point_down_only() -> None:
    assert hpcjob_imports(PACKAGE / "__init__.py") == set()
    for number, name in enumerate(LAYERS):
        below = {f"hpcjob.ssh.{lower}" for lower in LAYERS[:number]}
        wrong = hpcjob_imports(PACKAGE / f"{name}.py") - below - OUTSIDE
        assert not wrong, f"hpcjob/ssh/{name}.py imports {sorted(wrong)}"


def test_the_flat_module_is_gone() -> None:
    assert not (PACKAGE.parent / "ssh.py").exists()
