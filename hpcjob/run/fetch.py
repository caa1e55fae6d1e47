"""`hpcjob fetch`: copy a run's files from the cluster (through the profile's Shell: this
machine's files, or SFTP) into a local folder.

Each file is written under a temporary name and renamed when complete, so an interrupted fetch
never leaves a partial file that looks whole. Checkpoints come only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.rundir import CODE_DIR, WORKLOAD_DIR, code_outputs, files_dir
from hpcjob.shell import Shell, is_relative_name

_CHUNK = 8 * 1024 * 1024
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Copied:
    name: str  # relative to the destination folder
    source: str
    size: int


def is_checkpoint(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return "checkpoints" in parts or name.endswith(_CHECKPOINT_SUFFIXES)


def wanted(name: str, checkpoints: bool) -> bool:
    """Artifacts worth a copy: not the code snapshot, exit-status files or hidden temporaries."""
    top = PurePosixPath(name).parts[0]
    if top in (WORKLOAD_DIR, CODE_DIR) or top.startswith((".", "exit-status")) or name == "job.sh":
        return False
    return checkpoints or not is_checkpoint(name)


def plan(shell: Shell, run: Run, folder: str, checkpoints: bool) -> list[tuple[str, str]]:
    """(source path, name at the destination) for every file to copy: a program's working copy
    only through its `artifacts` and `metrics` globs."""
    files = shell.list_files(folder) if shell.exists(folder) else []
    chosen = [(f"{folder}/{name}", name) for name, _ in files if wanted(name, checkpoints)]
    program = run.spec.get("program") or {}
    patterns = [*(program.get("artifacts") or ()), *(program.get("metrics") or ())]
    for name, _ in code_outputs(shell, run, patterns):
        relative = f"{CODE_DIR}/{name}"
        if checkpoints or not is_checkpoint(relative):
            chosen.append((f"{folder}/{relative}", relative))
    # A task's output and run.json are in the array's folder, not in its own.
    extra = [run.output_path, f"{run.run_dir}/run.json"]
    names = {name for _, name in chosen}
    for path in extra:
        if path and PurePosixPath(path).name not in names and shell.size(path) is not None:
            chosen.append((path, PurePosixPath(path).name))
    return sorted(chosen, key=lambda item: item[1])


def fetch(
    ctx: Context,
    run: Run,
    dest: Path,
    checkpoints: bool = False,
    on_file: Callable[[Copied], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[Copied]:
    """Copy the run's artifacts into `dest`; what was copied, in order. A name that would land
    outside `dest` is skipped, and `on_skip(name, why)` told."""
    shell = ctx.scheduler.shell
    sources = plan(shell, run, files_dir(run), checkpoints)
    if not sources:
        raise HpcjobError(
            f"Run {run.run_id} has no files to fetch in {files_dir(run)}.",
            hint="It may not have started yet (`hpcjob status`), or its run directory was removed.",
        )
    copied = []
    for source, name in sources:
        target = dest / name
        # The names come from the cluster: a compromised login node may answer `../../.bashrc`
        # or `/home/me/.ssh/authorized_keys` (scp's CVE-2019-6111).
        if not is_relative_name(name) or not _inside(target, dest):
            if on_skip is not None:
                on_skip(name, f"not a plain relative file name; it would be written outside {dest}")
            continue
        size = copy_file(shell, source, target)
        item = Copied(name, source, size)
        copied.append(item)
        if on_file is not None:
            on_file(item)
    return copied


def _inside(target: Path, dest: Path) -> bool:
    return target.resolve().is_relative_to(dest.resolve())


def copy_file(shell: Shell, source: str, target: Path) -> int:
    """One file, read in chunks into `<target>.part-<pid>`, then renamed over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    total = 0
    try:
        with open(tmp, "wb") as handle:
            while True:
                chunk = shell.read_bytes(source, total, _CHUNK)
                if not chunk:
                    break
                handle.write(chunk)
                total += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return total


def default_dest(run: Run) -> Path:
    return Path.cwd() / "hpcjob-runs" / run.run_id
