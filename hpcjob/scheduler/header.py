"""The #SBATCH header of a job script, read as sbatch reads it (pure), for the embedded scheduler:
time limit, output pattern, resources, warning signal, afterok dependencies, array spec."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from hpcjob.errors import HpcjobError
from hpcjob.slurm import expand_array_ids, sbatch_directives
from hpcjob.spec import parse_memory_mb, parse_time_limit


@dataclass(frozen=True)
class ScriptHeader:
    """The #SBATCH directives the embedded scheduler honours."""

    job_name: str
    output: str
    time_s: int | None
    partition: str | None
    cpus_per_task: int | None
    mem_mb: int | None
    gpus: int
    account: str | None
    comment: str | None
    signal: tuple[int, int] | None  # (signal number, seconds before the limit)
    after: tuple[str, ...] = ()  # afterok dependencies
    array: str | None = None  # e.g. "0-3%2"


def parse_script_header(script: str, default_name: str = "job") -> ScriptHeader:
    """Read the #SBATCH lines at the top of a script, as sbatch does (pure); the last wins."""
    options = dict(sbatch_directives(script))
    return ScriptHeader(
        job_name=options.get("job-name", default_name),
        output=options.get("output", "slurm-%j.out"),
        time_s=parse_time_limit(options["time"]) if "time" in options else None,
        partition=options.get("partition"),
        cpus_per_task=int(options["cpus-per-task"]) if "cpus-per-task" in options else None,
        mem_mb=parse_memory_mb(options["mem"]) if "mem" in options else None,
        gpus=int(options.get("gpus", "0").split(":")[-1] or 0),
        account=options.get("account"),
        comment=options.get("comment"),
        signal=_parse_signal(options["signal"]) if "signal" in options else None,
        after=_parse_dependency(options.get("dependency", "")),
        array=options.get("array"),
    )


def array_tasks(spec: str) -> tuple[list[int], int | None]:
    """`0-3%2` → ([0, 1, 2, 3], 2): the task ids and the throttle (at most that many at once)."""
    _, _, throttle = spec.partition("%")
    tasks = [int(t.split("_", 1)[1]) for t in expand_array_ids(f"0_[{spec}]")]
    return sorted(set(tasks)), int(throttle) if throttle.isdigit() and int(throttle) > 0 else None


def _parse_dependency(text: str) -> tuple[str, ...]:
    """`afterok:12:13` → ("12", "13"); other dependency kinds are refused."""
    if not text:
        return ()
    kind, _, ids = text.partition(":")
    if kind != "afterok" or not ids:
        raise HpcjobError(
            f"The embedded scheduler understands only afterok dependencies, not {text!r}."
        )
    return tuple(ids.split(":"))


def _parse_signal(text: str) -> tuple[int, int]:
    """`B:USR1@30` → (SIGUSR1, 30)."""
    spec = text.split(":", 1)[-1]
    name, _, when = spec.partition("@")
    signame = name if name.startswith("SIG") else "SIG" + name
    number = int(name) if name.isdigit() else int(getattr(signal, signame))
    return number, int(when or 60)


def expand_output(pattern: str, job_id: str, job_name: str, task: int | None = None) -> str:
    """Slurm's filename patterns: %j job id, %A array job id, %a task id, %x job name, %u user,
    %% a percent sign."""
    user = os.environ.get("USER", "user")
    array_id = job_id.partition("_")[0]
    return (
        pattern.replace("%%", "\0")
        .replace("%j", job_id)
        .replace("%A", array_id)
        .replace("%a", str(task) if task is not None else "4294967294")
        .replace("%x", job_name)
        .replace("%u", user)
        .replace("\0", "%")
    )
