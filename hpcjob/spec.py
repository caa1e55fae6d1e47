"""What a job asks for: `JobSpec` and `Resources`, and the pure validation that builds them.

Every problem in a request is collected and reported at once (exit code 2), each with its fix,
before anything is rendered or submitted.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpcjob.errors import EXIT_USAGE, HpcjobError

if TYPE_CHECKING:
    from hpcjob.slurm import Partition

_TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Partition, account and constraint values go into #SBATCH lines unquoted: keep them plain words.
_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Parentheses group (Slurm ≥ 20.11): `(A|B)&scratch-node` is what --stage-data makes of `A|B`.
_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.\-&|\[\]()*:]{1,160}$")
_ARRAY_RE = re.compile(r"^\d+(?:-\d+(?::\d+)?)?(?:,\d+(?:-\d+(?::\d+)?)?)*(?:%\d+)?$")
_JOB_ID_RE = re.compile(r"^\d+(?:_\d+)?$")
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_MEM_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_time_limit(text: str) -> int:
    """Seconds in a Slurm time limit (`--time`): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    value = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time ({_TIME_FORMATS})")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
        parts_ok = hours < 24 and minutes < 60 and seconds < 60
    elif third is not None:  # HH:MM:SS
        minutes, seconds = int(second), int(third)
        total, parts_ok = int(first) * 3600 + minutes * 60 + seconds, minutes < 60 and seconds < 60
    elif second is not None:  # MM:SS
        total, parts_ok = int(first) * 60 + int(second), int(second) < 60
    else:  # MM
        total, parts_ok = int(first) * 60, True
    if not parts_ok:
        raise ValueError(f"{text!r} has a field out of range ({_TIME_FORMATS})")
    if total <= 0:
        raise ValueError(f"{text!r} is zero; a job needs some time")
    return total


def format_time(seconds: int) -> str:
    """Slurm's `D-HH:MM:SS` (or `HH:MM:SS` under a day)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def parse_memory_mb(text: str) -> int:
    """Megabytes in a Slurm memory size: `16G`, `500M`, `16GB`, `1T`, a bare number is MB."""
    match = _MEM_RE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a memory size (e.g. 16G, 500M)")
    number, unit = float(match.group(1)), match.group(2).upper()
    megabytes = round(number * _MEM_FACTOR[unit])
    if megabytes <= 0:
        raise ValueError(f"{text!r} is less than 1 MB")
    return megabytes


def format_memory(megabytes: int) -> str:
    """`16G` when whole gigabytes, else `1500M`."""
    return f"{megabytes // 1024}G" if megabytes % 1024 == 0 else f"{megabytes}M"


@dataclass(frozen=True)
class Resources:
    """What a job asks of the scheduler; rendered into the #SBATCH header."""

    partition: str | None = None
    time_s: int = 3600
    nodes: int = 1
    cpus_per_task: int | None = None
    mem_mb: int | None = None
    gpus: int = 0  # on each node (one node: the job's GPUs)
    account: str | None = None
    constraint: str | None = None
    job_name: str = "hpcjob"
    procs_per_node: int = 1  # ranks the launcher starts on each node
    launcher: str = "none"  # torchrun, srun or none (LAUNCHERS)
    array: str | None = None  # Slurm's --array, e.g. "0-9%2"
    dependency: str | None = None  # Slurm's --dependency, e.g. "afterok:123"

    @property
    def time(self) -> str:
        return format_time(self.time_s)

    @property
    def mem(self) -> str | None:
        return None if self.mem_mb is None else format_memory(self.mem_mb)


