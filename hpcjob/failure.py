"""Why a run failed, in one line: the last error-looking line of the job's output, the cause
users hit most (recognised from that line, the end state, the exit code and the run's facts) and
its fix. Pure: text and values in, a `Failure` out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# How much of the end of the output is read for this (the error is at the end).
TAIL_BYTES = 64 * 1024

_LINE_MAX = 300

_ERROR_LINE = re.compile(
    r"^(?:"
    r"[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)(?::|$)"  # a Traceback's last line
    r"|.*\b(?:Error|error|ERROR):"  # `Error: …`, `slurmstepd: error: …`, `bash: error: …`
    r"|hpcjob: "  # our templates' own notes
    r"|.*: command not found$"
    r"|.*No such file or directory"
    r"|.*Disk quota exceeded"
    r"|.*DUE TO TIME LIMIT"
    r"|.*CUDA out of memory"
    r")"
)


@dataclass(frozen=True)
class Failure:
    line: str
    cause: str | None = None
    fix: str | None = None

    def as_fact(self) -> dict[str, str | None]:
        return {"line": self.line, "cause": self.cause, "fix": self.fix}


@dataclass(frozen=True)
class _Cause:
    name: str
    summary: str
    fix: str
    pattern: re.Pattern[str]


_CAUSES = (
    _Cause(
        "module not found",
        "a Python module is missing from the job's environment",
        "build the job's environment: `hpcjob setup-env` (the job ran a Python without the "
        "project's packages)",
        re.compile(r"ModuleNotFoundError|ImportError: No module named"),
    ),
    _Cause(
        "no GPU",
        "GPUs were asked for but the job saw no CUDA device",
        "submit to a GPU partition (`--partition`), build a CUDA environment (`hpcjob setup-env`),"
        " or give `--allow-cpu` to train on the CPU",
        re.compile(
            r"sees no CUDA device|CUDA is not available|no CUDA-capable device"
            r"|Found no NVIDIA driver|asked for \d+ GPUs? but",
            re.IGNORECASE,
        ),
    ),
    _Cause(
        "GPU out of memory",
        "the GPU ran out of memory",
        "use a smaller `--batch-size` (or a GPU with more memory)",
        re.compile(r"CUDA out of memory|OutOfMemoryError: CUDA"),
    ),
    _Cause(
        "out of memory",
        "the job ran out of memory",
        "ask for more memory: `--mem 32G` (a bigger `--mem` than the job had)",
        re.compile(r"\bMemoryError\b|oom-kill|OUT_OF_MEMORY|Out Of Memory|Killed process"),
    ),
    _Cause(
        "time limit",
        "the job reached its time limit",
        "ask for more time (`--time 4:00:00`, within the partition's limit); `--auto-requeue N` "
        "resubmits a job that hits it and train resumes from its last checkpoint",
        re.compile(r"DUE TO TIME LIMIT|TIMEOUT"),
    ),
    _Cause(
        "non-finite loss",
        "the loss became NaN or infinite",
        "lower `--lr`, or go on from the last good checkpoint (train.py `--resume auto`)",
        re.compile(r"non-finite loss", re.IGNORECASE),
    ),
    _Cause(
        "disk quota",
        "the disk quota is full",
        "see what is used with `myquota`, then clean up old runs and checkpoints",
        re.compile(r"Disk quota exceeded|EDQUOT"),
    ),
    _Cause(
        "command not found",
        "a command is not on the job's PATH",
        "load its module or environment (`hpcjob setup-env`), or give the command's full path",
        re.compile(r"command not found"),
    ),
    _Cause(
        "file not found",
        "a file or directory the job needed is not there",
        "check the path on the cluster; point `--data-dir` at the data set there",
        re.compile(r"FileNotFoundError|No such file or directory"),
    ),
)
_BY_NAME = {c.name: c for c in _CAUSES}


def error_line(output_tail: str) -> str | None:
    """The last error-looking line of the output, stripped and shortened."""
    for raw in reversed(output_tail.splitlines()):
        line = raw.strip()
        if line and _ERROR_LINE.match(line):
            return line if len(line) <= _LINE_MAX else line[: _LINE_MAX - 1] + "…"
    return None


def _match(text: str) -> _Cause | None:
    return next((c for c in _CAUSES if c.pattern.search(text)), None)


def _cause(
    state: str, exit_code: int | None, line: str | None, tail: str, facts: dict[str, Any]
) -> _Cause | None:
    if state == "TIMEOUT":
        return _BY_NAME["time limit"]
    if state == "OUT_OF_MEMORY":
        return _BY_NAME["out of memory"]
    found = _match(line) if line else None
    if found is not None:
        return found
    if facts.get("gpu_unused_reason") and not facts.get("allow_cpu"):
        return _BY_NAME["no GPU"]
    if exit_code == 65:  # train.py's EX_DATAERR: a non-finite loss
        return _BY_NAME["non-finite loss"]
    if exit_code == 127:
        return _BY_NAME["command not found"]
    return _match(tail)


def explain_failure(
    state: str, exit_code: int | None, output_tail: str, facts: dict[str, Any]
) -> Failure | None:
    """Why a run that ended `state` (other than COMPLETED) failed; None when nothing says."""
    if state == "COMPLETED":
        return None
    line = error_line(output_tail)
    cause = _cause(state, exit_code, line, output_tail, facts)
    if line is None and cause is None:
        return None
    return Failure(
        line=line or (cause.summary if cause else ""),
        cause=cause.name if cause else None,
        fix=cause.fix if cause else None,
    )
