"""The user's own code as a job: what `hpcjob submit TARGET [-- ARGS]` means inside a project.

TARGET is a workload of the project file (which wins over a built-in of the same name), a Python
file of the project, a batch script (its #SBATCH lines read like hpcjob's own flags), or nothing
with a command after `--`. The plan holds the request (with the `Program`), the config-key sweep,
the code snapshot and the config's text before the overrides; `prepare` does the rest as for any
workload. Reading the project (files, git) is this module's edge.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.project.projectfile import Project, ProjectWorkload, find_project_file, load_project
from hpcjob.render import SNAPSHOT_MARKER, snapshot_dir
from hpcjob.run.context import Context
from hpcjob.run.prepare import Prepared, ProgramFiles, prepare
from hpcjob.spec import WORKLOADS, Program, SpecRequest
from hpcjob.sweep import Sweep, make_sweep

_MB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """What the command line named: TARGET, the words after `--`, `--set`s, `--sweep`s."""

    name: str | None
    extra: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    sweeps: tuple[str, ...] = ()
    max_parallel: int | None = None
    project_dir: Path | None = None  # --project; default: found from the current folder


@dataclass(frozen=True)
class Plan:
    """A program ready for `prepare`: the request, its sweep and its files."""

    request: SpecRequest
    files: ProgramFiles
    project: Project | None = None
    workload: ProjectWorkload | None = None  # a workload of the project file
    notes: tuple[str, ...] = field(default=())
    # The options a batch script's #SBATCH lines gave, and the script: named when refused.
    from_script: tuple[str, ...] = ()
    script: str | None = None


def find_project(start: Path | None = None) -> Project | None:
    """The project the current folder (or `start`) belongs to, if it has a project file."""
    path = find_project_file(start or Path.cwd())
    return load_project(path) if path is not None else None


def is_program(target: Target, project: Project | None) -> bool:
    """Whether TARGET is the user's code rather than a built-in workload."""
    name = target.name
    if name is None:
        return True
    if project is not None and name in project.workloads:
        return True
    return name not in WORKLOADS


def plan_program(request: SpecRequest, target: Target) -> Plan:
    """The plan for the user's program named by `target` (is_program said so)."""
    project = find_project(target.project_dir)
    root = _root(project, target.project_dir)
    name = target.name
    notes: list[str] = []
    from_script: tuple[str, ...] = ()
    if name is None:
        if not target.extra:
            raise _unknown(None, project)
        program = Program(kind="command", command=target.extra, source="the command line")
        workload = Path(target.extra[0]).name
        has_code = project is not None or _git_top(root) is not None
    elif project is not None and name in project.workloads:
        return _project_plan(request, target, project, project.workloads[name])
    elif name.endswith(".py"):
        rel = _inside(root, name)
        program = Program(kind="python", command=("python", rel, *target.extra), source=rel)
        workload, has_code = rel, True
    elif name.endswith(".sh") or Path(name).is_file():
        rel = _inside(root, name)
        request, program, script_notes, from_script = _script(request, root, rel, target.extra)
        notes += script_notes
        workload, has_code = rel, True
    else:
        raise _unknown(name, project)
    _refuse_config_options(request, target, workload)
    snapshot = _snapshot(root, project, notes) if has_code else None
    if snapshot is None and name is None:
        notes.append(f"{root} is not a project (no hpcjob.toml, not in git): no code travels.")
    if snapshot is not None and name is not None:
        _check_in_snapshot(name, program.command[1], root, snapshot.files)
    program = dataclasses.replace(
        program,
        project=project.name if project else None,
        snapshot=snapshot.sha256 if snapshot else None,
        src_layout=bool(snapshot and _has_src(snapshot.files)),
    )
    request = dataclasses.replace(request, workload=workload, program=program, args={})
    files = ProgramFiles(snapshot=dict(snapshot.files) if snapshot else None)
    script = program.command[1] if program.kind == "script" else None
    return Plan(request, files, project, None, tuple(notes), from_script, script)