@dataclass(frozen=True)
class ArgDef:
    """One workload argument: its option name, type, default and the rule it must satisfy."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class WorkloadDef:
    """A built-in workload: its template, its program in workloads/, its arguments and defaults."""

    name: str
    template: str
    program: str | None
    default_time: str
    needs_data: bool
    args: tuple[ArgDef, ...] = ()
    description: str = ""
    # The job runs in the profile's venv (its template activates it); setup-env makes it.
    runs_in_venv: bool = True


_TRAIN_ARGS = (
    ArgDef("epochs", int, 3, "number of epochs", minimum=1, maximum=100_000),
    ArgDef("batch_size", int, 256, "images per batch", minimum=1, maximum=1 << 20),
    ArgDef("lr", float, 1e-3, "learning rate", minimum=0, exclusive_minimum=True),
    ArgDef("hidden_units", str, "512,256", "MLP hidden layer sizes, comma-separated"),
    ArgDef("dropout", float, 0.2, "dropout rate", minimum=0, maximum=1, exclusive_maximum=True),
    # numpy's seed must fit in 32 bits: a larger one would fail only when the job starts. Not
    # given, each task of an array has its own (array_task_seeds).
    ArgDef("seed", int, 0, "random seed", minimum=0, maximum=2**32 - 1),
    # None: the job script picks one less than the allocated cores (at most 8).
    ArgDef("num_workers", int, None, "data loader worker processes", minimum=0, maximum=1024),
    ArgDef("weighted_sampling", bool, True, "balance classes by weighted sampling"),
    # Without it, train stops when the job has GPUs that torch cannot use (billed as GPU hours).
    ArgDef("allow_cpu", bool, False, "train on the CPU when the GPUs asked for cannot be used"),
    # Besides last.pt and best.pt (lowest val_loss): a default MLP's checkpoint is 163.5 MiB.
    # None: train.py's default, 0 (and a rerun of a run whose train.py predates it still runs).
    ArgDef(
        "keep_checkpoints", int, None, "newest epoch checkpoints kept", minimum=0, maximum=10**5
    ),
)

WORKLOADS: dict[str, WorkloadDef] = {
    w.name: w
    for w in (
        WorkloadDef(
            "gpu-check",
            "gpu-check.sbatch.j2",
            "check_gpu.py",
            "00:10:00",
            needs_data=False,
            description="versions, visible GPUs and a matmul benchmark on the node",
        ),
        WorkloadDef(
            "eda",
            "eda.sbatch.j2",
            "eda.py",
            "01:00:00",
            needs_data=True,
            args=(
                ArgDef(
                    "block_size", int, 1024, "images read per block", minimum=1, maximum=1 << 24
                ),
            ),
            description="exploratory data analysis of the PCAM HDF5 files",
        ),
        WorkloadDef(
            "train",
            "train.sbatch.j2",
            "train.py",
            "02:00:00",
            needs_data=True,
            args=_TRAIN_ARGS,
            description="MLP training on PCAM, per-epoch losses into the ledger",
        ),
        WorkloadDef(
            "setup-env",
            "setup-env.sbatch.j2",
            None,
            "01:00:00",
            needs_data=False,
            description="create the profile's venv with the modules loaded and install packages",
            runs_in_venv=False,
        ),
    )
}


# What a Program is: a workload of the project file, a Python file of the project, the user's
# own batch script, or any command.
PROGRAM_KINDS = ("project", "python", "script", "command")
PLACEHOLDER_VARIABLES = {
    "config": "HPCJOB_CONFIG",
    "data_dir": "HPCJOB_DATA_DIR",
    "run_dir": "HPCJOB_RUN_DIR",
}


@dataclass(frozen=True)
class Program:
    """The user's own code a job runs, exactly as it ran: the command, the config it reads (the
    run gets its own copy, with the overrides in the spec's `args`), the code snapshot."""

    kind: str  # one of PROGRAM_KINDS
    command: tuple[str, ...]  # words; {config}, {data_dir}, {run_dir} filled in by the job
    project: str | None = None  # the project's name
    source: str = ""  # where the workload was defined, for `show`
    config: str | None = None  # the config file, relative to the project's root
    metrics: tuple[str, ...] = ()  # globs of CSV/JSONL files the command writes
    artifacts: tuple[str, ...] = ()  # globs that fetch/show list
    snapshot: str | None = None  # sha256 of the code snapshot; None: no code travels
    src_layout: bool = False  # the project has src/: it goes on PYTHONPATH
    options: dict[str, str] = field(default_factory=dict)  # CLI option → config key
    sbatch_extra: tuple[tuple[str, str], ...] = ()  # a batch script's other #SBATCH options
    # The launcher the project file declares for the workload (LAUNCHERS); None: not declared.
    launcher: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Program:
        return cls(
            kind=data["kind"],
            command=tuple(data.get("command") or ()),
            project=data.get("project"),
            source=data.get("source") or "",
            config=data.get("config"),
            metrics=tuple(data.get("metrics") or ()),
            artifacts=tuple(data.get("artifacts") or ()),
            snapshot=data.get("snapshot"),
            src_layout=bool(data.get("src_layout")),
            options=dict(data.get("options") or {}),
            sbatch_extra=tuple((str(k), str(v)) for k, v in data.get("sbatch_extra") or ()),
            launcher=data.get("launcher"),
        )


