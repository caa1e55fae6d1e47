"""The user's own batch script (`hpcjob submit job.sh`): its #SBATCH options, sorted into what
hpcjob asks for itself (the fields of `SpecRequest`), what passes through to sbatch unchanged,
and what hpcjob sets itself and so drops.

Pure. The values are only mapped here; `hpcjob.spec.build_spec` and the live partitions judge
them later, as they judge the same options given on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.slurm import SHORT_OPTIONS, SbatchDirective, parse_sbatch_directives

# #SBATCH option → SpecRequest field, for values taken as text.
_TEXT_FIELDS = {
    "partition": "partition",
    "time": "time",
    "mem": "mem",
    "account": "account",
    "constraint": "constraint",
    "job-name": "job_name",
    "array": "array",
}
_COUNT_FIELDS = {"nodes": "nodes", "cpus-per-task": "cpus_per_task"}
_GPU_OPTIONS = ("gpus", "gpus-per-node")
# Options hpcjob sets itself, and why the script's own are dropped.
_IGNORED = {
    "output": "hpcjob writes the job's output to the run directory",
    "error": "hpcjob writes the job's output (stdout and stderr) to the run directory",
    "open-mode": "hpcjob writes the job's output to the run directory",
    "comment": "hpcjob marks its jobs with their comment to find them again",
    "chdir": "hpcjob starts the job in its run directory",
    "parsable": "hpcjob reads sbatch's answer itself",
    "wait": "sbatch returns at once; `hpcjob submit --wait` waits for the job",
    "test-only": "hpcjob submits the job; `hpcjob render` shows it without submitting",
}


@dataclass(frozen=True)
class BatchScript:
    """What a batch script's #SBATCH lines ask for.

    `options` holds values for `SpecRequest` fields (partition, time, nodes, cpus_per_task, mem,
    gpus, account, constraint, job_name, array, after); `extra` the other options, passed to
    sbatch as they are (a flag such as `exclusive` with value ""); `ignored` a note for each
    option hpcjob sets itself and drops; `notes` what else a person should know.
    """

    options: dict[str, Any] = field(default_factory=dict)
    extra: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class _Reading:
    """The script being read: what was found so far, and every problem."""

    options: dict[str, Any] = field(default_factory=dict)
    extra: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_batch_script(name: str, text: str) -> BatchScript:
    """Sort the #SBATCH options of a batch script; every unusable line is reported at once."""
    if not text.startswith("#!"):
        raise HpcjobError(
            f"{name} does not start with a `#!` line.",
            hint="A batch script needs a `#!/bin/bash` first line; sbatch refuses it otherwise.",
            exit_code=EXIT_USAGE,
        )
    try:
        directives = parse_sbatch_directives(text)
    except HpcjobError as exc:
        raise HpcjobError(
            f"{name}: {exc.message}",
            hint="Close the quote on that line.",
            exit_code=EXIT_USAGE,
        ) from exc
    reading = _Reading()
    for directive in directives:
        _read_directive(directive, reading)
    if reading.problems:
        lines = "\n".join(f"  - {p}" for p in reading.problems)
        raise HpcjobError(
            f"{name} has #SBATCH lines hpcjob cannot use:\n{lines}",
            hint=f"Fix these lines of {name}, or give the values on the command line instead.",
            exit_code=EXIT_USAGE,
        )
    return BatchScript(
        options=reading.options,
        extra=tuple(reading.extra),
        ignored=tuple(reading.ignored),
        notes=tuple(reading.notes),
    )