def _project_plan(
    request: SpecRequest, target: Target, project: Project, workload: ProjectWorkload
) -> Plan:
    """A workload of the project file: its command and config, options mapped to config keys,
    `--set`s and `--sweep`s over config keys, its default resources."""
    notes: list[str] = []
    snapshot = _snapshot(project.root, project, notes)
    config_base = None
    if workload.config:
        config_base = _config_text(project, workload.config, snapshot.files)
    overrides = _overrides(request, target, workload)
    program = Program(
        kind="project",
        command=(*workload.command, *target.extra),
        project=project.name,
        source=project.source_label,
        config=workload.config,
        metrics=workload.metrics,
        artifacts=workload.artifacts,
        snapshot=snapshot.sha256,
        src_layout=_has_src(snapshot.files),
        options=dict(workload.options),
        launcher=workload.launcher,
    )
    request = dataclasses.replace(
        request,
        workload=workload.name,
        program=program,
        args=overrides,
        partition=request.partition or workload.partition,
        time=request.time or workload.time,
        gpus=request.gpus if request.gpus is not None else workload.gpus,
        cpus_per_task=request.cpus_per_task or workload.cpus,
        mem=request.mem or workload.mem,
        default_time=workload.time,
    )
    files = ProgramFiles(snapshot=dict(snapshot.files), config_base=config_base)
    return Plan(request, files, project, workload, tuple(notes))


def _overrides(request: SpecRequest, target: Target, workload: ProjectWorkload) -> dict[str, Any]:
    """Config keys to override: mapped options (`--epochs 3` → training.epochs) then `--set`."""
    from hpcjob.project.configfile import parse_set

    overrides: dict[str, Any] = {}
    unmapped = []
    for option, value in request.args.items():
        if value is None:
            continue
        key = workload.options.get(option)
        if key is None:
            unmapped.append(option)
        else:
            overrides[key] = value
    if unmapped:
        flags = ", ".join("--" + o.replace("_", "-") for o in unmapped)
        mapped = ", ".join("--" + o.replace("_", "-") for o in workload.options) or "none"
        raise HpcjobError(
            f"{flags} does not apply to the project's workload {workload.name} "
            f"(its options: {mapped}).",
            hint=f"Map it to a config key under [workloads.{workload.name}.options] in the "
            "project file, or give the key itself: --set KEY=VALUE.",
            exit_code=EXIT_USAGE,
        )
    if target.sets and not workload.config:
        raise _no_config(workload.name, "--set")
    for text in target.sets:
        key, value = parse_set(text)
        overrides[workload.options.get(key.replace("-", "_"), key)] = value
    return overrides


def config_sweep(
    workload: ProjectWorkload, texts: Sequence[str], max_parallel: int | None
) -> Sweep:
    """`--sweep KEY=V1,V2` over config keys (or mapped option names), as ONE job array."""
    from hpcjob.project.configfile import parse_sweep

    if not workload.config:
        raise _no_config(workload.name, "--sweep")
    problems: list[str] = []
    params: list[tuple[str, tuple[Any, ...]]] = []
    for text in texts:
        try:
            name, values = parse_sweep(text)
        except HpcjobError as exc:
            problems.append(exc.message)
            continue
        key = workload.options.get(name.replace("-", "_"), name)
        if key in dict(params):
            problems.append(f"--sweep {key} is given twice; list all its values in one")
            continue
        params.append((key, tuple(values)))
    return make_sweep(
        params,
        max_parallel,
        problems,
        hint="Each --sweep is KEY=V1,V2,… with a config key (or a mapped option), e.g. "
        "--sweep training.learning_rate=1e-3,1e-4.",
        target="config",
    )


def _check_in_snapshot(name: str, rel: str, root: Path, files: Mapping[str, object]) -> None:
    """The file to run must travel with the run."""
    if rel not in files:
        raise HpcjobError(
            f"{name} is not part of the code snapshot of {root} (ignored by git or excluded?).",
            hint="Commit or un-ignore it, or leave it out of exclude in hpcjob.toml.",
            exit_code=EXIT_USAGE,
        )


