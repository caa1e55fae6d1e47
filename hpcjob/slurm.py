"""Slurm's command lines and what its commands print: pure argv builders and parsers.

No processes, no files: `*_argv()` build the argv of sbatch, squeue, sacct, sinfo and scancel;
`parse_*()` read their output (recorded samples in tests/fixtures/slurm/) into frozen dataclasses.
Output is parsed by its header line, so lines a login shell prints before it (a `.bashrc`
banner over SSH) are skipped. Anything else unexpected is an `HpcjobError` that names it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState

# ------------------------------------------------------------------------------------ formats
# squeue: one row per job, array task, or pending rest of an array (`27_[2-5%2]`). The job name
# is last so that a `|` in it cannot shift the other columns.
SQUEUE_FORMAT = "%i|%A|%F|%K|%T|%r|%P|%N|%M|%l|%S|%k|%j"
SQUEUE_HEADER = (
    "JOBID|JOBID|ARRAY_JOB_ID|ARRAY_TASK_ID|STATE|REASON|PARTITION|NODELIST|TIME|TIME_LIMIT|"
    "START_TIME|COMMENT|NAME"
)
SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "Partition",
    "State",
    "ExitCode",
    "Elapsed",
    "ElapsedRaw",
    "CPUTime",
    "CPUTimeRAW",
    "TotalCPU",
    "MaxRSS",
    "ReqMem",
    "AllocCPUS",
    "AllocTRES",
    "ReqTRES",
    "NodeList",
    "Submit",
    "Start",
    "End",
    "Timelimit",
    "Reason",
    "Comment",
)
# sinfo: without %T the rows are not split by node state; %F counts allocated/idle/other/total.
SINFO_FORMAT = "%P|%a|%l|%D|%F|%c|%m|%G"
SINFO_HEADER = "PARTITION|AVAIL|TIMELIMIT|NODES|NODES(A/I/O/T)|CPUS|MEMORY|GRES"

_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
_MAX_ARRAY_IDS = 100_000


def _check_job_ids(job_ids: Iterable[str], command: str) -> list[str]:
    ids = [str(j).strip() for j in job_ids]
    if not ids:
        raise ValueError(f"{command} needs at least one job id")
    bad = [j for j in ids if not _JOB_ID.match(j)]
    if bad:
        raise HpcjobError(
            f"Not a Slurm job id: {bad[0]!r}",
            hint="A job id is a number like 18163908, or 18163908_3 for one task of an array.",
        )
    return ids


# ------------------------------------------------------------------------------------ sbatch
def sbatch_argv(script_path: str, *, comment: str, extra: Sequence[str] = ()) -> list[str]:
    """`sbatch --parsable --comment TOKEN [extra] SCRIPT`; the #SBATCH header is in the script."""
    if not comment or any(c.isspace() for c in comment):
        raise ValueError(f"the sbatch comment must be one word, not {comment!r}")
    return ["sbatch", "--parsable", "--comment", comment, *extra, script_path]


@dataclass(frozen=True)
class SbatchResult:
    """What `sbatch --parsable` printed: the job id (an array's base id) and maybe the cluster."""

    job_id: str
    cluster: str | None = None


_SBATCH_ID = re.compile(r"^(?P<job_id>\d+)(?:;(?P<cluster>[\w.-]+))?$")


def parse_sbatch_job_id(stdout: str) -> SbatchResult:
    """Read `27` or `27;cluster` from the last non-empty line (a login banner may precede it)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    match = _SBATCH_ID.match(lines[-1]) if lines else None
    if match is None:
        shown = lines[-1][:200] if lines else "nothing"
        raise HpcjobError(
            f"sbatch did not print a job id (it printed {shown!r})",
            hint="Check with `squeue --me` whether the job was queued before submitting again.",
        )
    return SbatchResult(job_id=match["job_id"], cluster=match["cluster"])


# --------------------------------------------------------------------------- errors on stderr
class SlurmErrorKind(str, Enum):
    """What went wrong, as far as a program needs to know to decide what to do next."""

    INVALID_PARTITION = "invalid_partition"
    TIME_LIMIT = "time_limit"
    INVALID_TIME = "invalid_time"
    NODE_CONFIG = "node_config"
    INVALID_ACCOUNT = "invalid_account"
    QOS_POLICY = "qos_policy"
    INVALID_GRES = "invalid_gres"
    SCRIPT_UNREADABLE = "script_unreadable"
    # The controller may have queued the job anyway: look it up (by token) before any retry.
    SOCKET_TIMEOUT = "socket_timeout"
    CONTROLLER_DOWN = "controller_down"
    ACCOUNTING_DOWN = "accounting_down"
    UNKNOWN_JOB = "unknown_job"
    PERMISSION_DENIED = "permission_denied"
    OTHER = "other"


@dataclass(frozen=True)
class SlurmError:
    """A Slurm command's complaint: its kind and the line that says it (prefixes removed)."""

    kind: SlurmErrorKind
    message: str
    detail: str | None = None  # e.g. the partition name sbatch did not know


# First match wins: more specific patterns before general ones.
_ERROR_PATTERNS: tuple[tuple[SlurmErrorKind, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        (SlurmErrorKind.SOCKET_TIMEOUT, r"Socket timed out on send/recv"),
        (SlurmErrorKind.CONTROLLER_DOWN, r"Unable to contact slurm controller"),
        (
            SlurmErrorKind.ACCOUNTING_DOWN,
            r"Problem talking to the database|accounting storage is disabled|"
            r"persistent connection to host",
        ),
        (SlurmErrorKind.INVALID_PARTITION, r"Invalid partition name|invalid partition specified"),
        (SlurmErrorKind.TIME_LIMIT, r"Requested time limit is invalid"),
        (SlurmErrorKind.INVALID_TIME, r"Invalid --time specification|Invalid time limit"),
        (SlurmErrorKind.NODE_CONFIG, r"Requested node configuration is not available"),
        (SlurmErrorKind.INVALID_ACCOUNT, r"Invalid account|Invalid qos specification"),
        (SlurmErrorKind.QOS_POLICY, r"Job violates accounting/QOS policy|QOSMax|AssocMax"),
        (SlurmErrorKind.INVALID_GRES, r"Invalid generic resource|Invalid GRES"),
        (SlurmErrorKind.SCRIPT_UNREADABLE, r"Unable to open file"),
        (SlurmErrorKind.UNKNOWN_JOB, r"Invalid job id specified"),
        (SlurmErrorKind.PERMISSION_DENIED, r"Access/permission denied|Permission denied"),
    )
)
# `sbatch: error: `, `slurm_load_jobs error: `, `slurm_load_partitions: `, `Batch job … failed: `
_PREFIX = re.compile(
    r"^(?:[\w-]+: |[\w-]+ (?=error: ))?(?:error: |fatal: )?(?:Batch job submission failed: )?",
    re.IGNORECASE,
)


def _error_lines(stderr: str) -> list[str]:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\b(error|fatal)\b", line, re.IGNORECASE)]
    return errors or lines


