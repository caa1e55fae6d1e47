"""hpcjob.fastpath: plain options converted without pydantic, and the quick exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcjob.cli.fastpath import convert, plain_target


class Info:
    """A stand-in for Typer's ParameterInfo with the attributes plain_target reads."""

    def __init__(self, **kw: object) -> None:
        self.parser = self.click_type = self.min = self.max = self.formats = None
        self.mode = self.path_type = None
        self.exists = self.writable = self.resolve_path = self.allow_dash = False
        self.atomic = self.clamp = False
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [(str, str), (int, int), (float, float), (bool, bool), (str | None, str), (int | None, int)],
)
def test_plain_annotations_are_converted_here(annotation: object, expected: type) -> None:
    assert plain_target(annotation, Info()) is expected


@pytest.mark.parametrize(
    ("annotation", "info"),
    [
        (list[str], Info()),
        (Path, Info()),
        (int | str, Info()),
        (int, Info(min=1)),
        (str, Info(parser=str.upper)),
        (str, Info(exists=True)),
    ],
)
def test_everything_else_is_left_to_typer(annotation: object, info: Info) -> None:
    assert plain_target(annotation, info) is None


def test_convert_values_and_errors() -> None:
    assert convert("12", int) == 12
    assert convert("1.5", float) == 1.5
    assert convert(b"x", str) == "x"
    assert convert("yes", bool) is True and convert("0", bool) is False
    assert convert(True, bool) is True
    with pytest.raises(ValueError, match="'abc' is not an integer"):
        convert("abc", int)
    with pytest.raises(ValueError, match="is not a number"):
        convert("fast", float)
    with pytest.raises(ValueError, match="not a valid boolean"):
        convert("maybe", bool)


def _hpcjob(tmp_path: Path, *code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPCJOB_HOME": str(tmp_path), "HPCJOB_PROFILE": "local"}
    return subprocess.run(
        [sys.executable, *code], capture_output=True, text=True, env=env, timeout=60
    )


def test_a_command_runs_without_importing_pydantic(tmp_path: Path) -> None:
    done = _hpcjob(tmp_path, "-X", "importtime", "-m", "hpcjob", "runs", "--json", "--limit", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()]
    assert "hpcjob.ledger" in imported  # the command did its work …
    assert not [name for name in imported if name.startswith("pydantic")]  # … without pydantic


def test_bad_value_is_a_usage_error_and_exit_runs_atexit_handlers(tmp_path: Path) -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.argv = ['hpcjob', 'status', '--limit', 'abc']\n"
        "from hpcjob.cli import main\n"
        "main()\n"
    )
    done = _hpcjob(tmp_path, "-c", code)
    assert done.returncode == 2
    assert "Invalid value for '--limit': 'abc' is not an integer." in done.stderr
    assert done.stdout == "atexit ran\n"
    assert "Traceback" not in done.stderr


def test_the_hook_is_in_place_for_the_pinned_typer() -> None:
    """pyproject pins the Typer whose private `core.build_runtime_param` fastpath replaces; a Typer
    where the hook silently does nothing fails here, not in a benchmark."""
    import typer
    from typer import core

    import hpcjob.cli  # noqa: F401  (installs the hook)

    assert typer.__version__.startswith("0.29.")
    assert getattr(core.build_runtime_param, "hpcjob_plain", False)
