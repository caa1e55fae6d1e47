"""Start-up (issue 19): `hpcjob status` and `hpcjob runs --json` with nothing to show load only
what they use — no Rich console for a one-line message, no scheduler, shell, spec, metric
parser or TOML parser — and say the same as before; Typer converts only the command the command
line names. bench/startup.py measures the time; no test here times anything."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from hpcjob.cli import fastpath, output

# Loaded by a command that needs them, never by `status`/`runs` on an empty ledger.
UNUSED = (
    "rich.console",
    "rich.table",
    "rich.markup",
    "hpcjob.spec",
    "hpcjob.shell",
    "hpcjob.scheduler.factory",
    "hpcjob.run.harvest",
    "hpcjob.joblog",
    "tomllib",
    "_hashlib",
)


def _imports(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "HPCJOB_HOME": str(home), "HPCJOB_PROFILE": "local"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hpcjob", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return done, imported


@pytest.mark.parametrize("args", [("status",), ("runs", "--json")])
def test_an_empty_ledger_is_shown_without_loading_what_it_does_not_use(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    for _ in range(2):  # a new ledger, then the existing empty one
        done, imported = _imports(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        assert "hpcjob.ledger.store" in imported  # it did read the ledger …
        assert sorted(imported & set(UNUSED)) == []  # … and nothing it did not need
    if args == ("status",):
        assert done.stdout == ""
        message = "No runs in profile local yet. Try: hpcjob submit gpu-check --wait\n"
        assert done.stderr.splitlines(keepends=True)[-1] == message
    else:
        assert done.stdout == "[]\n"


@pytest.mark.parametrize(
    "message",
    [
        "No runs in profile local yet. Try: hpcjob submit gpu-check --wait",
        "Stopped waiting; job 12 keeps running (`hpcjob status`).",
        "time 12:30:00 — ünïcode, 'quotes' and \\ backslashes",
        "a [bold]markup[/] word",
        "an escaped \\[bold] bracket",
        "an emoji :thumbs_up: code",
        "a\ttab and a bell\x07",
        "",
    ],
)
def test_a_message_reads_as_rich_prints_it(
    message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain messages skip Rich; the output is what Rich's console prints either way."""
    expected = io.StringIO()
    Console(file=expected, highlight=False, soft_wrap=True).print(message)
    output.info(message)
    assert capsys.readouterr().err == expected.getvalue()


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["status"], "status"),
        (["--profile", "lab", "status", "--json"], "status"),
        (["-P", "lab", "runs"], "runs"),
        (["--profile=lab", "show", "last"], "show"),
        (["config", "show"], "config"),
        (["--help"], None),
        (["--version", "status"], None),
        (["--", "status"], None),
        ([], None),
    ],
)
def test_the_command_word_is_found_after_the_root_options(argv: list[str], word: str) -> None:
    assert fastpath.command_word(argv) == word


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """The root."""

    @app.command()
    def first() -> None:
        print("first ran")

    @app.command()
    def second_one(n: int = 1) -> None:
        print(f"second ran {n}")

    group = typer.Typer()
    app.add_typer(group, name="group")

    @group.command()
    def inner() -> None:
        print("inner ran")

    return app


@pytest.mark.parametrize(
    ("argv", "kept", "printed"),
    [
        (["second-one", "--n", "3"], ["second-one"], "second ran 3\n"),
        (["group", "inner"], ["group"], "inner ran\n"),
        (["first"], ["first"], "first ran\n"),
        (["--help"], ["first", "second-one", "group"], None),
        (["nope"], ["first", "second-one", "group"], None),
    ],
)
def test_typer_is_given_only_the_command_the_line_names(
    argv: list[str], kept: list[str], printed: str | None
) -> None:
    """Typer converts that command alone; with none, or an unknown one, every command stays (the
    listing, `No such command` and its suggestion are Typer's as before)."""
    app = _app()
    fastpath.only_the_command(app, argv)
    names = [fastpath._command_name(c) for c in app.registered_commands]
    assert names + [g.name for g in app.registered_groups] == kept
    result = CliRunner().invoke(app, argv)
    if printed is not None:
        assert (result.exit_code, result.stdout) == (0, printed)


def test_the_program_runs_the_command_after_root_options_and_suggests_for_a_typo(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "HPCJOB_HOME": str(tmp_path), "HPCJOB_PROFILE": "local"}

    def hpcjob(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hpcjob", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    done = hpcjob("--profile", "local", "runs", "--json")
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
    done = hpcjob("stauts")
    assert done.returncode == 2
    assert "No such command 'stauts'. Did you mean 'status'?" in done.stderr
    done = hpcjob("--help")
    assert done.returncode == 0 and "status" in done.stdout and "sweep" in done.stdout
