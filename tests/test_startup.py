"""Start-up (issue 19): `hpcjob status` and `hpcjob runs --json` with nothing to show load only
what they use — no Rich console for a one-line message, no scheduler, shell, spec, metric
parser or TOML parser — and say the same as before. bench/startup.py measures the time; no test
here times anything."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from hpcjob.cli import output

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