def _script(
    request: SpecRequest, root: Path, rel: str, extra: Sequence[str]
) -> tuple[SpecRequest, Program, list[str], tuple[str, ...]]:
    """The user's batch script: its #SBATCH options fill what the command line did not give
    (also returned: the notes on what was dropped, and which options the script gave)."""
    from hpcjob.project.batchscript import read_batch_script

    path = root / rel
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcjobError(f"Cannot read {path}: {exc}.", exit_code=EXIT_USAGE) from exc
    script = read_batch_script(rel, text)
    given = {k: v for k, v in dataclasses.asdict(request).items() if k in script.options}
    filled = {k: v for k, v in script.options.items() if given.get(k) in (None, False)}
    request = dataclasses.replace(request, **filled)
    program = Program(
        kind="script",
        command=("bash", rel, *extra),
        source=rel,
        sbatch_extra=tuple(script.extra),
    )
    notes = [f"{rel}: {note}" for note in (*script.ignored, *script.notes)]
    return request, program, notes, tuple(filled)


def _refuse_config_options(request: SpecRequest, target: Target, workload: str) -> None:
    """A file or command has no config: built-in options, --set and --sweep do not apply."""
    given = [name for name, value in request.args.items() if value is not None]
    if given or target.sets or target.sweeps:
        flags = [*("--" + g.replace("_", "-") for g in given)]
        flags += ["--set"] * bool(target.sets) + ["--sweep"] * bool(target.sweeps)
        raise HpcjobError(
            f"{', '.join(flags)} does not apply to {workload}: it has no config file.",
            hint="Pass the program's own arguments after `--`, or define it as a workload with "
            "a config in hpcjob.toml (`hpcjob init`).",
            exit_code=EXIT_USAGE,
        )


def _snapshot(root: Path, project: Project | None, notes: list[str]) -> Any:
    from hpcjob.project.snapshot import take_snapshot

    limit = int((project.max_snapshot_mb if project else 50) * _MB)
    snapshot = take_snapshot(root, exclude=project.exclude if project else (), max_bytes=limit)
    notes += list(snapshot.left_out)
    if not snapshot.in_git:
        notes.append(
            f"{root} is not in git: its files travel as they are, and the run records no commit."
        )
    return snapshot


