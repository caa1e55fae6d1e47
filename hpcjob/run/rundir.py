"""The run directory: which files are hpcjob's and which the workload's, where a job's output and
exit status land, and the one way files are staged into it.

`<run_dir>/job.sh`, `run.json`, the `workload/` snapshot, `slurm-<jobid>.out`, `exit-status`
(`exit-status.<task>` for array tasks, written by the script's EXIT trap), a multi-process job's
`ranks/<jobid>/rank-<R>.out` and `.exit` (workloads/rank.py), and what the workload writes:
`metrics.jsonl`, plots, checkpoints (an array task in `task-<i>/`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.shell import Shell

if TYPE_CHECKING:
    from hpcjob.run.context import Context

# Relative path → (content, mode): what `Shell.write_files` writes in one go.
Files = dict[str, tuple[bytes, int]]

# Files a run directory holds that are hpcjob's own, not the workload's artifacts.
OWN_FILES = frozenset({"job.sh", "run.json", "metrics.jsonl"})
WORKLOAD_DIR = "workload"  # hpcjob's workload programs, staged with the run
CODE_DIR = "code"  # a program's working copy of its project's snapshot (program.sbatch.j2)
RANKS_DIR = "ranks"  # each rank's output and exit record, per job: ranks/<job id>/rank-<R>.out


def output_path(run: Run, job_id: str) -> str:
    return f"{run.run_dir}/slurm-{job_id}.out"


def exit_status_path(run: Run) -> str:
    task = run.job_id.split("_", 1)[1] if run.job_id and "_" in run.job_id else None
    return f"{run.run_dir}/exit-status" + (f".{task}" if task else "")


def rank_log_path(run: Run, job_id: str, rank: int) -> str:
    """One rank's own output in a multi-process job (workloads/rank.py, base.sbatch.j2)."""
    return f"{files_dir(run)}/{RANKS_DIR}/{job_id}/rank-{rank}.out"


def files_dir(run: Run) -> str:
    """Where the run's workload wrote its files: an array task has a folder of its own
    (`task-<i>`, see base.sbatch.j2), so tasks never share metrics or checkpoints."""
    if run.array_task is not None:
        return f"{run.run_dir}/task-{run.array_task}"
    return run.run_dir


def is_artifact(name: str) -> bool:
    """A file the workload left (a plot, eda.json, a checkpoint), not one of hpcjob's own; a
    program's working copy (`code/`) counts only through its artifact globs (`code_outputs`)."""
    top = name.split("/", 1)[0]
    if (
        name in OWN_FILES
        or top in (WORKLOAD_DIR, CODE_DIR, RANKS_DIR)
        or name.startswith(("exit-status", "."))
    ):
        return False
    return not (name.startswith("slurm-") and name.endswith(".out"))


def code_outputs(shell: Shell, run: Run, patterns: Sequence[str]) -> list[tuple[str, int]]:
    """Files of a program's working copy (`<files_dir>/code`) that match the project file's
    globs, as (path relative to the working copy, size): only the folders the globs can reach
    are listed (over SSH each listed folder is a round trip)."""
    from hpcjob.project.projectfile import glob_base, glob_match

    code = f"{files_dir(run)}/{CODE_DIR}"
    found: dict[str, int] = {}
    for pattern in patterns:
        base, depth = glob_base(pattern)
        folder = f"{code}/{base}" if base else code
        if not shell.exists(folder):
            continue
        for name, size in shell.list_files(folder, max_depth=depth):
            path = f"{base}/{name}" if base else name
            if glob_match(path, pattern):
                found[path] = size
    return sorted(found.items())


def code_files(code: dict[str, bytes]) -> Files:
    """The workload code snapshot as files of the run directory."""
    return {f"workload/{name}": (data, 0o644) for name, data in code.items()}


@contextlib.contextmanager
def staging(ctx: Context, run: Run) -> Iterator[None]:
    """Around writing a recorded run's directory: a failure leaves the run UNSUBMITTED (final, and
    safe to submit again) with the reason, and says so once — the only "Could not stage" error.

    The run directory is private to the user (shells make new folders 0700): on a shared cluster
    others must not read a run's script, output, metrics or checkpoints.
    """
    try:
        yield
    except (HpcjobError, OSError) as exc:
        ctx.ledger.mark_unsubmitted(run.run_id, f"staging the run directory failed: {exc}")
        raise HpcjobError(
            f"Could not stage {run.run_dir}: {exc}",
            hint="Check that the folder is writable and has room (on Snellius: `myquota`), or "
            f"set remote_root of profile {ctx.profile.name} to a folder that has.",
        ) from exc
