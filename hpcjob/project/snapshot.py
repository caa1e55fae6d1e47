"""The code snapshot: the project's files as git sees them (tracked plus untracked-not-ignored;
outside git, the folder minus the usual junk), read once, hashed, and refused above a size limit.

The snapshot travels with a run and is stored once per hash on the cluster, so the hash covers
exactly what the job will see: every path, its mode (0o755 or 0o644) and its content.

Taking one has three steps: list the candidates (one `git ls-files`, or a walk), check the
limits on their sizes from `lstat` (so a 5 GB data file is refused before it is read), then read
each file once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcjob.errors import EXIT_USAGE, HpcjobError

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_FILES = 20_000
DEFAULT_MAX_FILE_BYTES_OUTSIDE_GIT = 10 * 1024 * 1024
GIT_TIMEOUT_S = 60

# Outside git: folders that are never code. A folder holding `pyvenv.cfg` is a venv under any name.
JUNK_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
        ".ipynb_checkpoints", "node_modules", ".tox", ".eggs", ".venv", "venv", "env", "build",
        "dist", "wandb", "mlruns",
    }
)  # fmt: skip
JUNK_FILE_SUFFIXES = (".pyc", ".pyo")
JUNK_FILES = frozenset({".DS_Store"})

# Variables that point git at another repository or index (a git hook running hpcjob, or its
# tests, sets them): the snapshot is always of root's own repository.
_GIT_LOCATION_VARS = frozenset(
    {
        "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX",
    }
)  # fmt: skip

_MB = 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """The project's files as they travel with a run."""

    root: Path  # the project folder snapshotted (absolute)
    files: dict[str, tuple[bytes, int]]  # relative posix path -> (content, 0o755 or 0o644)
    sha256: str  # snapshot_hash(files)
    in_git: bool
    left_out: tuple[str, ...] = ()  # notes on files left out that a user may have expected

    @property
    def total_bytes(self) -> int:
        return sum(len(content) for content, _ in self.files.values())

    def largest(self, n: int = 5) -> list[tuple[str, int]]:
        """The `n` largest files as (path, bytes), largest first."""
        return _largest(((path, len(c)) for path, (c, _) in self.files.items()), n)


def snapshot_hash(files: Mapping[str, tuple[bytes, int]]) -> str:
    """SHA-256 over the sorted (path, mode, content): the same files give the same hash, and any
    change of a byte, a mode or a name gives another."""
    digest = hashlib.sha256(b"hpcjob-snapshot-v1\0")
    encoded = sorted((os.fsencode(path), path) for path in files)
    for raw, path in encoded:
        content, mode = files[path]
        # Lengths make the stream unambiguous: no content can pose as the next entry's header.
        digest.update(b"%s\0%o\0%d\0" % (raw, mode, len(content)))
        digest.update(content)
    return digest.hexdigest()


def take_snapshot(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_file_bytes_outside_git: int = DEFAULT_MAX_FILE_BYTES_OUTSIDE_GIT,
    max_files: int = DEFAULT_MAX_FILES,
) -> Snapshot:
    """Snapshot the project at `root`; HpcjobError (exit 2) above `max_bytes` or `max_files`."""
    top = Path(os.path.abspath(root))
    if not top.is_dir():
        raise HpcjobError(
            f"The project folder {top} does not exist or is not a folder.",
            hint="Run hpcjob inside your project, or name its folder.",
            exit_code=EXIT_USAGE,
        )
    check_patterns(exclude)
    listed = _git_paths(top)
    in_git = listed is not None
    if listed is None:
        found, notes = _walk(top, exclude, max_file_bytes_outside_git)
    else:
        found, notes = _inspect_all(top, listed, exclude)
    _check_limits(top, found, in_git, max_bytes, max_files)
    files = {item.rel: (data, item.mode) for item in found if (data := _read(item)) is not None}
    return Snapshot(top, files, snapshot_hash(files), in_git, tuple(notes))


# --- exclude patterns -------------------------------------------------------------------------


def excluded(path: str, patterns: Iterable[str], *, is_dir: bool = False) -> bool:
    """Whether the relative posix `path` (a folder when `is_dir`) is left out by a gitignore-like
    pattern: `data/` a folder named data at any depth and all below it; `*.ckpt` (no slash) a
    file or folder name at any depth; `notebooks/**`, `src/*.py`, `/data` (a slash) the path
    from the project's top, where `*` stays within a folder and `**` spans any number of them.
    A pattern matching a folder leaves out everything below it."""
    parts = path.split("/")
    for pattern in patterns:
        dir_only, anchored, regex = _compile(pattern)
        # Candidates: each folder above `path`, then `path` itself unless only folders match.
        last = len(parts) if is_dir or not dir_only else len(parts) - 1
        for i in range(1, last + 1):
            candidate = "/".join(parts[:i]) if anchored else parts[i - 1]
            if regex.fullmatch(candidate):
                return True
    return False