@dataclass(frozen=True)
class JobSpec:
    """A whole request: which workload, with which resources and arguments, on which data.

    A built-in workload's `args` are its options; a Program's are the config keys it overrides
    (dotted, e.g. `training.epochs`)."""

    workload: str
    resources: Resources
    args: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    stage_data: bool = False
    program: Program | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.program is None:
            del data["program"]  # a built-in workload's spec stays as it always was
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        program = data.get("program")
        return cls(
            workload=data["workload"],
            resources=Resources(**data["resources"]),
            args=dict(data.get("args", {})),
            data_dir=data.get("data_dir"),
            stage_data=bool(data.get("stage_data", False)),
            program=Program.from_dict(program) if program else None,
        )


@dataclass(frozen=True)
class SpecRequest:
    """Raw values from the command line and the profile, before validation. None = not given."""

    workload: str
    partition: str | None = None
    time: str | None = None
    nodes: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gpus: int | None = None
    account: str | None = None
    constraint: str | None = None
    job_name: str | None = None
    gpus_per_node: int | None = None
    procs_per_node: int | None = None
    launcher: str | None = None
    array: str | None = None
    after: str | None = None  # the job id this one waits for (afterok)
    data_dir: str | None = None
    stage_data: bool = False
    args: dict[str, Any] = field(default_factory=dict)
    # `render` previews a script without data; submitting needs it.
    require_data: bool = True
    # The user's own code instead of a built-in workload, and its default time limit.
    program: Program | None = None
    default_time: str | None = None


DATA_PLACEHOLDER = "/path/to/pcam"


def implied_gpus(gpus: int | None, partition: str | None) -> int:
    """The GPUs a request gets: those asked, else 1 on a GPU partition (a GPU partition without
    a GPU request is never what a student means)."""
    if gpus is not None:
        return gpus
    return 1 if partition and "gpu" in partition.lower() else 0


def implied_procs(request: SpecRequest, gpus: int) -> int:
    """Ranks on each node: those asked, else one per GPU where the job is meant to have ranks —
    a workload that declares torchrun or srun, or a request with any of --nodes,
    --gpus-per-node, --procs-per-node, --launcher (with only --gpus, or nothing, one process, as
    before these options existed); a batch script starts its own."""
    if request.procs_per_node:
        return request.procs_per_node
    program = request.program
    if program is not None and (program.kind == "script" or program.launcher == "none"):
        return 1
    scaled = (request.nodes, request.gpus_per_node, request.procs_per_node, request.launcher)
    declared = program is not None and program.launcher is not None
    return max(1, gpus) if declared or any(v is not None for v in scaled) else 1


def ranks_per_node(request: SpecRequest) -> int:
    """The processes each node runs as the launcher starts them (1 with --launcher none)."""
    if request.launcher == "none":
        return 1
    return max(1, implied_procs(request, request_gpus_per_node(request)))


def request_gpus_per_node(request: SpecRequest) -> int:
    """GPUs on each node: --gpus-per-node, else --gpus (one node), else 1 on a GPU partition."""
    given = request.gpus_per_node if request.gpus_per_node is not None else request.gpus
    return implied_gpus(given, request.partition)


# What a check beyond the request's values (prepare's look at the data and the venv where the
# job runs) finds wrong: the problem, and how to fix it.
Finding = tuple[str, str]


def build_spec(
    request: SpecRequest,
    partitions: Sequence[Partition] | None = None,
    check: Callable[[JobSpec], Sequence[Finding]] | None = None,
) -> JobSpec:
    """Validate a request into a JobSpec, reporting every problem at once (exit 2): its values;
    given the cluster's partitions (from sinfo), whether it fits the partition; given `check`,
    what that finds wrong with the spec."""
    problems: list[str] = []
    workload = _workload_def(request)
    resources = _build_resources(request, workload, problems)
    if request.program is None:
        args = _build_args(request.args, workload, problems)
        if request.array and "seed" in args and request.args.get("seed") is None:
            args["seed"] = None  # not given: each array task its own (array_task_seeds)
    else:  # config keys, checked against the config file (project/configfile.py)
        args = {k: v for k, v in request.args.items() if v is not None}
    data_dir = request.data_dir
    if workload.needs_data and not data_dir and not request.require_data:
        data_dir = DATA_PLACEHOLDER
    if workload.needs_data and not data_dir:
        what = "the PCAM data" if request.program is None else "a data folder ({data_dir})"
        problems.append(
            f"{workload.name} needs {what}: give --data-dir DIR (or set data_dir in your profile)"
        )
    if data_dir is not None and ("\n" in data_dir or "\0" in data_dir):
        problems.append("--data-dir must not contain a newline or NUL byte")
        data_dir = None  # not looked for by `check` either
    spec = _assemble(request, workload, resources, args, data_dir)
    fit: list[str] = []
    if partitions is not None and _plain_word(request.partition):
        fit = partition_problems(resources, partitions)
    found = list(check(spec)) if check is not None else []
    if problems or fit or found:
        raise _request_error(problems, fit, found)
    return spec