def parse_slurm_error(stderr: str) -> SlurmError:
    """Classify what a Slurm command printed on stderr when it failed."""
    lines = _error_lines(stderr)
    if not lines:
        return SlurmError(SlurmErrorKind.OTHER, "(it printed nothing on stderr)")
    for kind, pattern in _ERROR_PATTERNS:
        for line in reversed(lines):
            if pattern.search(line):
                return SlurmError(kind, _PREFIX.sub("", line), _detail(kind, lines))
    return SlurmError(SlurmErrorKind.OTHER, _PREFIX.sub("", lines[-1]))


def _detail(kind: SlurmErrorKind, lines: list[str]) -> str | None:
    if kind is SlurmErrorKind.INVALID_PARTITION:
        for line in lines:
            m = re.search(r"invalid partition specified: (\S+)", line, re.IGNORECASE)
            if m:
                return m[1]
    if kind is SlurmErrorKind.SCRIPT_UNREADABLE:
        for line in lines:
            m = re.search(r"Unable to open file (.+)$", line)
            if m:
                return m[1].strip()
    return None


_SBATCH_HINTS: dict[SlurmErrorKind, str] = {
    SlurmErrorKind.INVALID_PARTITION: (
        "Run `hpcjob partitions` to see the partitions you can use, and pass one with --partition."
    ),
    SlurmErrorKind.TIME_LIMIT: (
        "Ask for less --time: `hpcjob partitions` shows each partition's time limit."
    ),
    SlurmErrorKind.INVALID_TIME: (
        "Write --time as minutes, HH:MM:SS or D-HH:MM:SS (e.g. 1-12:00:00)."
    ),
    SlurmErrorKind.NODE_CONFIG: (
        "No node in that partition has that many GPUs, CPUs or that much memory. Ask for less, "
        "or pick a partition that has them: `hpcjob partitions` shows what each node has "
        "(GPUs only on GPU partitions)."
    ),
    SlurmErrorKind.INVALID_ACCOUNT: (
        "Check the account (project) name, and that it may use this partition: "
        "`sacctmgr show associations user=$USER format=account,partition` lists yours."
    ),
    SlurmErrorKind.QOS_POLICY: (
        "A limit of your account or QOS stops the job (too many jobs queued, or too large). "
        "Wait for running jobs to finish or ask for less."
    ),
    SlurmErrorKind.INVALID_GRES: "Ask for GPUs as --gpus N (or --gpus TYPE:N) on a GPU partition.",
    SlurmErrorKind.SCRIPT_UNREADABLE: "The job script was not staged where sbatch looked for it.",
    SlurmErrorKind.SOCKET_TIMEOUT: (
        "The Slurm controller is busy and did not answer in time; the job may have been queued "
        "anyway. Run `hpcjob status` in a minute: hpcjob looks the job up by its token before "
        "it submits again."
    ),
    SlurmErrorKind.CONTROLLER_DOWN: (
        "Slurm's controller cannot be reached (maintenance or an outage). Try again later."
    ),
    SlurmErrorKind.ACCOUNTING_DOWN: (
        "Slurm's accounting database is not answering. Try again later."
    ),
}


def parse_sbatch_error(stderr: str) -> tuple[str, str | None]:
    """Turn sbatch's rejection into (message, hint) in the user's words."""
    err = parse_slurm_error(stderr)
    message = f"sbatch refused the job: {err.message}"
    if err.kind is SlurmErrorKind.INVALID_PARTITION and err.detail:
        message = f"sbatch refused the job: Slurm has no partition {err.detail!r}"
    elif err.kind is SlurmErrorKind.SOCKET_TIMEOUT:
        message = f"sbatch gave up waiting for Slurm: {err.message}"
    return message, _SBATCH_HINTS.get(err.kind)


# --------------------------------------------------------------------------- #SBATCH lines
# sbatch's short options, by the long name they stand for.
SHORT_OPTIONS = {
    "-J": "job-name",
    "-t": "time",
    "-o": "output",
    "-e": "error",
    "-p": "partition",
    "-c": "cpus-per-task",
    "-G": "gpus",
    "-A": "account",
    "-N": "nodes",
    "-n": "ntasks",
    "-C": "constraint",
    "-a": "array",
    "-d": "dependency",
    "-D": "chdir",
}


@dataclass(frozen=True)
class SbatchDirective:
    """One option of a `#SBATCH` line: its long name (no dashes), its value ("" for a flag such
    as `--exclusive`), the option as written, and the script line it is on (1-based)."""

    name: str
    value: str
    written: str
    line_no: int
    line: str


def parse_sbatch_directives(script: str) -> list[SbatchDirective]:
    """The options of the #SBATCH lines at the top of a script, in order, as sbatch reads them:
    after the first line (`#!…`), up to the first command. `--key=value`, `--key value` and
    `-k value` are understood; short options become their long names (SHORT_OPTIONS). As in
    sbatch, `'` and `"` quote, and an unquoted `#` ends the line (the rest is a comment)."""
    out: list[SbatchDirective] = []
    for line_no, line in enumerate(script.splitlines()[1:], 2):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # sbatch stops at the first command
        if not stripped.startswith("#SBATCH"):
            continue
        try:
            words = shlex.split(stripped[len("#SBATCH") :], comments=True)
        except ValueError as exc:
            raise HpcjobError(
                f"Cannot read the job script line {line!r} (line {line_no}): {exc}"
            ) from exc
        while words:
            key, has_value, value = words.pop(0).partition("=")
            if not has_value and words and not words[0].startswith("-"):
                value = words.pop(0)  # `-t 1:30` / `--time 1:30`
            name = SHORT_OPTIONS.get(key, key.lstrip("-"))
            out.append(SbatchDirective(name, value, key, line_no, line))
    return out


def sbatch_directives(script: str) -> list[tuple[str, str]]:
    """(long option name, value) of each #SBATCH option at the top of a script, in order."""
    return [(d.name, d.value) for d in parse_sbatch_directives(script)]