def check_patterns(patterns: Sequence[str]) -> None:
    """Refuse what `excluded` would silently get wrong: a bare string, an empty pattern, `!`."""
    if isinstance(patterns, str):
        raise HpcjobError(
            f"exclude must be a list of patterns, not the string {patterns!r}.",
            hint=f'Write exclude = ["{patterns}"] under [project] in hpcjob.toml.',
            exit_code=EXIT_USAGE,
        )
    for pattern in patterns:
        if not pattern.strip("/") or pattern.startswith("!"):
            raise HpcjobError(
                f"The exclude pattern {pattern!r} is not supported"
                + (": exclude has no negation." if pattern.startswith("!") else "."),
                hint='Patterns name what to leave out: "data/" (a folder), "*.ckpt" (a name at '
                'any depth), "notebooks/**" (a path from the project\'s top).',
                exit_code=EXIT_USAGE,
            )


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> tuple[bool, bool, re.Pattern[str]]:
    """(folders only, anchored at the top, the regex) for one pattern, as gitignore reads it."""
    dir_only = pattern.endswith("/")
    body = pattern.rstrip("/")
    anchored = "/" in body  # a slash at the start or in the middle, as in gitignore
    return dir_only, anchored, re.compile(glob_regex(body.lstrip("/")))


def glob_regex(glob: str) -> str:
    """A glob as a regular expression: `*`/`?` within a folder, `**` across, `[...]` a class."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and (end := _class_end(glob, i)) > 0:
            body = glob[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def _class_end(glob: str, start: int) -> int:
    """Index of the `]` closing the class opened at `start`, or -1 (then `[` is literal)."""
    j = start + 1
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    return glob.find("]", j)


# --- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    rel: str  # relative posix path in the snapshot
    source: str  # what to read: the file, or the file a symlink inside the project points to
    size: int
    mode: int


def _git_paths(top: Path) -> list[str] | None:
    """Tracked plus untracked-not-ignored paths under `top`, relative to it; None outside git."""
    argv = ["git", "-C", str(top), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["LC_ALL"] = "C"  # the "not a git repository" test below reads git's English
    try:
        done = subprocess.run(argv, capture_output=True, timeout=GIT_TIMEOUT_S, env=env)
    except FileNotFoundError:
        if not any((folder / ".git").exists() for folder in (top, *top.parents)):
            return None
        raise HpcjobError(
            f"{top} is in a git repository, but the git command was not found.",
            hint="Install git (or put it on PATH): the snapshot takes the files git sees.",
        ) from None
    except subprocess.TimeoutExpired:
        raise HpcjobError(
            f"`{' '.join(argv)}` took more than {GIT_TIMEOUT_S} s.",
            hint="A huge untracked folder slows git down: .gitignore it.",
        ) from None
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        if done.returncode == 128 and "not a git repository" in stderr:
            return None
        tail = "\n".join(stderr.splitlines()[-5:])
        raise HpcjobError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): {tail}",
            hint="Fix what git says above (try the command yourself), then submit again.",
        )
    # Conflicted paths are listed once per stage; sorted for a stable left_out.
    return sorted({os.fsdecode(raw) for raw in done.stdout.split(b"\0") if raw})


def _inspect_all(
    top: Path, paths: list[str], exclude: Sequence[str]
) -> tuple[list[_Found], list[str]]:
    root_real = os.path.realpath(top)
    found: list[_Found] = []
    notes: list[str] = []
    for rel in paths:
        if rel.endswith("/"):  # git lists an untracked repository inside the project this way
            if not excluded(rel.rstrip("/"), exclude, is_dir=True):
                notes.append(f"{rel}: a git repository inside the project; its files are left out")
            continue
        if excluded(rel, exclude):
            continue
        item = _inspect(root_real, rel, in_git=True)
        if isinstance(item, _Found):
            found.append(item)
        elif item is not None and not _excluded_folder(root_real, rel, exclude):
            notes.append(item)
    return found, notes


def _excluded_folder(root_real: str, rel: str, exclude: Sequence[str]) -> bool:
    """A submodule or a symlinked folder that `data/`-like patterns leave out (no note then)."""
    return os.path.isdir(os.path.join(root_real, rel)) and excluded(rel, exclude, is_dir=True)


def _walk(top: Path, exclude: Sequence[str], max_file: int) -> tuple[list[_Found], list[str]]:
    """Outside git: the folder minus junk, excluded paths and single files above `max_file`."""
    root_real = os.path.realpath(top)
    found: list[_Found] = []
    notes: list[str] = []

    def fail(error: OSError) -> None:
        raise _unreadable(error.filename, error)

    for folder, dirs, names in os.walk(top, onerror=fail):
        base = os.path.relpath(folder, top).replace(os.sep, "/")
        prefix = "" if base == "." else base + "/"
        kept: list[str] = []
        for name in sorted(dirs):
            rel = prefix + name
            if name in JUNK_DIRS or name.endswith(".egg-info"):
                continue  # `.venv -> /opt/venvs/x` as well: junk, linked or not, goes unsaid
            if os.path.islink(os.path.join(folder, name)):  # os.walk does not enter these
                note = _inspect(root_real, rel, in_git=False)
                if isinstance(note, str) and not _excluded_folder(root_real, rel, exclude):
                    notes.append(note)
            elif not (_is_venv(folder, name) or excluded(rel, exclude, is_dir=True)):
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            rel = prefix + name
            if name in JUNK_FILES or name.endswith(JUNK_FILE_SUFFIXES) or excluded(rel, exclude):
                continue
            item = _inspect(root_real, rel, in_git=False)
            if isinstance(item, _Found) and item.size > max_file:
                notes.append(
                    f"{rel} ({_size_text(item.size)}): above the {_limit_text(max_file)} limit "
                    "for one file outside git; data belongs in data_dir"
                )
            elif isinstance(item, _Found):
                found.append(item)
            elif item is not None:
                notes.append(item)
    return found, notes


def _is_venv(parent: str, name: str) -> bool:
    """A venv under any name: the folder holds pyvenv.cfg."""
    return os.path.exists(os.path.join(parent, name, "pyvenv.cfg"))


def _inspect(root_real: str, rel: str, *, in_git: bool) -> _Found | str | None:
    """The file at `rel` to read, a note saying why it is left out, or None if it is gone (a
    tracked file deleted from disk, or one removed since it was listed)."""
    path = os.path.join(root_real, rel)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _unreadable(rel, error) from None
    source = path
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if target != root_real and not target.startswith(root_real + os.sep):
            return f"{rel}: a symlink to {os.readlink(path)}, outside the project; left out"
        try:
            info = os.stat(target)
        except OSError:
            return f"{rel}: a dangling symlink (to {os.readlink(path)}); left out"
        if stat.S_ISDIR(info.st_mode):
            return f"{rel}: a symlink to a folder; symlinked folders are not followed"
        source = target
    elif stat.S_ISDIR(info.st_mode) and in_git:
        return f"{rel}: a git submodule; its files are left out"
    if not stat.S_ISREG(info.st_mode):
        return f"{rel}: not a regular file (a pipe, socket or device); left out"
    mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
    return _Found(rel, source, info.st_size, mode)


def _read(item: _Found) -> bytes | None:
    """The file's bytes; None if it vanished since it was listed."""
    try:
        with open(item.source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _unreadable(item.rel, error) from None


def _unreadable(what: object, error: OSError) -> HpcjobError:
    return HpcjobError(
        f"Cannot read {what} for the code snapshot: {error.strerror or error}.",
        hint="Make it readable, or leave it out with `exclude = [...]` under [project] in "
        "hpcjob.toml.",
        exit_code=EXIT_USAGE,
    )


# --- limits -----------------------------------------------------------------------------------


def _check_limits(
    top: Path, found: list[_Found], in_git: bool, max_bytes: int, max_files: int
) -> None:
    leave_out = (
        'Leave files out with `exclude = ["data/", "*.ckpt"]` under [project] in hpcjob.toml'
        + (" (or .gitignore them)" if in_git else "")
    )
    if len(found) > max_files:
        counts = Counter(_top_folder(item.rel) for item in found)
        rows = [f"  {folder}  {_files_text(count)}" for folder, count in _top_counts(counts)]
        raise HpcjobError(
            f"The code snapshot of {top} has {len(found):,} files, above the limit of "
            f"{max_files:,}. The folders holding the most:\n" + "\n".join(rows),
            hint=f"Data belongs in data_dir (`--data-dir`), not in the code. {leave_out}.",
            exit_code=EXIT_USAGE,
        )
    total = sum(item.size for item in found)
    if total > max_bytes:
        largest = _largest(((item.rel, item.size) for item in found), 5)
        rows = [f"  {path}  {_size_text(size)}" for path, size in largest]
        raise HpcjobError(
            f"The code snapshot of {top} is {_size_text(total)}, above the "
            f"{_limit_text(max_bytes)} limit. Its largest files:\n" + "\n".join(rows),
            hint=f"Data belongs in data_dir (`--data-dir`), not in the code. {leave_out}, "
            "or raise `max_snapshot_mb` there.",
            exit_code=EXIT_USAGE,
        )


def _largest(sizes: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    return sorted(sizes, key=lambda row: (-row[1], row[0]))[:n]


def _top_folder(rel: str) -> str:
    """`src/` for `src/a/b.py`; `./` for a file at the project's top."""
    return rel.split("/", 1)[0] + "/" if "/" in rel else "./"


def _top_counts(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda row: (-row[1], row[0]))[:5]


def _files_text(count: int) -> str:
    return "1 file" if count == 1 else f"{count:,} files"


def _size_text(size: int) -> str:
    """`83.2 MB` from a mebibyte up, else `12.5 KB`: the units the limits are given in."""
    return f"{size / _MB:.1f} MB" if size >= _MB else f"{size / 1024:.1f} KB"


def _limit_text(size: int) -> str:
    return f"{size // _MB} MB" if size % _MB == 0 else _size_text(size)
