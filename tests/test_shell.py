"""Writing many files at once: the tar payload and the script that unpacks it (real bash and tar),
and LocalShell's own version of the same."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcjob.shell import UNPACK_SCRIPT, LocalShell, check_relative_names, tar_payload

FILES = {
    "job.sh": (b"#!/bin/bash\necho hi\n", 0o755),
    "run.json": (b'{"run_id": "r1"}', 0o644),
    "workload/train.py": (b"print('train')\n", 0o644),
    "provenance/git.diff": (b"--- a\n+++ b\n", 0o644),
    "deep/er/still/file with spaces.txt": (b"x" * 100_000, 0o600),
}


def unpack(root: str, payload: bytes, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    return subprocess.run(
        ["bash", "-c", UNPACK_SCRIPT, "hpcjob-stage", root],
        input=payload,
        capture_output=True,
        env=env,
        check=False,
    )


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_unpack_writes_every_file_with_its_mode_in_private_folders(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "r1"
    done = unpack(str(root), tar_payload(FILES))
    assert done.returncode == 0, done.stderr
    assert tree(root) == FILES
    for folder in (root, root / "workload", root / "deep" / "er" / "still"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert not [p for p in root.iterdir() if p.name.startswith(".hpcjob-stage")]


def test_unpack_replaces_files_and_keeps_the_others(tmp_path: Path) -> None:
    root = tmp_path / "r1"
    assert unpack(str(root), tar_payload(FILES)).returncode == 0
    (root / "slurm-1.out").write_text("the job's output\n")
    assert unpack(str(root), tar_payload({"job.sh": (b"new\n", 0o755)})).returncode == 0
    assert (root / "job.sh").read_bytes() == b"new\n"
    assert (root / "slurm-1.out").read_text() == "the job's output\n"
    assert (root / "run.json").read_bytes() == FILES["run.json"][0]


def test_a_cut_off_archive_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r1"
    payload = tar_payload(FILES)
    done = unpack(str(root), payload[: len(payload) // 2])
    assert done.returncode != 0
    assert tree(root) == {} and list(root.iterdir()) == []  # no file, no temporary folder


def test_home_relative_root(tmp_path: Path) -> None:
    done = unpack("~/hpcjob/runs/r1", tar_payload(FILES), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "hpcjob" / "runs" / "r1") == FILES


def test_local_shell_writes_the_same_tree(tmp_path: Path) -> None:
    LocalShell().write_files(str(tmp_path / "local"), FILES)
    assert unpack(str(tmp_path / "remote"), tar_payload(FILES)).returncode == 0
    assert tree(tmp_path / "local") == tree(tmp_path / "remote") == FILES
    for folder in ("local", "local/deep", "local/deep/er", "local/workload"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700, folder


BAD_NAMES = ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "./a", "a\nb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_outside_the_root_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_relative_names({name: (b"", 0o644)})
    with pytest.raises(ValueError):
        tar_payload({name: (b"", 0o644)})
    with pytest.raises(ValueError):
        LocalShell().write_files(str(tmp_path), {name: (b"", 0o644)})
    assert list(tmp_path.iterdir()) == []