def _assemble(
    request: SpecRequest,
    workload: WorkloadDef,
    resources: Resources,
    args: dict[str, Any],
    data_dir: str | None,
) -> JobSpec:
    if request.program is not None:
        # A program's data folder is optional: given, the job has it as $HPCJOB_DATA_DIR.
        return JobSpec(
            workload=workload.name,
            resources=resources,
            args=args,
            data_dir=data_dir,
            stage_data=request.stage_data and bool(data_dir),
            program=request.program,
        )
    return JobSpec(
        workload=workload.name,
        resources=resources,
        args=args,
        data_dir=data_dir if workload.needs_data else None,
        stage_data=request.stage_data and workload.needs_data,
    )


def _request_error(problems: list[str], fit: list[str], found: list[Finding]) -> HpcjobError:
    """One error for everything wrong with a request, each fix in the hint."""
    lines = [*problems, *fit, *(problem for problem, _ in found)]
    hints = []
    if problems or fit:
        hint = "Fix the values above"
        if problems:
            hint += "; `hpcjob submit --help` lists every option"
        if fit:
            hint += "; `hpcjob partitions` shows each partition's limits and GPUs"
        hints.append(hint + ".")
    hints += dict.fromkeys(fix for _, fix in found)
    return HpcjobError(
        "The job request has problems:\n" + "\n".join(f"  - {line}" for line in lines),
        hint=" ".join(hints),
        exit_code=EXIT_USAGE,
    )


def _plain_word(partition: str | None) -> bool:
    """None (the cluster's default), or a name the request check lets through: a name refused
    there is not looked up among the partitions as well."""
    return partition is None or bool(_WORD_RE.fullmatch(partition))


def _workload_def(request: SpecRequest) -> WorkloadDef:
    """The built-in workload, or a definition standing in for the user's program."""
    if request.program is not None:
        # The name reaches the script's banner line: a plain word or path, whatever was typed.
        return WorkloadDef(
            re.sub(r"[^A-Za-z0-9._/+-]+", "-", request.workload)[:128] or "command",
            PROGRAM_TEMPLATE,
            None,
            request.default_time or PROGRAM_DEFAULT_TIME,
            needs_data=any("{data_dir}" in word for word in request.program.command),
        )
    workload = WORKLOADS.get(request.workload)
    if workload is None:
        raise HpcjobError(
            f"Unknown workload {request.workload!r}.",
            hint=f"Choose one of: {', '.join(WORKLOADS)}.",
            exit_code=EXIT_USAGE,
        )
    return workload


PROGRAM_TEMPLATE = "program.sbatch.j2"
PROGRAM_DEFAULT_TIME = "01:00:00"


