"""The code snapshot: what git sees (tracked, untracked-not-ignored; not ignored or deleted
files), the folder minus junk outside git, exclude patterns, symlinks, modes, the hash, and the
refusals above the size and file-count limits. Temporary git repositories, no network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.snapshot import (
    DEFAULT_MAX_BYTES,
    check_patterns,
    excluded,
    snapshot_hash,
    take_snapshot,
)

KB = 1024
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def plain_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """git as a fresh account has it: the developer's global ignores (core.excludesFile,
    ~/.config/git/ignore) would change what --exclude-standard leaves out."""
    config_home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)  # set when the tests run in a git hook


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], capture_output=True, check=True)


def new_repo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "config", "user.name", "Test")
    git(folder, "config", "user.email", "test@example.org")
    return folder


def commit_all(folder: Path) -> None:
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "work")


def write(root: Path, files: dict[str, bytes | str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)


# --- exclude patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern", "is_dir", "expected"),
    [
        # a trailing slash: a folder (at any depth) and everything below it, never a file
        ("data/train.h5", "data/", False, True),
        ("data/a/b/c.npy", "data/", False, True),
        ("src/data/x.csv", "data/", False, True),
        ("data", "data/", True, True),
        ("data", "data/", False, False),
        ("database.py", "data/", False, False),
        ("mydata/x", "data/", False, False),
        # no slash: a name at any depth (a folder's name too)
        ("model.ckpt", "*.ckpt", False, True),
        ("runs/3/last.ckpt", "*.ckpt", False, True),
        ("runs/a.ckpt/weights.bin", "*.ckpt", False, True),
        ("model.ckpt.py", "*.ckpt", False, False),
        ("notes.txt", "notes.tx?", False, True),
        ("a/wandb/run/x", "wandb", False, True),
        ("lr_sweep_1.yaml", "lr_sweep_[0-9].yaml", False, True),
        ("lr_sweep_x.yaml", "lr_sweep_[!0-9].yaml", False, True),
        ("lr_sweep_1.yaml", "lr_sweep_[!0-9].yaml", False, False),
        # a slash: the path from the top; * stays within a folder, ** spans folders
        ("notebooks/a.ipynb", "notebooks/**", False, True),
        ("notebooks/deep/er/a.ipynb", "notebooks/**", False, True),
        ("src/notebooks/a.ipynb", "notebooks/**", False, False),
        ("src/train.py", "src/*.py", False, True),
        ("src/sub/train.py", "src/*.py", False, False),
        ("src/sub/train.py", "src/**/*.py", False, True),
        ("src/train.py", "src/**/*.py", False, True),
        ("a/b/c/out.log", "**/out.log", False, True),
        ("out.log", "**/out.log", False, True),
        ("data/x", "/data", False, True),
        ("src/data/x", "/data", False, False),
        ("src/data/x", "src/data/", False, True),
        ("other/src/data/x", "src/data/", False, False),
        ("src/data", "src/data/", True, True),
        # regex characters in names are literal
        ("a+b (1).py", "a+b (1).py", False, True),
        ("ab (1).py", "a+b (1).py", False, False),
        ("a.b", "a?b", False, True),
        ("a/b", "a?b", False, False),
        ("weird[", "weird[", False, True),
    ],
)
def test_excluded(path: str, pattern: str, is_dir: bool, expected: bool) -> None:
    assert excluded(path, [pattern], is_dir=is_dir) is expected


def test_excluded_with_several_patterns_and_none() -> None:
    patterns = ["data/", "*.ckpt", "notebooks/**"]
    assert excluded("notebooks/x.ipynb", patterns)
    assert excluded("runs/a.ckpt", patterns)
    assert not excluded("src/train.py", patterns)
    assert not excluded("src/train.py", [])


@pytest.mark.parametrize("bad", [["!keep.py"], [""], ["/"], "data/"])
def test_patterns_excluded_cannot_honour_are_refused(bad: list[str] | str) -> None:
    with pytest.raises(HpcjobError) as info:
        check_patterns(bad)
    assert info.value.exit_code == EXIT_USAGE
    assert "exclude" in str(info.value)
    if isinstance(bad, str):
        assert "a list of patterns" in info.value.message
        assert info.value.hint is not None and 'exclude = ["data/"]' in info.value.hint


# --- in git -----------------------------------------------------------------------------------


def test_in_git_tracked_and_untracked_not_ignored_files(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    write(repo, {".gitignore": "*.log\noutputs/\n", "train.py": "print(1)\n", "lib/m.py": "x=1"})
    commit_all(repo)
    write(repo, {"new.py": "new", "run.log": "noise", "outputs/a.pt": b"\0" * 10})
    write(repo, {"forced.log": "tracked although ignored"})
    git(repo, "add", "-f", "forced.log")

    snap = take_snapshot(repo)

    assert snap.in_git
    assert snap.root == repo
    assert sorted(snap.files) == [".gitignore", "forced.log", "lib/m.py", "new.py", "train.py"]
    assert snap.files["train.py"] == (b"print(1)\n", 0o644)
    assert snap.left_out == ()


def test_in_git_a_deleted_tracked_file_is_skipped(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    write(repo, {"keep.py": "k", "gone.py": "g"})
    commit_all(repo)
    (repo / "gone.py").unlink()

    snap = take_snapshot(repo)

    assert list(snap.files) == ["keep.py"]
    assert snap.left_out == ()


def test_in_git_a_subfolder_root_holds_its_own_files_relative_to_it(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "mono")
    write(repo, {".gitignore": "*.tmp\n", "other/x.py": "x", "ml/train.py": "t", "ml/a/b.py": "b"})
    commit_all(repo)
    write(repo, {"ml/untracked.py": "u", "ml/scratch.tmp": "ignored by the parent's .gitignore"})

    snap = take_snapshot(repo / "ml")

    assert snap.in_git
    assert sorted(snap.files) == ["a/b.py", "train.py", "untracked.py"]


def test_in_git_names_with_spaces_and_accents_travel_as_they_are(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    write(repo, {'with space/naïve "q".py': "n", "tab\tname.py": "t"})

    snap = take_snapshot(repo)

    assert sorted(snap.files) == ["tab\tname.py", 'with space/naïve "q".py']


def test_in_git_submodules_and_nested_repositories_are_noted_not_entered(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    write(repo, {"train.py": "t"})
    for name in ("vendored", "scratch"):
        inner = new_repo(repo / name)
        write(inner, {"inner.py": "i"})
        commit_all(inner)
    git(repo, "add", "train.py", "vendored")  # a gitlink: the submodule's commit, not its files
    git(repo, "commit", "-q", "-m", "with a submodule")

    snap = take_snapshot(repo)

    assert list(snap.files) == ["train.py"]
    assert len(snap.left_out) == 2
    assert "scratch/: a git repository inside the project" in snap.left_out[0]
    assert "vendored: a git submodule" in snap.left_out[1]
    assert take_snapshot(repo, exclude=["vendored/", "scratch/"]).left_out == ()


def test_in_git_exclude_patterns_apply(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    write(repo, {"train.py": "t", "data/x.csv": "1", "m.ckpt": b"w", "notebooks/a/b.ipynb": "{}"})

    snap = take_snapshot(repo, exclude=["data/", "*.ckpt", "notebooks/**"])

    assert list(snap.files) == ["train.py"]


def test_a_hooks_git_dir_does_not_redirect_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = new_repo(tmp_path / "other")
    write(other, {"not_mine.py": "x"})
    commit_all(other)
    repo = new_repo(tmp_path / "proj")
    # Ignored here, but tracked in the other index: listed (and found on disk) if git used it.
    write(repo, {"mine.py": "m", ".gitignore": "not_mine.py\n", "not_mine.py": "y"})
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))

    assert sorted(take_snapshot(repo).files) == [".gitignore", "mine.py"]


def test_a_git_failure_names_the_command_and_what_git_said(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")

    with pytest.raises(HpcjobError) as info:
        take_snapshot(repo / ".git")  # inside the repository's own folder: no work tree

    message = str(info.value)
    assert "ls-files" in message and str(repo / ".git") in message
    assert "work tree" in message


# --- outside git ------------------------------------------------------------------------------


def test_outside_git_the_folder_minus_junk(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(
        root,
        {
            "train.py": "t",
            "pkg/model.py": "m",
            "pkg/__pycache__/model.cpython-311.pyc": b"pyc",
            "stray.pyc": b"pyc",
            "pkg/.DS_Store": b"mac",
            "myenv-3.11/pyvenv.cfg": "home = /usr/bin",  # a venv under an odd name
            "myenv-3.11/lib/site.py": "s",
            ".venv/lib/x.py": "x",
            "node_modules/left/index.js": "js",
            "hpcjob_user.egg-info/PKG-INFO": "p",
            "build/lib/x.py": "x",
            ".git/HEAD": "ref: refs/heads/main",  # a broken clone: git says "not a repository"
            "big.h5": b"\0" * (2 * KB),
            "small.csv": b"\0" * KB,
        },
    )

    write(tmp_path / "venvs/3.11", {"pyvenv.cfg": "home = /usr/bin"})
    (root / "venv").symlink_to(tmp_path / "venvs/3.11")  # a linked venv: junk, unsaid

    snap = take_snapshot(root, max_file_bytes_outside_git=KB)

    assert not snap.in_git
    assert sorted(snap.files) == ["pkg/model.py", "small.csv", "train.py"]
    assert len(snap.left_out) == 1
    assert "big.h5 (2.0 KB)" in snap.left_out[0] and "data_dir" in snap.left_out[0]


def test_outside_git_exclude_patterns_apply(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root, {"train.py": "t", "data/x.csv": "1", "m.ckpt": "w", "notebooks/a/b.ipynb": "{}"})

    snap = take_snapshot(root, exclude=["data/", "*.ckpt", "notebooks/**"])

    assert list(snap.files) == ["train.py"]


def test_outside_git_a_pipe_is_noted_and_never_read(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root, {"train.py": "t"})
    os.mkfifo(root / "control.fifo")  # reading it would hang

    snap = take_snapshot(root)

    assert list(snap.files) == ["train.py"]
    assert snap.left_out == (
        "control.fifo: not a regular file (a pipe, socket or device); left out",
    )


def test_an_empty_project_and_an_empty_file_are_fine(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    assert take_snapshot(root).files == {}
    (root / "__init__.py").write_bytes(b"")
    assert take_snapshot(root).files == {"__init__.py": (b"", 0o644)}


def test_a_missing_project_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(HpcjobError) as info:
        take_snapshot(tmp_path / "nope")
    assert info.value.exit_code == EXIT_USAGE
    assert "does not exist" in str(info.value)


# --- symlinks and modes -----------------------------------------------------------------------


def make_links(root: Path, outside: Path) -> None:
    write(root, {"conf/base.yaml": "lr: 1\n", "train.py": "t"})
    write(outside, {"secret.txt": "not part of the project", "lib/x.py": "x"})
    (root / "base.yaml").symlink_to("conf/base.yaml")
    (root / "outside.txt").symlink_to(outside / "secret.txt")
    (root / "dangling.txt").symlink_to("no/such/file")
    (root / "shared").symlink_to(outside / "lib")
    (root / "confdir").symlink_to("conf")


@pytest.mark.parametrize("in_git", [True, False])
def test_symlinks_inside_are_content_and_others_are_noted(tmp_path: Path, in_git: bool) -> None:
    root = tmp_path / "proj"
    if in_git:
        new_repo(root)
    make_links(root, tmp_path / "elsewhere")

    snap = take_snapshot(root)

    assert sorted(snap.files) == ["base.yaml", "conf/base.yaml", "train.py"]
    assert snap.files["base.yaml"] == (b"lr: 1\n", 0o644)
    notes = "\n".join(snap.left_out)
    assert "outside.txt: a symlink to" in notes and "outside the project" in notes
    assert "dangling.txt: a dangling symlink" in notes
    assert "shared: a symlink to" in notes  # a folder outside: never followed
    assert "confdir: a symlink to a folder" in notes
    assert len(snap.left_out) == 4
    quiet = take_snapshot(root, exclude=["outside.txt", "dangling.txt", "shared/", "confdir/"])
    assert quiet.left_out == ()


@pytest.mark.parametrize("in_git", [True, False])
def test_executable_files_keep_their_mode(tmp_path: Path, in_git: bool) -> None:
    root = tmp_path / "proj"
    if in_git:
        new_repo(root)
    write(root, {"run.sh": "#!/bin/sh\n", "lib.py": "x"})
    (root / "run.sh").chmod(0o744)
    (root / "lib.py").chmod(0o640)

    snap = take_snapshot(root)

    assert snap.files["run.sh"][1] == 0o755
    assert snap.files["lib.py"][1] == 0o644


# --- the hash ---------------------------------------------------------------------------------


def test_the_hash_is_stable_and_changes_with_any_byte_mode_or_name(tmp_path: Path) -> None:
    root = new_repo(tmp_path / "proj")
    write(root, {"train.py": "lr = 0.1\n", "conf/a.yaml": "x: 1\n"})
    first = take_snapshot(root)
    assert take_snapshot(root).sha256 == first.sha256
    assert first.sha256 == snapshot_hash(first.files)

    seen = {first.sha256}
    (root / "train.py").write_text("lr = 0.2\n")  # one byte
    seen.add(take_snapshot(root).sha256)
    (root / "train.py").chmod(0o755)
    seen.add(take_snapshot(root).sha256)
    (root / "conf/a.yaml").rename(root / "conf/b.yaml")
    seen.add(take_snapshot(root).sha256)
    assert len(seen) == 4


def test_the_hash_depends_on_the_files_only() -> None:
    files = {"b.py": (b"b", 0o644), "a.py": (b"a", 0o755)}
    assert snapshot_hash(files) == snapshot_hash(dict(reversed(files.items())))
    # Content cannot pose as the next entry: with separators alone these two would be one stream.
    two = {"a": (b"x", 0o644), "b": (b"y", 0o644)}
    assert snapshot_hash(two) != snapshot_hash({"a": (b"x\x00b\x00644\x00y", 0o644)})
    assert snapshot_hash({}) != snapshot_hash({"a": (b"", 0o644)})


def test_the_same_files_in_git_and_outside_hash_alike(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"train.py": "t", "conf/a.yaml": "a"}
    write(new_repo(tmp_path / "in"), files)
    write(tmp_path / "out", files)
    assert take_snapshot(tmp_path / "in").sha256 == take_snapshot(tmp_path / "out").sha256


# --- limits -----------------------------------------------------------------------------------


def test_above_the_size_limit_the_largest_files_and_the_way_out_are_named(tmp_path: Path) -> None:
    root = new_repo(tmp_path / "proj")
    sizes = {"data/train.bin": 700, "data/valid.bin": 200, "w.ckpt": 100, "d.npy": 50}
    write(root, {path: b"\0" * (kb * KB) for path, kb in sizes.items()})
    write(root, {"e.npy": b"\0" * (40 * KB), "tiny.py": b"\0" * (30 * KB)})

    with pytest.raises(HpcjobError) as info:
        take_snapshot(root, max_bytes=MB)

    error = info.value
    assert error.exit_code == EXIT_USAGE
    assert error.message.splitlines() == [
        f"The code snapshot of {root} is 1.1 MB, above the 1 MB limit. Its largest files:",
        "  data/train.bin  700.0 KB",
        "  data/valid.bin  200.0 KB",
        "  w.ckpt  100.0 KB",
        "  d.npy  50.0 KB",
        "  e.npy  40.0 KB",
    ]
    assert error.hint is not None
    for phrase in ("data_dir", "--data-dir", "exclude = [", "[project]", "hpcjob.toml"):
        assert phrase in error.hint
    assert ".gitignore them" in error.hint and "max_snapshot_mb" in error.hint


def test_the_default_size_limit_speaks_in_megabytes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root, {"weights.bin": b"\0" * (DEFAULT_MAX_BYTES + 5 * MB)})

    with pytest.raises(HpcjobError) as info:
        take_snapshot(root, max_file_bytes_outside_git=DEFAULT_MAX_BYTES * 2)

    assert "is 55.0 MB, above the 50 MB limit" in info.value.message
    assert "  weights.bin  55.0 MB" in info.value.message
    assert info.value.hint is not None and ".gitignore" not in info.value.hint  # outside git


def test_above_the_file_count_limit_the_fullest_folders_are_named(tmp_path: Path) -> None:
    root = new_repo(tmp_path / "proj")
    write(root, {f"images/{i}.png": "p" for i in range(8)})
    write(root, {"src/a.py": "a", "src/b.py": "b", "train.py": "t"})

    with pytest.raises(HpcjobError) as info:
        take_snapshot(root, max_files=10)

    error = info.value
    assert error.exit_code == EXIT_USAGE
    assert error.message.splitlines() == [
        f"The code snapshot of {root} has 11 files, above the limit of 10. "
        "The folders holding the most:",
        "  images/  8 files",
        "  src/  2 files",
        "  ./  1 file",
    ]
    assert error.hint is not None and "exclude = [" in error.hint
    assert take_snapshot(root, max_files=11).files  # at the limit is fine
