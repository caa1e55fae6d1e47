"""No way in through a run directory (issue 17): what a compromised login node or a job that
writes odd files leaves there must not reach the user's laptop, hang a command or fill a disk.

Each test here is a row of the "run directory" table of docs/hostile-input.md (checked below).
Commands that could hang run in a process of their own under a guard (GUARD_S): a hang fails the
test; the normal pass takes a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcjob.run.fetch import fetch
from tests.helpers import GUARD_S, REPO, ReplayShell, job_template, run_hpcjob

DOC = REPO / "docs" / "hostile-input.md"


class ListingShell(ReplayShell):
    """A cluster whose listing of the run directory names whatever it likes."""

    def __init__(self, names: list[str]) -> None:
        super().__init__({})
        self.names = names

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        return [(name, 3) for name in self.names]

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        return b"own"[offset:]


def test_fetch_refuses_names_that_leave_the_destination(tmp_path: Path) -> None:
    """rundir-fetch-names"""
    names = ["../../evil", "/tmp/abs-evil", "a/../../x", "ok.txt", "sub/fine.txt"]
    shell = ListingShell(names)
    shell.files["/runs/r1/ok.txt"] = b"own"  # so that the run directory exists
    ctx: Any = SimpleNamespace(scheduler=SimpleNamespace(shell=shell))
    run: Any = SimpleNamespace(
        run_id="r1", run_dir="/runs/r1", array_task=None, spec={}, output_path=None
    )
    dest = tmp_path / "deep" / "dest"
    skipped: list[tuple[str, str]] = []
    copied = fetch(ctx, run, dest, on_skip=lambda name, why: skipped.append((name, why)))
    assert sorted(c.name for c in copied) == ["ok.txt", "sub/fine.txt"]
    # `../../evil` starts with a dot: never wanted (hidden temporaries); the others are refused.
    assert sorted(name for name, _ in skipped) == ["/tmp/abs-evil", "a/../../x"]
    assert all("outside" in why for _, why in skipped)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "x").exists()
    assert not Path("/tmp/abs-evil").exists()
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "ok.txt",
        "sub/fine.txt",
    ]


HOSTILE_FILES = (
    "mkfifo metrics.jsonl\n"  # read by every status/show: a FIFO would wait for a writer forever
    "mkfifo plain.fifo\n"
    "ln -s /etc/passwd passwd.txt\n"  # a link out of the run directory
    "ln -s /dev/zero zero.png\n"  # an artifact name; reading it never ends
    "echo mine > own.txt\n"
    "ln -s own.txt own-link.txt\n"  # a link inside the run directory is a file like any other
    "echo 'Epoch 1: loss = 0.5'"
)


def test_fifos_devices_and_links_out_are_never_read(tmp_path: Path, isolated_home: Path) -> None:
    """rundir-special-files"""
    job_template(isolated_home, HOSTILE_FILES)
    submitted = run_hpcjob("submit", "gpu-check", "--wait", "--json", timeout=GUARD_S)
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.json()
    assert run["state"] == "COMPLETED"
    for argv in (("status", "--json"), ("show", run["run_id"], "--json")):
        result = run_hpcjob(*argv, timeout=GUARD_S)
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
        json.loads(result.stdout)
    shown = run_hpcjob("show", run["run_id"], "--json", timeout=GUARD_S).json()
    assert [m["value"] for m in shown["metrics"]] == [0.5]
    listed = {a["name"] for a in shown["artifacts"]}
    assert not listed & {"zero.png", "passwd.txt", "plain.fifo", "metrics.jsonl"}, listed
    dest = tmp_path / "fetched"
    fetched = run_hpcjob("fetch", run["run_id"], "--dest", str(dest), "--json", timeout=GUARD_S)
    assert fetched.exit_code == 0, fetched.stderr
    names = {f["name"] for f in fetched.json()["files"]}
    assert {"own.txt", "own-link.txt"} <= names
    assert not names & {"zero.png", "passwd.txt", "plain.fifo", "metrics.jsonl"}, names
    assert not (dest / "passwd.txt").exists() and not (dest / "zero.png").exists()
    link = dest / "own-link.txt"
    assert link.read_text() == "mine\n" and not link.is_symlink()
    logs = run_hpcjob("logs", run["run_id"], "--tail", "3", timeout=GUARD_S)
    assert logs.exit_code == 0 and "loss = 0.5" in logs.stdout


@pytest.mark.parametrize("row", ["rundir-fetch-names", "rundir-special-files"])
def test_the_doc_lists_each_run_directory_case(row: str) -> None:
    assert f"| `{row}` |" in DOC.read_text()