def _read_directive(d: SbatchDirective, reading: _Reading) -> None:
    """One option into `reading` (sbatch takes the last of a repeated option; so does this)."""
    where = f"line {d.line_no} `{d.line.strip()}`"
    if not d.name or (not d.written.startswith("--") and d.written not in SHORT_OPTIONS):
        reading.problems.append(f"{where}: {_unknown_option(d.written)}")
    elif d.name in _IGNORED:
        reading.ignored.append(f"{where}: --{d.name} is dropped; {_IGNORED[d.name]}")
    elif d.name in _TEXT_FIELDS:
        if d.value:
            reading.options[_TEXT_FIELDS[d.name]] = d.value
        else:
            reading.problems.append(f"{where}: --{d.name} needs a value")
    elif d.name in _COUNT_FIELDS:
        _count(d, _COUNT_FIELDS[d.name], where, reading)
    elif d.name in _GPU_OPTIONS:
        kind, _, count = d.value.rpartition(":")
        _count(d, "gpus", where, reading, count)
        _gpu_kind(kind, count, where, reading)
    elif d.name == "gres":
        _gres(d, where, reading)
    elif d.name == "dependency":
        _dependency(d, where, reading)
    elif d.name == "ntasks":
        _ntasks(d, where, reading)
    else:
        reading.extra.append((d.name, d.value))


def _unknown_option(written: str) -> str:
    short, attached = written[:2], written[2:]
    if short in SHORT_OPTIONS and attached:  # `-pgpu`: sbatch reads it, hpcjob does not
        long = SHORT_OPTIONS[short]
        return f"write {short} {attached} or --{long}={attached} instead of {written}"
    return f"hpcjob does not know the option {written!r}; write its long form, as --name=value"


def _whole_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _count(
    d: SbatchDirective, key: str, where: str, reading: _Reading, text: str | None = None
) -> None:
    text = d.value if text is None else text
    number = _whole_number(text)
    if number is None:
        reading.problems.append(f"{where}: --{d.name} wants a whole number, not {d.value!r}")
    else:
        reading.options[key] = number


def _gpu_kind(kind: str, count: str, where: str, reading: _Reading) -> None:
    """A GPU type (`a100` of `gpu:a100:2`) cannot travel with hpcjob's GPU count: say so."""
    kind = kind.removeprefix("gpu:") if kind != "gpu" else ""
    if kind:
        reading.ignored.append(
            f"{where}: the GPU type {kind!r} is dropped; hpcjob asks for {count} GPU(s) and "
            "the partition decides their kind (choose the partition with that GPU)"
        )


def _gres(d: SbatchDirective, where: str, reading: _Reading) -> None:
    """`--gres=gpu:2` / `gpu:a100:2` → gpus 2; other generic resources pass through."""
    others = []
    for item in filter(None, d.value.split(",")):
        if item != "gpu" and not item.startswith("gpu:"):
            others.append(item)
            continue
        # gpu[:type][:count], the count 1 when left out (as Slurm reads it)
        parts = item.split(":")[1:]
        count = parts.pop() if parts and parts[-1].isdigit() else "1"
        reading.options["gpus"] = int(count)
        _gpu_kind(":".join(parts), count, where, reading)
    if others:
        reading.extra.append(("gres", ",".join(others)))


def _dependency(d: SbatchDirective, where: str, reading: _Reading) -> None:
    """`afterok:123` → after "123"; hpcjob waits for one job that succeeds, nothing else."""
    kind, _, job_id = d.value.partition(":")
    if kind != "afterok" or not job_id or any(c in job_id for c in ":,?+"):
        reading.problems.append(
            f"{where}: hpcjob can wait for one job to succeed (afterok:JOB_ID), "
            f"not {d.value!r}; give that as `--after JOB_ID`"
        )
    else:
        reading.options["after"] = job_id


def _ntasks(d: SbatchDirective, where: str, reading: _Reading) -> None:
    number = _whole_number(d.value)
    if number is None:
        reading.problems.append(f"{where}: --ntasks wants a whole number, not {d.value!r}")
    elif number != 1:
        reading.extra.append(("ntasks", d.value))
        reading.notes.append(
            f"{where}: --ntasks={number} goes to sbatch, but hpcjob starts your script once, "
            "as one task; start the others yourself (srun)"
        )