def _config_text(project: Project, config: str, files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """The config file's text: from the snapshot (what the run gets), else from the folder."""
    if config in files:
        return files[config][0]
    path = project.root / config
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HpcjobError(
            f"The config file {config} of {project.source_label} does not exist in {project.root}.",
            hint="Fix `config` in the project file, or create the file.",
            exit_code=EXIT_USAGE,
        ) from exc


def recorded_files(ctx: Context, run_dir: str, program: Program) -> ProgramFiles:
    """A rerun's files: the recorded snapshot (beside the original run's directory) must still
    be on the cluster; the config's text comes from it."""
    if not program.snapshot:
        return ProgramFiles()
    shell = ctx.scheduler.shell
    folder = snapshot_dir(run_dir, program.snapshot)
    if not shell.exists(f"{folder}/{SNAPSHOT_MARKER}"):
        raise HpcjobError(
            f"The code snapshot {program.snapshot[:12]} is no longer in {folder}.",
            hint="Rerun with today's code instead: add --current-code.",
            exit_code=EXIT_USAGE,
        )
    base = shell.read_bytes(f"{folder}/{program.config}") if program.config else None
    return ProgramFiles(config_base=base)


def current_files(
    program: Program, project_dir: Path | None = None
) -> tuple[Program, ProgramFiles]:
    """A rerun with today's code: a new snapshot of the project, the recorded command."""
    project = find_project(project_dir)
    root = _root(project, project_dir)
    snapshot = _snapshot(root, project, [])
    base = None
    if program.config:
        if project is None:
            raise HpcjobError(f"No project file found from {root}.", exit_code=EXIT_USAGE)
        base = _config_text(project, program.config, snapshot.files)
    program = dataclasses.replace(
        program, snapshot=snapshot.sha256, src_layout=_has_src(snapshot.files)
    )
    return program, ProgramFiles(snapshot=dict(snapshot.files), config_base=base)


def _root(project: Project | None, project_dir: Path | None) -> Path:
    """The folder whose code travels: the project file's, else git's top, else the folder."""
    if project is not None:
        return project.root
    start = (project_dir or Path.cwd()).resolve()
    top = _git_top(start)
    return top if top is not None else start


def _git_top(folder: Path) -> Path | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def _inside(root: Path, name: str) -> str:
    """`name` (relative to the current folder) as a path relative to the project root."""
    path = (Path.cwd() / name).resolve()
    if not path.is_file():
        raise HpcjobError(
            f"{name} does not exist.",
            hint="Give the path of a Python file or batch script of your project.",
            exit_code=EXIT_USAGE,
        )
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise HpcjobError(
            f"{name} is outside the project {root}.",
            hint="Run hpcjob from inside the project, or give --project with its folder.",
            exit_code=EXIT_USAGE,
        ) from None


def _has_src(files: Mapping[str, object]) -> bool:
    return any(name.startswith("src/") for name in files)


def _no_config(workload: str, flag: str) -> HpcjobError:
    return HpcjobError(
        f"{flag} changes config keys, but the workload {workload} has no config file.",
        hint=f'Name it in the project file: config = "configs/{workload}.yaml" under '
        f"[workloads.{workload}].",
        exit_code=EXIT_USAGE,
    )


def _unknown(name: str | None, project: Project | None) -> HpcjobError:
    own = sorted(project.workloads) if project else []
    builtin = sorted(WORKLOADS)
    listed = (f"your project's: {', '.join(own)}; " if own else "") + (
        f"built-in: {', '.join(builtin)}"
    )
    what = f"Unknown workload {name!r}" if name else "Nothing to submit"
    hint = (
        "Give one of those, a Python file (experiments/eval.py), a batch script (job.sh), or a "
        "command after `--` (hpcjob submit -- nvidia-smi)."
    )
    if project is None:
        hint += " `hpcjob init` writes hpcjob.toml for your own project."
    return HpcjobError(f"{what} ({listed}).", hint=hint, exit_code=EXIT_USAGE)


def prepare_submit(
    ctx: Context,
    request: SpecRequest,
    target: Target,
    *,
    check_files: bool = True,
    check_cluster: bool = True,
) -> tuple[Prepared, Plan | None]:
    """`submit`/`render`: a built-in workload as always, or the user's program — validated and
    rendered, with its snapshot and config copies ready to stage."""
    from hpcjob.sweep import sweep_request

    project = find_project(target.project_dir)
    if target.name is not None and not is_program(target, project):
        if target.extra or target.sets:
            raise HpcjobError(
                f"{'--set' if target.sets else 'Arguments after --'} apply to your own code, "
                f"not to the built-in workload {target.name}.",
                hint=f"See `hpcjob submit --help` for {target.name}'s options.",
                exit_code=EXIT_USAGE,
            )
        request, sweep = sweep_request(request, target.sweeps, target.max_parallel)
        prepared = prepare(
            ctx, request, check_files=check_files, check_cluster=check_cluster, sweep=sweep
        )
        return prepared, None
    plan = plan_program(request, target)
    workload = plan.workload

    def parse(_: SpecRequest, texts: Sequence[str], max_parallel: int | None) -> Sweep:
        assert workload is not None  # other programs refuse --sweep (no config)
        return config_sweep(workload, texts, max_parallel)

    request, sweep = sweep_request(plan.request, target.sweeps, target.max_parallel, parse)
    ctx.notes.extend(plan.notes)
    try:
        prepared = prepare(
            ctx,
            request,
            check_files=check_files,
            check_cluster=check_cluster,
            sweep=sweep,
            program_files=plan.files,
        )
    except HpcjobError as exc:
        if not plan.from_script:
            raise
        # Say which values came from the script, so the user knows which lines to fix.
        given = ", ".join("--" + key.replace("_", "-") for key in plan.from_script)
        raise HpcjobError(
            f"{exc.message}\n({given} came from the #SBATCH lines of {plan.script}; an option "
            "on the command line wins over them.)",
            hint=exc.hint,
            exit_code=exc.exit_code,
        ) from exc
    return prepared, plan
