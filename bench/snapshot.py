"""How long `take_snapshot` takes on a project of 1,000 files / 20 MiB, in git and outside it
(issue 15: well under a second).

One command: `.venv/bin/python bench/snapshot.py`. Builds the same project twice in a temporary
folder (once a git repository: 900 files committed, 100 untracked; once a plain folder), each with
junk beside it that the snapshot leaves out (a venv and `__pycache__` folders: ignored through
.git/info/exclude in git, junk outside), times `take_snapshot` (medians of 5, warm and with the
files evicted from the page cache first) and writes the table into bench/RESULTS.md under
"## Code snapshot (issue 15)".
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import machine, write_section  # noqa: E402

from hpcjob.project.snapshot import snapshot_hash, take_snapshot  # noqa: E402

HEADING = "## Code snapshot (issue 15)"
REPEATS = 5
KIB = 1024
MIB = 1024 * 1024
SMALL, SMALL_BYTES = 990, 10 * KIB  # source files
LARGE = 10  # files that fill the project up to 20 MiB (vocabularies, small assets)
LARGE_BYTES = (20 * MIB - SMALL * SMALL_BYTES) // LARGE
GIT_LABEL = "in git (900 tracked + 100 untracked)"
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def project_files() -> dict[str, bytes]:
    """1,000 files, 20 MiB: 990 of 10 KiB in 20 packages, 10 of ~1 MiB; fixed by a seed."""
    rng = random.Random(15)
    letters = b"abcdefghijklmnopqrstuvwxyz_"
    words = [bytes(rng.choices(letters, k=8)) for _ in range(500)]

    def text(size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            out += b" ".join(rng.choices(words, k=9)) + b"\n"
        return bytes(out[:size])

    files = {f"pkg{i % 20:02d}/mod{i:04d}.py": text(SMALL_BYTES) for i in range(SMALL)}
    files |= {f"assets/vocab{i}.bin": rng.randbytes(LARGE_BYTES) for i in range(LARGE)}
    return files


def junk_files() -> dict[str, bytes]:
    """What a real project folder holds beside its code: a venv, byte-code caches."""
    site = ".venv/lib/python3.11/site-packages"
    files = {f"{site}/p{i // 100}/m{i}.py": b"x" * 2000 for i in range(2000)}
    files[".venv/pyvenv.cfg"] = b"home = /usr/bin\n"
    files |= {f"pkg{i:02d}/__pycache__/mod{i}.cpython-311.pyc": b"\0" * 5000 for i in range(20)}
    return files


def build(root: Path, files: dict[str, bytes], in_git: bool) -> None:
    for rel, content in {**files, **junk_files()}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if not in_git:
        return
    git = ["git", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True, env=GIT_ENV)
    (root / ".git" / "info" / "exclude").write_text(".venv/\n__pycache__/\n")
    committed = sorted(files)[:900]
    subprocess.run([*git, "add", "--", *committed], check=True, env=GIT_ENV)
    subprocess.run(
        [*git, "-c", "user.name=bench", "-c", "user.email=b@example.org", "commit", "-qm", "code"],
        check=True,
        env=GIT_ENV,
    )


def evict(root: Path) -> None:
    """Drop the project's files (and its .git) from the page cache, as after a reboot."""
    os.sync()  # the kernel keeps dirty pages (files just written) whatever fadvise asks
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(action: Callable[[], object], before: Callable[[], None] | None = None) -> list[float]:
    times = []
    for _ in range(REPEATS):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure(root: Path, label: str, files: dict[str, bytes]) -> tuple[list[str], str, float]:
    """Table rows (warm, cold) for the project at `root`, its snapshot's hash, the slowest
    median (ms)."""
    snap = take_snapshot(root)  # warms the page cache; checks what the bench times
    assert len(snap.files) == len(files) and snap.left_out == (), (len(snap.files), snap.left_out)
    rows = []
    medians: list[float] = []
    for cache, before in (("warm", None), ("cold", lambda: evict(root))):
        ms = timed(lambda: take_snapshot(root), before)
        medians.append(statistics.median(ms))
        rows.append(
            f"| {label} | {cache} | {len(snap.files):,} | {snap.total_bytes / MIB:.1f} "
            f"| {statistics.median(ms):.0f} | {min(ms):.0f}–{max(ms):.0f} |"
        )
    return rows, snap.sha256, max(medians)


def parts(root: Path) -> str:
    """Where the warm time in git goes: the one git call and the hash."""
    argv = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    git_ms = statistics.median(timed(lambda: subprocess.run(argv, capture_output=True)))
    snap = take_snapshot(root)
    hash_ms = statistics.median(timed(lambda: snapshot_hash(snap.files)))
    return (
        f"Of the warm time in git: the one `git ls-files` {git_ms:.0f} ms, `snapshot_hash` over "
        f"{snap.total_bytes / MIB:.0f} MiB {hash_ms:.0f} ms; the rest is one lstat and one read "
        "per file."
    )


def main() -> None:
    files = project_files()
    rows: list[str] = []
    hashes: set[str] = set()
    slowest = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        git_root, plain_root = Path(tmp) / "git", Path(tmp) / "plain"
        build(git_root, files, in_git=True)
        build(plain_root, files, in_git=False)
        for root, label in ((git_root, GIT_LABEL), (plain_root, "outside git")):
            more, sha, ms = measure(root, label, files)
            rows += more
            hashes.add(sha)
            slowest = max(slowest, ms)
        breakdown = parts(git_root)
    mib = sum(map(len, files.values())) / MIB
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; ext4 on a virtual disk. "
        "Command: `.venv/bin/python bench/snapshot.py`.",
        "",
        f"`take_snapshot` on a project of {len(files):,} files, {mib:.0f} MiB ({SMALL} source "
        f"files of {SMALL_BYTES // KIB} KiB, {LARGE} of {LARGE_BYTES / MIB:.2f} MiB), beside "
        f"{len(junk_files()):,} junk files it leaves out (a venv, `__pycache__`). Medians of "
        f"{REPEATS}; warm: files in the page cache; cold: the project (and its .git) evicted from "
        "the page cache before each run (posix_fadvise DONTNEED).",
        "",
        "| project | cache | files in the snapshot | MiB | median ms | min–max ms |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        breakdown,
        "",
        "The same files give the same hash in git and outside it: "
        + ("yes." if len(hashes) == 1 else "NO."),
        "",
        f"Target: well under a second for 1,000 files / 20 MB → the slowest median is "
        f"{slowest:.0f} ms.",
    ]
    body = "\n".join(lines) + "\n"
    write_section(body, HEADING)
    print(body)


if __name__ == "__main__":
    main()