def _build_resources(request: SpecRequest, workload: WorkloadDef, problems: list[str]) -> Resources:
    time_s = 0
    try:
        time_s = parse_time_limit(request.time or workload.default_time)
    except ValueError as exc:
        problems.append(f"--time: {exc}")
    mem_mb = None
    if request.mem is not None:
        try:
            mem_mb = parse_memory_mb(request.mem)
        except ValueError as exc:
            problems.append(f"--mem: {exc}")
    for flag, count, minimum in (
        ("--nodes", request.nodes, 1),
        ("--cpus", request.cpus_per_task, 1),
        ("--gpus", request.gpus, 0),
        ("--gpus-per-node", request.gpus_per_node, 0),
        ("--procs-per-node", request.procs_per_node, 1),
    ):
        if count is not None and count < minimum:
            problems.append(f"{flag} must be at least {minimum}, got {count}")
        elif count is not None and count > _MAX_COUNT:
            problems.append(f"{flag} must be at most {_MAX_COUNT}, got {count}")
    for flag, value, pattern, rule in (
        ("--partition", request.partition, _WORD_RE, "letters, digits, '.', '_' or '-'"),
        ("--account", request.account, _WORD_RE, "letters, digits, '.', '_' or '-'"),
        ("--job-name", request.job_name, _NAME_RE, "1-64 letters, digits, '.', '_' or '-'"),
        ("--constraint", request.constraint, _CONSTRAINT_RE, "feature names with & | [ ] ( ) *"),
    ):
        if value is not None and not pattern.fullmatch(value):
            problems.append(f"{flag} {value!r} is not valid: use {rule}")
    if request.array is not None and not _ARRAY_RE.fullmatch(request.array):
        problems.append(
            f"--array {request.array!r} is not a Slurm array: use e.g. 0-9, 1,3,5, 0-20:2, 0-49%5"
        )
    if request.array is not None and _ARRAY_RE.fullmatch(request.array):
        problem = _array_problem(request.array)
        if problem:
            problems.append(problem)
    if request.after is not None and not _JOB_ID_RE.fullmatch(request.after):
        problems.append(
            f"--after {request.after!r} is not a job id (e.g. 18163908), a run id or `last`"
        )
    nodes = request.nodes or 1
    gpus = _gpus_per_node(request, nodes, problems)
    procs = implied_procs(request, gpus)
    launcher = _launcher(request, nodes, procs, problems)
    return Resources(
        partition=request.partition,
        time_s=time_s,
        nodes=nodes,
        cpus_per_task=request.cpus_per_task,
        mem_mb=mem_mb,
        gpus=gpus,
        account=request.account or None,
        constraint=request.constraint,
        job_name=request.job_name or default_job_name(workload.name),
        array=request.array,
        dependency=f"afterok:{request.after}" if request.after else None,
        procs_per_node=procs,
        launcher=launcher,
    )


LAUNCHERS = ("torchrun", "srun", "none")


def _gpus_per_node(request: SpecRequest, nodes: int, problems: list[str]) -> int:
    """GPUs on each node: --gpus-per-node, or --gpus on one node (the job's GPUs)."""
    given = request.gpus_per_node
    if given is not None and request.gpus is not None and given != request.gpus:
        problems.append(
            f"--gpus {request.gpus} and --gpus-per-node {given} disagree: give one of them"
        )
    elif given is None and request.gpus and nodes > 1:
        problems.append(
            f"--gpus {request.gpus} with --nodes {nodes} is ambiguous: "
            f"use --gpus-per-node (the GPUs on each node)"
        )
    return request_gpus_per_node(request)


def _launcher(request: SpecRequest, nodes: int, procs: int, problems: list[str]) -> str:
    """The launcher asked for, else the one the project file declares, else torchrun when the
    job has more than one process; a batch script is never wrapped."""
    given, program = request.launcher, request.program
    if given is not None and given not in LAUNCHERS:
        problems.append(f"--launcher {given!r} is not one of: {', '.join(LAUNCHERS)}")
        return "none"
    if program is not None and program.kind == "script":
        problems.extend(_script_launch_problems(request, given, nodes))
        return "none"
    declared = program.launcher if program is not None else None
    if given is None and declared == "none" and nodes * procs > 1:
        problems.append(
            f'{request.workload} declares launcher = "none" in {program.source if program else ""}'
            f" (one process), but --nodes {nodes} × --procs-per-node {procs} asks for "
            f"{nodes * procs}: give --launcher torchrun or srun"
        )
    if given is None:
        return (declared or "torchrun") if nodes * procs > 1 else "none"
    if given == "none" and nodes > 1:
        problems.append(
            f"--launcher none runs one process on one node, but --nodes {nodes} was asked for: "
            "use --launcher torchrun or srun"
        )
    return given


def _script_launch_problems(request: SpecRequest, given: str | None, nodes: int) -> list[str]:
    """A batch script starts its own processes (its srun): hpcjob runs it once, unwrapped."""
    script = request.workload
    problems = []
    if given not in (None, "none"):
        problems.append(
            f"--launcher {given} does not apply to the batch script {script}: hpcjob runs it "
            "once, as it is, and its own srun starts its processes; leave --launcher out"
        )
    asked = [f"--nodes {nodes}"] * (nodes > 1)
    asked += [f"--procs-per-node {request.procs_per_node}"] * ((request.procs_per_node or 1) > 1)
    if asked:
        problems.append(
            f"{script} is a batch script: hpcjob runs it once, as one task on one node, but "
            f"{' and '.join(asked)} was asked for; to run on several nodes, submit what the "
            'script runs as a workload of hpcjob.toml with launcher = "torchrun", or as a '
            "command: hpcjob submit --nodes N --launcher srun -- CMD"
        )
    return problems