# ------------------------------------------------------------------------------------- times
_LIMIT_FORMS = (
    # Slurm's --time input forms, in sbatch(1)'s words; `MM` alone means minutes.
    (re.compile(r"^(?P<m>\d+)$")),
    (re.compile(r"^(?P<m>\d+):(?P<s>\d+)$")),
    (re.compile(r"^(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$")),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+)$")),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)$")),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$")),
)
_NO_LIMIT = {"UNLIMITED", "INFINITE", "INVALID", "PARTITION_LIMIT", "N/A", "NONE", ""}
# What Slurm prints for durations (Elapsed, TotalCPU, squeue TIME, sinfo TIMELIMIT):
# [D-][HH:]MM:SS[.mmm] — never a bare number.
_DURATION = re.compile(r"^(?:(?:(?P<d>\d+)-)?(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


def parse_slurm_time(text: str) -> int | None:
    """A time limit as written for --time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
    `D-HH:MM:SS`) in seconds; None for `UNLIMITED`/`INFINITE`, or `INVALID` (no usable limit)."""
    value = text.strip()
    if value.upper() in _NO_LIMIT:
        return None
    for form in _LIMIT_FORMS:
        match = form.match(value)
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            return (
                parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
            )
    raise HpcjobError(
        f"Not a Slurm time limit: {text!r}",
        hint="Write minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS (1-12:00:00).",
    )


def parse_slurm_duration(text: str) -> float | None:
    """A duration as Slurm prints it (`1-02:03:04`, `02:03:04`, `03:04`, `00:03.815`) in
    seconds; None for `UNLIMITED`/`INFINITE`/`INVALID`/`N/A`/empty."""
    value = text.strip()
    if value.upper() in _NO_LIMIT:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise HpcjobError(f"Not a Slurm duration: {text!r}")
    return (
        int(match["d"] or 0) * 86400
        + int(match["h"] or 0) * 3600
        + int(match["m"]) * 60
        + float(match["s"])
    )


def _duration_s(text: str) -> int | None:
    seconds = parse_slurm_duration(text)
    return None if seconds is None else round(seconds)


def format_slurm_time(seconds: int) -> str:
    """Seconds as a --time value: `HH:MM:SS`, or `D-HH:MM:SS` from a day on."""
    if seconds < 0:
        raise ValueError(f"a time limit cannot be negative: {seconds}")
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


# --------------------------------------------------------------------------------- array ids
_ARRAY = re.compile(r"^(?P<base>\d+)_\[(?P<spec>[^\]]+)\]$")
_ARRAY_RANGE = re.compile(r"^(?P<lo>\d+)(?:-(?P<hi>\d+)(?::(?P<step>\d+))?)?$")


def expand_array_ids(job_id: str) -> list[str]:
    """`27_[0-3%2]` → 27_0…27_3; `27_[1,4-6:2]` → 27_1, 27_4, 27_6; `27_3` and `27` as they are."""
    value = job_id.strip()
    if _JOB_ID.match(value):
        return [value]
    match = _ARRAY.match(value)
    if match is None:
        raise HpcjobError(f"Not a Slurm job or array id: {job_id!r}")
    base = match["base"]
    spec = match["spec"].split("%", 1)[0]  # `%2` is the throttle, not a task
    out: list[str] = []
    for part in spec.split(","):
        rng = _ARRAY_RANGE.match(part.strip())
        if rng is None:
            raise HpcjobError(f"Not a Slurm array range: {part!r} in {job_id!r}")
        lo = int(rng["lo"])
        hi = int(rng["hi"]) if rng["hi"] is not None else lo
        step = int(rng["step"]) if rng["step"] is not None else 1
        if hi < lo or step < 1 or len(out) + (hi - lo) // step >= _MAX_ARRAY_IDS:
            raise HpcjobError(f"Not a usable Slurm array range: {part!r} in {job_id!r}")
        out.extend(f"{base}_{task}" for task in range(lo, hi + 1, step))
    return out


# ------------------------------------------------------------------------- header-led output
def _table(
    text: str, is_header: Callable[[str], bool], command: str
) -> tuple[list[str], list[list[str]]]:
    """Find the header line (skipping anything a login shell printed first); split the rows."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if is_header(line.rstrip("\r")):
            header = line.rstrip("\r").split("|")
            rows = [row.rstrip("\r").split("|") for row in lines[index + 1 :] if row.strip()]
            return header, rows
    if not text.strip():
        return [], []
    first = next(line for line in lines if line.strip())
    raise HpcjobError(
        f"{command} printed something hpcjob cannot read (no header line): {first[:200]!r}",
        hint=f"Run the {command} command by hand on the cluster to see what is wrong.",
    )


def _fit(row: list[str], width: int, command: str, free_last: bool) -> list[str]:
    """Rows must match the header; a `|` inside the last, free-text column is put back."""
    if len(row) > width and free_last:
        return [*row[: width - 1], "|".join(row[width - 1 :])]
    if len(row) != width:
        raise HpcjobError(
            f"{command} printed a row with {len(row)} columns where the header has {width}: "
            f"{'|'.join(row)[:200]!r}"
        )
    return row


def _none_if(value: str, *empty: str) -> str | None:
    value = value.strip()
    return None if value in ("", *empty) else value


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise HpcjobError(f"Slurm printed {value!r} where {what} should be a number") from None


def _time_or_none(value: str) -> datetime | None:
    value = value.strip()
    if value in ("", "Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise HpcjobError(f"Slurm printed {value!r} where a time should be") from None


# ------------------------------------------------------------------------------------ squeue
def squeue_argv(job_ids: Iterable[str]) -> list[str]:
    """One squeue for many jobs. `--states=all` keeps ended jobs (for MinJobAge, ~5 min)."""
    ids = _check_job_ids(job_ids, "squeue")
    return ["squeue", "--states=all", f"--format={SQUEUE_FORMAT}", f"--jobs={','.join(ids)}"]


@dataclass(frozen=True)
class SqueueRow:
    """One squeue row: a job, an array task (`27_3`), or an array's pending rest (`27_[4-9%2]`)."""

    job_id: str
    raw_job_id: str
    state: JobState
    state_text: str
    reason: str | None
    partition: str
    nodes: str | None
    time_used_s: int
    time_limit_s: int | None
    start_time: datetime | None  # past, or expected for a pending job; cluster local time
    comment: str | None
    name: str
    array_job_id: str | None = None
    array_task: str | None = None  # "3", or "4-9%2" for the pending rest

    @property
    def is_array_rest(self) -> bool:
        """The row stands for several pending tasks (`27_[4-9%2]`)."""
        return "[" in self.job_id

    def task_ids(self) -> list[str]:
        """The job ids this row stands for (expands `27_[4-9%2]`)."""
        return expand_array_ids(self.job_id)


def parse_squeue(text: str) -> list[SqueueRow]:
    """Read squeue output in SQUEUE_FORMAT. Empty text (squeue failed) gives no rows."""
    header, rows = _table(text, lambda line: line.startswith("JOBID|JOBID|"), "squeue")
    if header and "|".join(header) != SQUEUE_HEADER:
        raise HpcjobError(f"squeue printed unexpected columns: {'|'.join(header)[:200]!r}")
    out: list[SqueueRow] = []
    for raw in rows:
        row = _fit(raw, len(header), "squeue", free_last=True)
        (job_id, raw_id, array_job, array_task, state, reason, part, nodes, used, limit) = row[:10]
        start, comment, name = row[10:]
        is_array = array_task.strip() not in ("N/A", "")
        out.append(
            SqueueRow(
                job_id=job_id.strip(),
                raw_job_id=raw_id.strip(),
                state=JobState.parse(state),
                state_text=state.strip(),
                reason=_none_if(reason, "None"),
                partition=part.strip(),
                nodes=_none_if(nodes, "(null)"),
                time_used_s=_duration_s(used) or 0,
                time_limit_s=_duration_s(limit),
                start_time=_time_or_none(start),
                comment=_none_if(comment, "(null)"),
                name=name,
                array_job_id=array_job.strip() if is_array else None,
                array_task=array_task.strip() if is_array else None,
            )
        )
    return out


def squeue_mine_argv() -> list[str]:
    """All of the user's jobs squeue still knows (finding a job by its token)."""
    return ["squeue", "--me", "--states=all", f"--format={SQUEUE_FORMAT}"]


# ------------------------------------------------------------------------------------- sacct
def sacct_recent_argv(days: int = 7) -> list[str]:
    """The user's jobs of the last days (finding a job by its token once squeue forgot it)."""
    return [
        "sacct",
        "--parsable2",
        f"--format={','.join(SACCT_FIELDS)}",
        f"--starttime=now-{days}days",
    ]


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    """One sacct for many jobs (`-j a,b,c`); with -j sacct searches from the epoch, all states."""
    ids = _check_job_ids(job_ids, "sacct")
    return ["sacct", "--parsable2", f"--format={','.join(SACCT_FIELDS)}", f"--jobs={','.join(ids)}"]


@dataclass(frozen=True)
class SacctRow:
    """A job (or array task) from sacct, with what its steps add (MaxRSS, TotalCPU)."""

    job_id: str  # "27", "27_3", or "27_[4-9%2]" for an array's pending rest
    raw_job_id: str
    name: str
    partition: str | None
    state: JobState
    state_text: str  # as sacct printed it: "CANCELLED by 1001"
    exit_code: int | None
    signal: int | None  # the signal that ended it (ExitCode `0:9` → 9); None when none
    elapsed_s: int | None
    cpu_time_s: int | None  # allocated CPUs × elapsed (what is billed)
    total_cpu_s: float | None  # CPU time actually used (user + system)
    max_rss_bytes: int | None  # the largest step's peak memory
    req_mem_mb: int | None
    alloc_cpus: int | None
    gpus: int  # GPUs allocated (AllocTRES gres/gpu)
    gpu_types: dict[str, int] = field(default_factory=dict)
    alloc_tres: str = ""
    req_tres: str = ""
    nodes: str | None = None
    comment: str | None = None
    submit: datetime | None = None  # cluster local time, as sacct prints it
    start: datetime | None = None
    end: datetime | None = None
    time_limit_s: int | None = None
    reason: str | None = None
    # sacct's stand-in record right after a job starts or ends ("allocation", no partition):
    # its state may still say PENDING for a running job; ask again in a few seconds.
    is_interim: bool = False

    @property
    def array_job_id(self) -> str | None:
        return self.job_id.split("_", 1)[0] if "_" in self.job_id else None

    @property
    def array_task(self) -> str | None:
        return self.job_id.split("_", 1)[1] if "_" in self.job_id else None


_EXIT = re.compile(r"^(?P<code>\d+):(?P<signal>\d+)$")
_SIZE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[KMGTP]?)(?P<per>[nc]?)$", re.IGNORECASE)
_UNIT = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode `3:0` → (3, None); `0:9` → (0, 9); empty → (None, None)."""
    match = _EXIT.match(text.strip())
    if match is None:
        if text.strip():
            raise HpcjobError(f"sacct printed {text!r} where an exit code (N:S) should be")
        return None, None
    signal = int(match["signal"])
    return int(match["code"]), signal or None


def parse_size_bytes(text: str) -> int | None:
    """MaxRSS/ReqMem-style sizes: `72604K`, `1.5G`, `1000M`, `0` → bytes; empty → None."""
    value = text.strip()
    if not value:
        return None
    match = _SIZE.match(value)
    if match is None:
        raise HpcjobError(f"Slurm printed {text!r} where a size (like 512M) should be")
    return round(float(match["n"]) * _UNIT[match["unit"].upper()])


def parse_tres_gpus(tres: str) -> tuple[int, dict[str, int]]:
    """GPUs in a TRES string: `…,gres/gpu:a100=1,gres/gpu=1,…` → (1, {"a100": 1})."""
    total: int | None = None
    types: dict[str, int] = {}
    for item in tres.split(","):
        key, _, value = item.strip().partition("=")
        if not key.startswith("gres/gpu") or not value.isdigit():
            continue
        if key == "gres/gpu":
            total = int(value)
        elif key.startswith("gres/gpu:"):
            types[key.removeprefix("gres/gpu:")] = int(value)
    return (total if total is not None else sum(types.values())), types


def _req_mem_mb(text: str, alloc_cpus: int | None) -> int | None:
    match = _SIZE.match(text.strip())
    if match is None:  # empty, or the `16?` of an interim record
        return None
    mb = float(match["n"]) * _UNIT[match["unit"].upper() or "M"] / 1024**2
    if match["per"].lower() == "c" and alloc_cpus:  # older Slurm: per CPU
        mb *= alloc_cpus
    return round(mb)


def parse_sacct(text: str) -> list[SacctRow]:
    """Read `sacct --parsable2` output by its header: one row per job or array task, steps
    (`.batch`, `.extern`, `.0`) folded into their job. Empty text gives no rows."""
    header, rows = _table(text, lambda line: "JobID" in line.split("|"), "sacct")
    if not header:
        return []
    for needed in ("JobID", "State"):
        if needed not in header:
            raise HpcjobError(f"sacct output has no {needed} column: {'|'.join(header)[:200]!r}")
    records = [
        dict(zip(header, _fit(r, len(header), "sacct", header[-1] == "Comment"), strict=True))
        for r in rows
    ]
    steps: dict[str, list[dict[str, str]]] = {}
    jobs: dict[str, dict[str, str]] = {}
    for rec in records:
        job_id, dot, _step = rec["JobID"].partition(".")
        if dot:
            steps.setdefault(job_id, []).append(rec)
        else:
            jobs[job_id] = rec  # a later duplicate (requeue) replaces the earlier one
    return [_sacct_row(rec, steps.get(job_id, [])) for job_id, rec in jobs.items()]


def _sacct_row(rec: dict[str, str], steps: list[dict[str, str]]) -> SacctRow:
    get = rec.get
    alloc_cpus = _int(get("AllocCPUS", ""), "AllocCPUS") if get("AllocCPUS", "").strip() else None
    rss = [parse_size_bytes(s.get("MaxRSS", "")) for s in [rec, *steps]]
    rss_known = [r for r in rss if r is not None]
    total_cpu = _float_duration(get("TotalCPU", ""))
    batch = next((s for s in steps if s["JobID"].endswith(".batch")), None)
    if not total_cpu and batch is not None:
        total_cpu = _float_duration(batch.get("TotalCPU", "")) or total_cpu
    state = JobState.parse(rec["State"])
    start = _time_or_none(get("Start", ""))
    never_started = "Start" in rec and start is None  # sacct's `None`/`Unknown`
    exit_code, signal = _exit_status(get("ExitCode", ""), state, never_started, batch)
    gpus, gpu_types = parse_tres_gpus(get("AllocTRES", ""))
    elapsed = get("ElapsedRaw", "").strip()
    cpu_time = get("CPUTimeRAW", "").strip()
    name = get("JobName", "")
    partition = _none_if(get("Partition", ""))
    return SacctRow(
        job_id=rec["JobID"],
        raw_job_id=get("JobIDRaw", rec["JobID"]),
        name=name,
        partition=partition,
        state=state,
        state_text=rec["State"].strip(),
        exit_code=exit_code,
        signal=signal,
        elapsed_s=_int(elapsed, "ElapsedRaw") if elapsed else _duration_s(get("Elapsed", "")),
        cpu_time_s=_int(cpu_time, "CPUTimeRAW") if cpu_time else _duration_s(get("CPUTime", "")),
        total_cpu_s=total_cpu,
        max_rss_bytes=max(rss_known) if rss_known else None,
        req_mem_mb=_req_mem_mb(get("ReqMem", ""), alloc_cpus),
        alloc_cpus=alloc_cpus,
        gpus=gpus,
        gpu_types=gpu_types,
        alloc_tres=get("AllocTRES", ""),
        req_tres=get("ReqTRES", ""),
        nodes=_none_if(get("NodeList", ""), "None assigned", "(null)"),
        comment=_none_if(get("Comment", "")),
        submit=_time_or_none(get("Submit", "")),
        start=start,
        end=_time_or_none(get("End", "")),
        time_limit_s=_duration_s(get("Timelimit", "")),
        reason=_none_if(get("Reason", ""), "None"),
        is_interim=name == "allocation" and partition is None,
    )


def _exit_status(
    text: str, state: JobState, never_started: bool, batch: dict[str, str] | None
) -> tuple[int | None, int | None]:
    """The job's exit code and signal. sacct prints `0:0` where it knows none: on a job that
    never started (a cancelled pending one, an array's pending rest) — it has none — and on a job
    its time limit or scancel ended, whose batch step holds the truth (`0:15`: killed by TERM,
    so no exit code; `75:0`: the script's own exit)."""
    code, signal = parse_exit_code(text)
    if never_started:
        return None, None
    if (code, signal) != (0, None) or not state.is_final or state == JobState.COMPLETED:
        return code, signal
    if batch is None:
        return None, None
    code, signal = parse_exit_code(batch.get("ExitCode", ""))
    return (None, signal) if signal else (code, None)


def _float_duration(text: str) -> float | None:
    return parse_slurm_duration(text) if text.strip() else None


# ------------------------------------------------------------------------ sacct, per step
# What each step's tasks used, with where the most and the least was used: under torchrun the
# launch step (`<jobid>.0`) runs one task per node, so these name each node's CPU time and peak
# memory (Slurm 22.05 has no MaxCPU field: TRESUsageInMax's `cpu=` is it, in whole seconds).
SACCT_STEP_FIELDS = (
    "JobID",
    "State",
    "NTasks",
    "AllocCPUS",
    "ElapsedRaw",
    "TotalCPU",
    "TRESUsageInMax",
    "TRESUsageInMaxNode",
    "TRESUsageInMaxTask",
    "TRESUsageInMin",
    "TRESUsageInMinNode",
    "TRESUsageInMinTask",
    "TRESUsageInTot",
    "NodeList",
)
_MAX_NODES = 100_000
_HOST_RANGE = re.compile(r"^(?P<prefix>[^\[\],]*)\[(?P<ranges>[^\[\]]+)\](?P<rest>.*)$")


def sacct_steps_argv(job_id: str) -> list[str]:
    """One job's steps in sacct, with what their tasks used and where."""
    (checked,) = _check_job_ids([job_id], "sacct")
    fields = ",".join(SACCT_STEP_FIELDS)
    return ["sacct", "--parsable2", f"--format={fields}", f"--jobs={checked}"]


def expand_nodelist(text: str | None) -> list[str]:
    """Slurm's compressed host list: `tcn[1-2]` → tcn1, tcn2; `gcn[01-02,7],int5` → gcn01,
    gcn02, gcn7, int5; empty, `None assigned` or `(null)` → none."""
    value = (text or "").strip()
    if value in ("", "None assigned", "(null)"):
        return []
    names: list[str] = []
    for part in _split_hosts(value):
        names.extend(_expand_host(part, text or ""))
        if len(names) > _MAX_NODES:
            raise HpcjobError(f"Slurm's node list {value[:200]!r} names too many nodes")
    return names


def _split_hosts(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_host(part: str, whole: str) -> list[str]:
    match = _HOST_RANGE.match(part)
    if match is None:
        if "[" in part or "]" in part:
            raise HpcjobError(f"Not a Slurm node list: {whole[:200]!r}")
        return [part]
    tails = _expand_host(match["rest"], whole) if match["rest"] else [""]
    names: list[str] = []
    for item in match["ranges"].split(","):
        lo, _, hi = item.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
            raise HpcjobError(f"Not a Slurm node range: {item!r} in {whole[:200]!r}")
        if int(hi or lo) - int(lo) > _MAX_NODES:
            raise HpcjobError(f"Slurm's node list {whole[:200]!r} names too many nodes")
        width = len(lo)  # `gcn[01-02]`: the zeros are part of the names
        names.extend(
            f"{match['prefix']}{n:0{width}d}{tail}"
            for n in range(int(lo), int(hi or lo) + 1)
            for tail in tails
        )
    return names


def parse_tres_usage(text: str) -> dict[str, str]:
    """A TRES usage string `cpu=00:00:08,mem=224436K,…` (or the node/task names of its
    …Node/…Task twin, `cpu=tcn2,mem=tcn2`) as a dict."""
    pairs = (item.partition("=") for item in text.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, _, value in pairs}


@dataclass(frozen=True)
class TaskExtreme:
    """The most (or least) any one task of a step used, and where: its node and task id."""

    value: float  # CPU seconds, or bytes of memory
    node: str | None
    task: int | None


@dataclass(frozen=True)
class StepUsage:
    """One job step from sacct: its nodes and tasks, the CPU time and peak memory of its
    busiest and idlest task (and where), and the sums over its tasks."""

    step_id: str  # "27.0", "27_3.0", "27.batch"
    state: str
    nodes: tuple[str, ...]  # expanded from NodeList
    tasks: int | None
    alloc_cpus: int | None  # over all its nodes
    elapsed_s: int | None
    total_cpu_s: float | None  # over all its tasks (TotalCPU: to the millisecond)
    cpu_max: TaskExtreme | None = None
    cpu_min: TaskExtreme | None = None
    cpu_sum_s: float | None = None  # TRESUsageInTot's cpu
    mem_max: TaskExtreme | None = None
    mem_min: TaskExtreme | None = None
    mem_sum_bytes: int | None = None  # the tasks' peaks added up

    @property
    def step(self) -> str:
        """`0`, `batch`, `extern`."""
        return self.step_id.rsplit(".", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepUsage:
        extremes = ("cpu_max", "cpu_min", "mem_max", "mem_min")
        values: dict[str, Any] = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in extremes:
            if values.get(key) is not None:
                values[key] = TaskExtreme(**values[key])
        values["nodes"] = tuple(values.get("nodes") or ())
        return cls(**values)


def parse_sacct_steps(text: str) -> list[StepUsage]:
    """Read `sacct_steps_argv`'s output by its header: one StepUsage per step row (`27.0`,
    `27.batch`…); the job's own row (no step) is left out. Empty text gives none."""
    header, rows = _table(text, lambda line: "JobID" in line.split("|"), "sacct")
    if not header:
        return []
    records = [dict(zip(header, _fit(r, len(header), "sacct", False), strict=True)) for r in rows]
    return [_step_usage(rec) for rec in records if "." in rec.get("JobID", "")]


def _step_usage(rec: dict[str, str]) -> StepUsage:
    get = rec.get
    maxima, minima = (
        parse_tres_usage(get("TRESUsageInMax", "")),
        parse_tres_usage(get("TRESUsageInMin", "")),
    )
    where = {
        "max": (
            parse_tres_usage(get("TRESUsageInMaxNode", "")),
            parse_tres_usage(get("TRESUsageInMaxTask", "")),
        ),
        "min": (
            parse_tres_usage(get("TRESUsageInMinNode", "")),
            parse_tres_usage(get("TRESUsageInMinTask", "")),
        ),
    }

    def extreme(kind: str, values: dict[str, str], key: str) -> TaskExtreme | None:
        amount = _tres_amount(key, values.get(key, ""))
        if amount is None:
            return None
        nodes, tasks = where[kind]
        task = tasks.get(key, "")
        return TaskExtreme(
            amount, _none_if(nodes.get(key, "")), int(task) if task.isdigit() else None
        )

    totals = parse_tres_usage(get("TRESUsageInTot", ""))
    mem_sum = _tres_amount("mem", totals.get("mem", ""))
    tasks, cpus, elapsed = (
        get("NTasks", "").strip(),
        get("AllocCPUS", "").strip(),
        get("ElapsedRaw", "").strip(),
    )
    return StepUsage(
        step_id=rec["JobID"].strip(),
        state=get("State", "").strip(),
        nodes=tuple(expand_nodelist(get("NodeList", ""))),
        tasks=_int(tasks, "NTasks") if tasks else None,
        alloc_cpus=_int(cpus, "AllocCPUS") if cpus else None,
        elapsed_s=_int(elapsed, "ElapsedRaw") if elapsed else None,
        total_cpu_s=_float_duration(get("TotalCPU", "")),
        cpu_max=extreme("max", maxima, "cpu"),
        cpu_min=extreme("min", minima, "cpu"),
        cpu_sum_s=_tres_amount("cpu", totals.get("cpu", "")),
        mem_max=extreme("max", maxima, "mem"),
        mem_min=extreme("min", minima, "mem"),
        mem_sum_bytes=None if mem_sum is None else int(mem_sum),
    )


def _tres_amount(key: str, value: str) -> float | None:
    """A TRES usage value: `cpu` a duration in seconds, `mem` a size in bytes."""
    if not value.strip():
        return None
    if key == "cpu":
        return parse_slurm_duration(value)
    size = parse_size_bytes(value)
    return None if size is None else float(size)


# ------------------------------------------------------- array tasks cancelled while pending


def cancelled_before_start(
    task_ids: Iterable[str],
    squeue_rows: Sequence[SqueueRow],
    sacct_rows: Sequence[SacctRow],
    sacct_answered: bool,
) -> list[str]:
    """The array tasks that were cancelled while still pending, by unambiguous evidence only.

    Slurm 22.05 keeps an array's unstarted tasks in one record, the array's own (JobIDRaw = the
    array's id, JobID `123_[4-9]`). `scancel 123_4` only takes 4 out of it: task 4 then has no
    record anywhere. `scancel 123` ends that record CANCELLED, still covering the tasks it held.
    A task that starts is split off into a record of its own, which squeue (`--states=all`) shows
    until minutes after it ended and sacct keeps. So a task was cancelled before it started when
    - its own sacct record is CANCELLED without a start; or
    - the array's record that covers it is CANCELLED without having run (squeue's record, the
      controller's live view, is believed before sacct's copy, which may lag); or
    - it has no row of its own in squeue nor in sacct (which answered), and the array's record
      is there but no longer holds it.
    Being missing alone never counts: without the array's record, nothing is concluded.
    """
    out: list[str] = []
    for task in task_ids:
        base, _, index = task.partition("_")
        if not index:
            continue
        record = next((r for r in sacct_rows if r.job_id == task), None)
        if record is not None:  # its own accounting record speaks for it
            if _cancelled_unstarted(record):
                out.append(task)
            continue
        # squeue is the controller's live view; sacct's copy of the array's record may lag it.
        in_squeue = _holders(squeue_rows, base)
        if in_squeue:
            evidence: list[SqueueRow | SacctRow] = [
                r for r in in_squeue if r.job_id == task or task in _covered(r.job_id)
            ]
        else:
            evidence = [r for r in _holders(sacct_rows, base) if task in _covered(r.job_id)]
        evidence += [r for r in squeue_rows if r.job_id == task and r.raw_job_id != base]
        if evidence:
            if all(_cancelled_unstarted(r) for r in evidence):
                out.append(task)
            continue
        if sacct_answered and (in_squeue or _holders(sacct_rows, base)):
            out.append(task)
    return out


def _cancelled_unstarted(row: SqueueRow | SacctRow) -> bool:
    """CANCELLED without having run: no start (sacct), no node (squeue)."""
    if row.state != JobState.CANCELLED:
        return False
    return row.start is None if isinstance(row, SacctRow) else row.nodes is None


def _holders(rows: Sequence[SqueueRow | SacctRow], base: str) -> list[SqueueRow | SacctRow]:
    return [r for r in rows if r.raw_job_id == base and r.job_id.startswith(f"{base}_")]


def _covered(job_id: str) -> list[str]:
    try:
        return expand_array_ids(job_id)
    except HpcjobError:
        return []


# ------------------------------------------------------------------------------------- sinfo
def sinfo_argv() -> list[str]:
    return ["sinfo", f"--format={SINFO_FORMAT}"]


@dataclass(frozen=True)
class Partition:
    """A partition as sinfo shows it to the user; per-node figures are of its largest node."""

    name: str
    is_default: bool
    avail: str  # sinfo's AVAIL: up, down, drain, inact
    max_time_s: int | None  # None: no limit
    nodes: int
    nodes_allocated: int
    nodes_idle: int
    nodes_other: int  # down, drained, …
    cpus_per_node: int
    mem_mb: int  # per node
    gpus_per_node: dict[str, int] = field(default_factory=dict)  # type → count; untyped: "gpu"

    @property
    def available(self) -> bool:
        return self.avail == "up"

    @property
    def gpus(self) -> int:
        """GPUs on one node of this partition (0 on CPU partitions)."""
        return sum(self.gpus_per_node.values())

    @property
    def state(self) -> str:
        """One word for people: idle, mixed, allocated, down (no usable node), or sinfo's AVAIL."""
        if not self.available:
            return self.avail
        if self.nodes_other >= self.nodes:
            return "down"
        if self.nodes_idle == self.nodes:
            return "idle"
        if self.nodes_allocated == self.nodes:
            return "allocated"
        return "mixed"


def parse_gres_gpus(gres: str) -> dict[str, int]:
    """sinfo GRES `gpu:a100:4(S:0-1),shard:8` → {"a100": 4}; `gpu:2` → {"gpu": 2}; `(null)` → {}."""
    out: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", gres.strip()):
        item = re.sub(r"\(.*?\)$", "", item.strip())
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count = parts[-1]
        if not count.isdigit():
            raise HpcjobError(f"sinfo printed a GPU count hpcjob cannot read: {item!r}")
        kind = ":".join(parts[1:-1]) or "gpu"
        out[kind] = out.get(kind, 0) + int(count)
    return out


def parse_sinfo(text: str) -> list[Partition]:
    """Read sinfo output in SINFO_FORMAT; a partition over several rows (unlike nodes) is one."""
    header, rows = _table(text, lambda line: line.startswith("PARTITION|"), "sinfo")
    if header and "|".join(header) != SINFO_HEADER:
        raise HpcjobError(f"sinfo printed unexpected columns: {'|'.join(header)[:200]!r}")
    merged: dict[str, Partition] = {}
    for raw in rows:
        name, avail, limit, _nodes, counts, cpus, mem, gres = _fit(raw, 8, "sinfo", False)
        numbers = counts.split("/")
        if len(numbers) != 4:
            raise HpcjobError(f"sinfo printed {counts!r} where node counts A/I/O/T should be")
        allocated, idle, other, total = (_int(n, "a node count") for n in numbers)
        part = Partition(
            name=name.rstrip("*"),
            is_default=name.endswith("*"),
            avail=avail.strip(),
            max_time_s=_duration_s(limit),
            nodes=total,
            nodes_allocated=allocated,
            nodes_idle=idle,
            nodes_other=other,
            cpus_per_node=_int(cpus.rstrip("+"), "CPUS"),
            mem_mb=_int(mem.rstrip("+"), "MEMORY"),
            gpus_per_node=parse_gres_gpus(gres),
        )
        before = merged.get(part.name)
        merged[part.name] = part if before is None else _merge(before, part)
    return list(merged.values())


def _merge(a: Partition, b: Partition) -> Partition:
    types = {
        k: max(a.gpus_per_node.get(k, 0), b.gpus_per_node.get(k, 0))
        for k in {*a.gpus_per_node, *b.gpus_per_node}
    }
    return Partition(
        name=a.name,
        is_default=a.is_default or b.is_default,
        avail=a.avail,
        max_time_s=a.max_time_s,
        nodes=a.nodes + b.nodes,
        nodes_allocated=a.nodes_allocated + b.nodes_allocated,
        nodes_idle=a.nodes_idle + b.nodes_idle,
        nodes_other=a.nodes_other + b.nodes_other,
        cpus_per_node=max(a.cpus_per_node, b.cpus_per_node),
        mem_mb=max(a.mem_mb, b.mem_mb),
        gpus_per_node=types,
    )


# ------------------------------------------------------------------------------------ scancel
def scancel_argv(job_ids: Iterable[str]) -> list[str]:
    return ["scancel", *_check_job_ids(job_ids, "scancel")]


@dataclass(frozen=True)
class ScancelFailure:
    """A job scancel could not cancel, and why (`Access/permission denied`)."""

    job_id: str
    reason: str


_KILL_ERROR = re.compile(r"Kill job error on job id (?P<job_id>[\w\[\]%,-]+): (?P<reason>.+)$")


def parse_scancel_errors(stderr: str) -> list[ScancelFailure]:
    """The jobs scancel names in `Kill job error on job id 43: Access/permission denied`."""
    out = []
    for line in stderr.splitlines():
        match = _KILL_ERROR.search(line.strip())
        if match:
            out.append(ScancelFailure(match["job_id"], match["reason"].strip()))
    return out


# ------------------------------------------------------------------------ scontrol show config
def scontrol_config_argv() -> list[str]:
    return ["scontrol", "show", "config"]


# `ClusterName             = snellius`: a name Slurm accepts (letters, digits, `_`, `-`, `.`).
_CLUSTER_NAME = re.compile(r"ClusterName\s*=\s*(?P<name>[A-Za-z0-9][\w.-]*)")


def parse_cluster_name(text: str) -> str:
    """The cluster's own name (`ClusterName = snellius`) from `scontrol show config`: the same
    on every login node of a cluster, unlike the login node's hostname."""
    for line in text.splitlines():
        match = _CLUSTER_NAME.fullmatch(line.strip())
        if match:
            return match["name"]
    raise HpcjobError(
        "`scontrol show config` printed no ClusterName line"
        + (f" (it printed: {text.strip()[:200]!r})." if text.strip() else " (it printed nothing).")
    )


# ------------------------------------------------------------------ accounts and partitions
# Which partitions each of the user's accounts may use, from one remote command (one SSH round
# trip): the user's associations (sacctmgr), their default account, the partitions' access lists
# (scontrol), the user's groups and the cluster's name. Each part is printed behind a marker
# line with its command's exit status, so that one failing part (sacctmgr with accounting off)
# leaves the others readable.
ACCESS_MARKER = "@@hpcjob-access"
ACCESS_TIMEOUT_S = 20  # a hung slurmdbd must not hold a submit: `timeout` ends sacctmgr (124)
# One sacctmgr call (each costs ~0.3 s): the user's default account on every association row.
ASSOC_FORMAT = "user,defaultaccount,cluster,account,partition,qos"
ASSOC_HEADER = "User|Def Acct|Cluster|Account|Partition|QOS"
ACCESS_SCRIPT = f"""\
part() {{ name=$1; shift; out=$("$@" 2>&1); echo "{ACCESS_MARKER} $name $?"; \
printf '%s\\n' "$out"; }}
cluster_name() {{ scontrol show config | sed -n 's/^ClusterName *= *//p'; }}
user=$(id -un)
part user id -un
part groups id -Gn
part cluster cluster_name
part assoc timeout {ACCESS_TIMEOUT_S} sacctmgr -P show user "$user" withassoc format={ASSOC_FORMAT}
part partitions timeout {ACCESS_TIMEOUT_S} scontrol -o show partition
"""


def access_argv() -> list[str]:
    """The one command that asks for everything `parse_access` reads."""
    return ["bash", "-c", ACCESS_SCRIPT, "hpcjob-access"]


@dataclass(frozen=True)
class Association:
    """One of the user's associations (sacctmgr): an account, on a cluster, maybe only for one
    partition, with the QOS it may use."""

    cluster: str
    account: str
    partition: str | None  # None: every partition
    qos: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartitionAccess:
    """Who may use a partition (scontrol show partition): None stands for ALL."""

    name: str
    allow_accounts: tuple[str, ...] | None = None
    deny_accounts: tuple[str, ...] = ()
    allow_groups: tuple[str, ...] | None = None
    allow_qos: tuple[str, ...] | None = None
    deny_qos: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountAccess:
    """Which partitions each of the user's accounts may use, or why that is not known
    (`unknown`: sacctmgr could not answer — accounting off, or not allowed)."""

    user: str
    default_account: str | None
    partitions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # account → usable
    known_partitions: tuple[str, ...] = ()  # every partition scontrol showed
    unknown: str | None = None

    @property
    def accounts(self) -> list[str]:
        return list(self.partitions)

    def may_use(self, account: str, partition: str) -> bool:
        return partition in self.partitions.get(account, ())

    def accounts_for(self, partition: str) -> list[str]:
        """The user's accounts that may use `partition`."""
        return [a for a, usable in self.partitions.items() if partition in usable]

    def to_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "default_account": self.default_account,
            "partitions": {a: list(p) for a, p in self.partitions.items()},
            "known_partitions": list(self.known_partitions),
            "unknown": self.unknown,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AccountAccess:
        """The cached form back; anything malformed is a ValueError (the cache is asked again)."""
        partitions = data.get("partitions")
        known = data.get("known_partitions")
        user, default, unknown = data.get("user"), data.get("default_account"), data.get("unknown")
        if not isinstance(partitions, dict) or not isinstance(known, list):
            raise ValueError("not an account-access record")
        if not isinstance(user, str) or not all(
            isinstance(v, (str, type(None))) for v in (default, unknown)
        ):
            raise ValueError("not an account-access record")
        return cls(
            user=user,
            default_account=default,  # type: ignore[arg-type]
            partitions={str(a): tuple(map(str, p)) for a, p in partitions.items()},
            known_partitions=tuple(map(str, known)),
            unknown=unknown,  # type: ignore[arg-type]
        )


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (part.strip() for part in text.split(",")) if n)


def _all_or_names(text: str | None) -> tuple[str, ...] | None:
    """scontrol's `ALL` (or nothing) as None, else the names."""
    if text is None or text.strip().upper() in ("ALL", ""):
        return None
    return _names(text)


def parse_user_associations(text: str) -> tuple[str | None, list[Association]]:
    """`sacctmgr -P show user U withassoc format=ASSOC_FORMAT` → the user's default account
    and associations."""
    command = "sacctmgr show user"
    header, rows = _table(text, lambda line: line == ASSOC_HEADER, command)
    default, out = None, []
    for raw in rows:
        _user, their_default, cluster, account, partition, qos = _fit(
            raw, len(header), command, False
        )
        default = default or _none_if(their_default)
        if account.strip():
            out.append(
                Association(cluster.strip(), account.strip(), _none_if(partition), _names(qos))
            )
    return default, out


def parse_partition_access(text: str) -> list[PartitionAccess]:
    """`scontrol -o show partition`: one line of `Key=Value` words per partition."""
    out = []
    for line in text.splitlines():
        if not line.startswith("PartitionName="):
            continue  # a login banner, or nothing
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        out.append(
            PartitionAccess(
                name=fields["PartitionName"],
                allow_accounts=_all_or_names(fields.get("AllowAccounts")),
                deny_accounts=_names(fields.get("DenyAccounts", "")),
                allow_groups=_all_or_names(fields.get("AllowGroups")),
                allow_qos=_all_or_names(fields.get("AllowQos")),
                deny_qos=_names(fields.get("DenyQos", "")),
            )
        )
    return out


def usable_partitions(
    associations: Sequence[Association],
    partitions: Sequence[PartitionAccess],
    groups: Sequence[str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Which partitions each account of the user may use: those its associations allow (an
    association for one partition restricts the account to such partitions), whose
    AllowAccounts/DenyAccounts let the account in, whose AllowQos/DenyQos let one of its QOS in,
    and whose AllowGroups hold one of the user's groups (when the groups are known)."""
    by_account: dict[str, list[Association]] = {}
    for assoc in associations:
        by_account.setdefault(assoc.account, []).append(assoc)
    return {
        account: tuple(p.name for p in partitions if _may_use(assocs, p, groups))
        for account, assocs in by_account.items()
    }


def _may_use(
    assocs: Sequence[Association], part: PartitionAccess, groups: Sequence[str] | None
) -> bool:
    account = assocs[0].account
    if part.allow_accounts is not None and account not in part.allow_accounts:
        return False
    if account in part.deny_accounts:
        return False
    if (
        groups is not None
        and part.allow_groups is not None
        and not set(groups) & set(part.allow_groups)
    ):
        return False
    matching = [a for a in assocs if a.partition in (None, part.name)]
    if not matching:
        return False
    qos = {q for a in matching for q in a.qos}
    if not qos:  # no QOS named: nothing to hold against the partition's lists
        return True
    allowed = qos if part.allow_qos is None else qos & set(part.allow_qos)
    return bool(allowed - set(part.deny_qos))


def parse_access(text: str) -> AccountAccess:
    """What `access_argv()` printed: the user's accounts and the partitions each may use, or —
    where sacctmgr or scontrol did not answer — why that is not known."""
    parts = _access_parts(text)
    user = (parts.get("user") or (0, ""))[1].strip()
    missing = [name for name in ("user", "assoc", "partitions") if name not in parts]
    if missing:
        shown = text.strip().splitlines()[-1][:200] if text.strip() else "nothing"
        why = f"the accounts query printed no {missing[0]} part (last line: {shown!r})"
        return AccountAccess(user=user, default_account=None, unknown=why)
    for name in ("assoc", "partitions"):
        status, out = parts[name]
        if status != 0:
            command = "scontrol" if name == "partitions" else "sacctmgr"
            return AccountAccess(user, None, unknown=_first_error(command, status, out))
    cluster = parts.get("cluster", (1, ""))
    default, associations = parse_user_associations(parts["assoc"][1])
    if cluster[0] == 0 and cluster[1].strip():
        associations = [a for a in associations if a.cluster == cluster[1].strip()]
    if not associations:
        why = f"sacctmgr shows no association for user {user or '?'} on this cluster"
        return AccountAccess(user, None, unknown=why)
    access = parse_partition_access(parts["partitions"][1])
    groups = parts["groups"][1].split() if parts.get("groups", (1, ""))[0] == 0 else None
    usable = usable_partitions(associations, access, groups)
    if default not in usable:
        default = next(iter(usable)) if len(usable) == 1 else None
    return AccountAccess(user, default, usable, tuple(p.name for p in access))


def _access_parts(text: str) -> dict[str, tuple[int, str]]:
    """The marked parts of the access query's output: name → (exit status, text)."""
    parts: dict[str, tuple[int, list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == ACCESS_MARKER and words[2].lstrip("-").isdigit():
            current = []
            parts[words[1]] = (int(words[2]), current)
        elif current is not None:
            current.append(line.rstrip("\r"))
    return {name: (status, "\n".join(lines)) for name, (status, lines) in parts.items()}


def _first_error(command: str, status: int, out: str) -> str:
    if status == 124:
        return f"{command} did not answer within {ACCESS_TIMEOUT_S} s"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines
    return f"{command} did not answer: {errors[0][:200]}" if errors else f"{command} failed"