def with_feature(constraint: str | None, feature: str) -> str:
    """`constraint` that also requires the node feature `feature`: `A&feature`, `(A|B)&feature`
    (Slurm's `|` would otherwise take `B&feature` as one side); unchanged when it already
    requires it (a rerun of a staged job)."""
    if not _WORD_RE.fullmatch(feature):
        raise HpcjobError(
            f"The profile's stage_constraint {feature!r} is not a node feature name.",
            hint="Use one feature: letters, digits, '.', '_' or '-' (e.g. scratch-node).",
            exit_code=EXIT_USAGE,
        )
    if not constraint:
        return feature
    if feature in constraint.split("&"):
        return constraint
    if "|" in constraint and not (constraint.startswith("[") and constraint.endswith("]")):
        return f"({constraint})&{feature}"
    return f"{constraint}&{feature}"


def default_job_name(workload: str) -> str:
    """`hpcjob-train`; a path such as experiments/eval.py becomes `hpcjob-eval.py`."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", workload.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
    return f"hpcjob-{base or 'job'}"[:64]


# hpcjob records one ledger run per array task; Slurm's own hard limit is MaxArraySize 4000001.
MAX_ARRAY_TASKS = 10_000
# Counts of nodes, CPUs and GPUs above this are typing mistakes on any cluster.
_MAX_COUNT = 100_000


def _array_problem(array: str) -> str | None:
    """Ranges that run backwards, or more tasks than hpcjob records (the form is already valid)."""
    body = array.split("%", 1)[0]
    count = 0
    for part in body.split(","):
        bounds, _, step = part.partition(":")
        low, _, high = bounds.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            return f"--array {array!r}: the range {bounds} runs backwards (use {high}-{low})"
        if step and int(step) < 1:
            return f"--array {array!r}: the step of {part} must be at least 1"
        count += (last - first) // int(step or 1) + 1
    if count > MAX_ARRAY_TASKS:
        return f"--array {array!r} has {count} tasks; hpcjob takes at most {MAX_ARRAY_TASKS}"
    return None


def _build_args(raw: dict[str, Any], workload: WorkloadDef, problems: list[str]) -> dict[str, Any]:
    known = {a.name: a for a in workload.args}
    for name, value in raw.items():
        if name not in known and value is not None:
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} does not apply to the {workload.name} workload")
    args: dict[str, Any] = {}
    for arg in workload.args:
        value = raw.get(arg.name)
        args[arg.name] = arg.default if value is None else value
        problem = _check_arg(arg, args[arg.name])
        if problem:
            problems.append(problem)
    return args


def check_arg(arg: ArgDef, value: Any) -> str | None:
    """One workload argument's value against its rule: the problem, or None (e.g. a --sweep)."""
    return _check_arg(arg, value)


def _check_arg(arg: ArgDef, value: Any) -> str | None:
    if value is None:
        return None  # left to the job script
    if arg.name == "hidden_units":
        parts = str(value).split(",")
        if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            return f"{arg.flag} {value!r} must be positive whole numbers separated by commas"
        return None
    if arg.kind in (int, float) and not isinstance(value, bool):
        if not math.isfinite(value):
            return f"{arg.flag} must be a finite number, got {value}"
        if arg.minimum is not None and (
            value <= arg.minimum if arg.exclusive_minimum else value < arg.minimum
        ):
            bound = "greater than" if arg.exclusive_minimum else "at least"
            return f"{arg.flag} must be {bound} {_bound(arg.minimum)}, got {value}"
        if arg.maximum is not None and (
            value >= arg.maximum if arg.exclusive_maximum else value > arg.maximum
        ):
            bound = "less than" if arg.exclusive_maximum else "at most"
            return f"{arg.flag} must be {bound} {_bound(arg.maximum)}, got {value}"
    return None


def _bound(number: float) -> str:
    """`4294967295`, not `4.29497e+09`; `0.5` stays `0.5`."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def array_task_ids(array: str) -> list[int]:
    """The task ids of a Slurm --array spec: `0-9%2` → 0…9, `1,4-8:2` → 1, 4, 6, 8."""
    from hpcjob.slurm import expand_array_ids

    return sorted({int(task.split("_", 1)[1]) for task in expand_array_ids(f"0_[{array}]")})


def array_task_seeds(spec: Mapping[str, Any], tasks: Sequence[int]) -> dict[int, int]:
    """The seed each array task runs with where its spec leaves it open (seed None: --seed was
    not given): a plain array's task the default + its task id, so its tasks are not one training
    run N times; a sweep's task the default, since its tasks differ by what is swept (a sweep
    over seed has its values). {} when the workload has no seed or it was given. The job script
    does the same (train.sbatch.j2); this puts each task's seed in its spec in the ledger."""
    workload = WORKLOADS.get(spec.get("workload", "")) if not spec.get("program") else None
    default = (
        next((a.default for a in workload.args if a.name == "seed"), None) if workload else None
    )
    if default is None or (spec.get("args") or {}).get("seed", default) is not None:
        return {}
    sweep = spec.get("sweep")
    if sweep:
        swept = {p["name"] for p in sweep.get("params") or ()}
        return {} if "seed" in swept else dict.fromkeys(tasks, default)
    return {task: default + task for task in tasks}


def workload_argv(spec: JobSpec) -> list[str]:
    """The workload program's own arguments for this spec (unquoted; render quotes them). A
    boolean goes as `--name` or `--no-name` when it differs from the default (the program's)."""
    workload = WORKLOADS.get(spec.workload) if spec.program is None else None
    defaults = {a.name: a.default for a in workload.args} if workload else {}
    argv: list[str] = []
    for name, value in spec.args.items():
        flag = name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value != defaults.get(name, True):
                argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += ["--" + flag, str(value)]
    return argv


def partition_problems(res: Resources, partitions: Sequence[Partition]) -> list[str]:
    """What keeps the request from the live cluster's partitions (from sinfo): an unknown name
    (with the closest one), a time above the limit, GPUs the partition's nodes do not have."""
    by_name = {p.name: p for p in partitions}
    if res.partition is None:
        default = next((p for p in partitions if p.is_default), None)
        if default is None:
            return []  # Slurm decides; nothing to check against
        part = default
    elif res.partition not in by_name:
        close = difflib.get_close_matches(res.partition, list(by_name), n=1, cutoff=0.5)
        return [
            f"--partition: the cluster has no partition {res.partition!r}."
            + (f" Did you mean {close[0]!r}?" if close else "")
            + f" Partitions you can use: {', '.join(sorted(by_name))}"
        ]
    else:
        part = by_name[res.partition]
    problems = []
    if part.max_time_s is not None and res.time_s > part.max_time_s:
        problems.append(
            f"--time {format_time(res.time_s)} is above {part.name}'s limit of "
            f"{format_time(part.max_time_s)}"
        )
    if res.gpus and not part.gpus:
        gpu_parts = sorted(p.name for p in partitions if p.gpus)
        problems.append(
            f"{part.name} has no GPUs but {res.gpus} were asked for"
            + (f"; GPU partitions: {', '.join(gpu_parts)}" if gpu_parts else "")
        )
    elif res.gpus > part.gpus:
        problems.append(f"{res.gpus} GPUs were asked for, but a {part.name} node has {part.gpus}")
    if res.cpus_per_task and part.cpus_per_node and res.cpus_per_task > part.cpus_per_node:
        problems.append(
            f"--cpus {res.cpus_per_task} is more than a {part.name} node has ({part.cpus_per_node})"
        )
    return problems + _scale_problems(res, part)


def _scale_problems(res: Resources, part: Partition) -> list[str]:
    """Nodes and processes per node the partition cannot give."""
    problems = []
    if res.nodes > part.nodes:
        problems.append(
            f"--nodes {res.nodes} is more than {part.name} has ({part.nodes} "
            f"node{'s' if part.nodes != 1 else ''})"
        )
    cores = res.procs_per_node * (res.cpus_per_task or 1)
    if res.launcher != "none" and part.cpus_per_node and cores > part.cpus_per_node:
        problems.append(
            f"--procs-per-node {res.procs_per_node} × {res.cpus_per_task or 1} cores is "
            f"{cores} cores, more than a {part.name} node has ({part.cpus_per_node})"
        )
    return problems
