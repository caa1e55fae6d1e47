"""`hpcjob setup-env`: the profile's venv, built with its modules, verified, and fingerprinted.

The script and everything read from its output are pure (hpcjob/envscript.py). This module holds
the user's words for what went wrong, the summary, and the edge: `setup_on_login_node` streams the
staged script through the profile's shell with a progress display, `setup_as_job` runs it as the
setup-env batch job, `check_gpu` submits a gpu-check job in the new venv; each is recorded in the
ledger like any run.

The same rendered script runs on the login node and inside the `setup-env` batch job: it creates or
repairs the venv, installs, verifies in that very environment, and only then writes the marker
`<venv>/.hpcjob-env.json` with the fingerprint, so a half-finished install never looks healthy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjob.envscript import (
    INSTALLERS,
    LOG_NAME,
    MARKER_NAME,
    REQUIREMENTS_NAME,
    SCRIPT_NAME,
    EnvRequest,
    EnvResult,
    SetupProgress,
    disk_full,
    environment_key,
    failing_requirement,
    fingerprint,
    module_problem,
    parse_result,
    render_setup_script,
    requirement_names,
    tail,
)
from hpcjob.errors import EXIT_JOB_FAILED, EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobState

if TYPE_CHECKING:
    from hpcjob.app import Context
    from hpcjob.ledger import Run
    from hpcjob.shell import Shell

# Snellius' home quota; the summary shows the venv against it.
HOME_QUOTA_BYTES = 200 * 1024**3
HOME_QUOTA_FILES = 1_000_000
LOGIN_TIMEOUT_S = 15 * 60  # login-node commands are killed after 15 minutes on Snellius
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C

# Characters a PDF or a word processor puts where a module name had an ASCII one.
_LOOKALIKES = {
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    "\ufe63": "-",  # SMALL HYPHEN-MINUS
    "\uff0d": "-",  # FULLWIDTH HYPHEN-MINUS
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2009": " ",
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u2044": "/",  # FRACTION SLASH
}


# -- checks before anything runs ------------------------------------------------------------------


def check_module_names(modules: tuple[str, ...] | list[str]) -> None:
    """Refuse module names with Unicode look-alikes (pasted from a PDF) before anything runs."""
    for module in modules:
        bad = [ch for ch in module if ord(ch) > 127]
        if not bad:
            continue
        ch = bad[0]
        name = unicodedata.name(ch, "unnamed character")
        ascii_spelling = "".join(_LOOKALIKES.get(c, c) for c in module)
        fixable = all(c in _LOOKALIKES for c in bad)
        raise HpcjobError(
            f"The module name {module!r} contains {ch!r} (U+{ord(ch):04X} {name}), "
            "which `module load` will not find.",
            hint=(
                f'Use the ASCII spelling "{ascii_spelling}" in the profile\'s modules.'
                if fixable
                else "Retype the name by hand; it was probably pasted from a PDF."
            ),
            exit_code=EXIT_USAGE,
        )


def venv_warning(ctx: Context) -> str | None:
    """A sentence when the profile's venv was never set up, never finished, or was set up for
    other modules or another Python than the profile names now; None when it matches."""
    venv = ctx.profile.get("venv")
    if not venv or ctx.profile.scheduler == "local":
        return None
    shell = ctx.scheduler.shell
    marker = f"{shell.expand_home(str(venv)).rstrip('/')}/{MARKER_NAME}"
    fix = f"run `hpcjob setup-env --profile {ctx.profile.name}` first"
    try:
        stored = json.loads(shell.read_bytes(marker, 0, 65536)) if shell.exists(marker) else None
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        return (
            f"The venv {venv} was not set up by hpcjob setup-env, or its install did not finish: "
            f"the job may fail with ModuleNotFoundError; {fix}."
        )
    expected = environment_key(ctx.profile.modules, str(ctx.profile.get("python") or "python3"))
    if stored.get("environment") not in (None, expected):
        return (
            f"The venv {venv} was set up for other modules or another Python than profile "
            f"{ctx.profile.name} names now; {fix}."
        )
    return None


def request_for(
    ctx: Context,
    requirements: str,
    *,
    installer: str = "pip",
    editable: str | None = None,
    system_site_packages: bool = False,
    force: bool = False,
) -> EnvRequest:
    """The request from the profile: refused before anything runs if it cannot work."""
    profile = ctx.profile
    venv = profile.get("venv")
    if not venv:
        raise HpcjobError(
            f"Profile {profile.name!r} has no venv path.",
            hint=f'Set venv = "~/hpcjob/venv" under [profiles.{profile.name}] in '
            f"{ctx.settings.config_path}, or HPCJOB_VENV.",
            exit_code=EXIT_USAGE,
        )
    check_module_names(profile.modules)
    if installer not in INSTALLERS:
        raise HpcjobError(f"--installer must be pip or uv, not {installer!r}.", exit_code=2)
    return EnvRequest(
        venv=str(venv),
        python=str(profile.get("python") or "python3"),
        modules=tuple(profile.modules),
        requirements=requirements,
        installer=installer,
        editable=editable,
        system_site_packages=system_site_packages,
        force=force,
    )


# -- the user's words for a failure ---------------------------------------------------------------


def result_error(result: EnvResult, request: EnvRequest, output: str) -> HpcjobError:
    """The user's words for a failed result."""
    where = f"the venv at {request.venv}"
    full = disk_full(output, result.extra.get("disk") or ())
    if full is not None and result.stage in ("venv", "install", "verify", "script"):
        return _disk_error(full, result, request, output)
    if result.stage == "modules":
        return _module_error(result, request, output)
    if result.error == "python_mismatch":
        return HpcjobError(
            f"{where} was made with Python {result.venv_python}, but the profile's python "
            f"({request.python}{_with_modules(request)}) is Python {result.python_version}; "
            "a venv works only with the Python that made it.",
            hint="Rebuild it for this Python: hpcjob setup-env --force (or set the profile's "
            "venv to a new path to keep the old one).",
        )
    if result.error == "python_not_found":
        return HpcjobError(
            f"The profile's python ({request.python!r}) does not run on the cluster"
            f"{_with_modules(request)}. The output ends:\n" + tail(output, 8),
            hint="Set `python` in the profile to a command that exists there (python3), or load "
            'the module that provides it (Snellius: modules = ["2025", '
            '"Python/3.13.1-GCCcore-14.2.0"]).',
        )
    if result.stage == "install":
        failing = failing_requirement(output)
        named = f" ({failing} could not be installed)" if failing else ""
        return HpcjobError(
            f"Installing the requirements into {where} failed{named}. The log ends:\n"
            + tail(output),
            hint="Fix or pin that requirement in the file, then run hpcjob setup-env again; "
            "the venv is marked unfinished until an install passes.",
        )
    if result.stage == "verify":
        broken = [p for p in result.packages if not p.get("ok")]
        lines = "\n".join(f"  {p['name']} (import {p['module']}): {p.get('error')}" for p in broken)
        return HpcjobError(
            f"The install finished but {len(broken)} requirement(s) do not import in {where}:\n"
            + lines,
            hint="A distribution whose import name differs is checked as name-with-underscores; "
            "otherwise the package is broken for this Python: try --force.",
        )
    if result.stage == "script":
        return HpcjobError(
            f"The setup script {result.error}, before it finished. The log ends:\n" + tail(output),
            hint="Login-node commands are killed after 15 minutes on Snellius: run long installs "
            "with --as-job. The venv stays marked unfinished and the next run repairs it.",
        )
    return HpcjobError(
        f"setup-env failed ({result.stage}: {result.error}). The output ends:\n" + tail(output),
        hint="Check the profile's python, modules and venv path (hpcjob config show).",
    )


def _with_modules(request: EnvRequest) -> str:
    return f", after module load {' '.join(request.modules)}" if request.modules else ""


def _module_error(result: EnvResult, request: EnvRequest, output: str) -> HpcjobError:
    problem = module_problem(result, output, request.modules)
    assert problem is not None
    if problem.module is None:
        return HpcjobError(
            f"The profile loads modules ({', '.join(request.modules)}), but the cluster has no "
            "`module` command (neither in the login shell nor in $MODULESHOME/init).",
            hint="If this cluster has no environment modules, remove `modules` from the "
            "profile and point `python` at a Python there; otherwise check that `module avail` "
            "works in a login shell on it.",
        )
    module = problem.module
    family = module.split("/", 1)[0]
    said = f" ({problem.tool}: {problem.said})" if problem.said else ""
    hint = (
        f"See which versions exist: `module spider {family}` (Lmod) or `module avail {family}`; "
        "names are case-sensitive"
    )
    earlier = request.modules[: request.modules.index(module)] if module in request.modules else ()
    if not any(re.fullmatch(r"\d{4}", m) for m in earlier) and not re.fullmatch(r"\d{4}", module):
        hint += '; on Snellius load the software year before it, e.g. modules = ["2025", …]'
    return HpcjobError(
        f"The module {module} does not exist on the cluster: `module load {module}` failed{said}.",
        hint=hint + ".",
    )


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.2f} GiB"


def _disk_error(full: Any, result: EnvResult, request: EnvRequest, output: str) -> HpcjobError:
    kind = "Disk quota exceeded" if full.quota else "No space left on device"
    place = full.mount or "the filesystem"
    role = {"venv": "the venv's", "tmp": "$TMPDIR's", "cache": "the installer cache's"}.get(
        full.what or "", "a"
    )
    if full.free_files == 0:
        room = "no files (inodes) left"
    elif full.free_bytes is not None:
        room = f"{_gib(full.free_bytes)} free of {_gib(full.size_bytes)}"
    else:
        room = "no room"
    what = "your quota there is used up" if full.quota else f"it has {room}"
    size = ""
    if result.venv_bytes is not None:
        size = (
            f" The venv is {_gib(result.venv_bytes)} in {result.venv_files or 0:,} files so far "
            f"(home on Snellius: 200 GiB and 1M files)."
        )
    return HpcjobError(
        f"Setting up the venv at {request.venv} failed: {kind} on {place} ({role} filesystem"
        f"{': ' + full.path if full.path else ''}); {what}.{size} The log ends:\n"
        + tail(output, 6),
        hint="See your usage with `myquota` (Snellius). Put the venv where there is room: set "
        "`venv` in the profile to a path on /projects or on scratch (e.g. "
        '"/scratch-shared/$USER/venv"), or use --installer uv, which writes fewer files; then '
        "run hpcjob setup-env again (the unfinished venv is repaired).",
    )


# -- what is shown -------------------------------------------------------------------------------

_DONE = {
    "create": "created",
    "update": "updated",
    "rebuild": "rebuilt",
    "repair": "repaired",
    "verify": "up to date",
}


@dataclass(frozen=True)
class GpuCheck:
    """What the gpu-check job in the new venv found."""

    run_id: str
    job_id: str | None
    partition: str | None
    state: str
    cuda_available: bool | None
    gpus_visible: int | None
    torch: str | None
    cuda_build: str | None
    reason: str | None  # why it failed, in the job's words

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and bool(self.cuda_available)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "run_id": self.run_id,
            "job_id": self.job_id,
            "partition": self.partition,
            "state": self.state,
            "cuda_available": self.cuda_available,
            "gpus_visible": self.gpus_visible,
            "torch": self.torch,
            "cuda_build": self.cuda_build,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Outcome:
    """One setup-env: its run, the script's result, the output, and the GPU check if asked."""

    run: Run
    result: EnvResult
    output: str
    gpu: GpuCheck | None = None


def summary_rows(result: EnvResult, gpu: GpuCheck | None = None) -> list[tuple[str, Any]]:
    """The key/value lines the summary shows."""
    rows: list[tuple[str, Any]] = [
        ("result", _DONE.get(result.action or "", str(result.action)) + ", verified"),
        ("python", result.python_version),
    ]
    for package in result.packages:
        rows.append((package["name"], f"ok {package.get('version') or ''}".strip()))
    torch = result.torch
    if torch:
        build = torch.get("cuda_build")
        rows.append(("torch build", f"CUDA {build}" if build else "CPU only (no CUDA)"))
        available = torch.get("cuda_available")
        rows.append(
            (
                "cuda available",
                "yes"
                if available
                else "no (expected on a login node without GPUs; "
                "--check-gpu confirms on a GPU node)",
            )
        )
    if result.venv_bytes is not None and result.venv_files is not None:
        gib = result.venv_bytes / 1024**3
        rows.append(
            (
                "venv size",
                f"{gib:.2f} GiB ({100 * result.venv_bytes / HOME_QUOTA_BYTES:.1f}% of 200 GiB), "
                f"{result.venv_files} files ({100 * result.venv_files / HOME_QUOTA_FILES:.1f}% of "
                "1M)",
            )
        )
    if result.install_s is not None:
        rows.append(("install seconds", result.install_s))
    if gpu is not None:
        rows.append(("gpu check", _gpu_line(gpu)))
    return rows


def _gpu_line(gpu: GpuCheck) -> str:
    where = f"job {gpu.job_id} on {gpu.partition}, run {gpu.run_id}"
    if gpu.ok:
        return f"ok: torch sees CUDA with {gpu.gpus_visible} GPU(s) ({where})"
    return f"FAILED: {gpu.reason or 'the job ended ' + gpu.state} ({where})"


def result_json(outcome: Outcome) -> dict[str, Any]:
    result, run = outcome.result, outcome.run
    data = {
        "run_id": run.run_id,
        "state": run.state.value,
        "up_to_date": result.up_to_date,
        "action": result.action,
        "python_version": result.python_version,
        "installer": result.installer,
        "packages": list(result.packages),
        "torch": result.torch,
        "venv_bytes": result.venv_bytes,
        "venv_files": result.venv_files,
        "install_s": result.install_s,
        "run_dir": run.run_dir,
    }
    if outcome.gpu is not None:
        data["gpu_check"] = outcome.gpu.as_dict()
    return data


def gpu_error(gpu: GpuCheck) -> HpcjobError:
    """The non-zero exit for a GPU check that did not see CUDA."""
    return HpcjobError(
        f"The venv is set up, but the gpu-check job {gpu.job_id} on {gpu.partition} ended "
        f"{gpu.state}: {gpu.reason or 'torch does not see CUDA there'}.",
        hint=f"Its whole output: hpcjob logs {gpu.run_id}. For CUDA, install a CUDA build of "
        "torch (e.g. pin the torch wheel for the cluster's CUDA in --requirements).",
        exit_code=EXIT_JOB_FAILED,
    )


# -- progress --------------------------------------------------------------------------------------


class ProgressDisplay:
    """Shows what the script is doing while it runs: a live line (rich, on stderr) for a person,
    or one plain line per step for logs and `--json` (`plain`). The clock is injected."""

    def __init__(
        self,
        plain: bool,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.plain = plain
        self.clock = clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.progress = SetupProgress()
        self._started = clock()
        self._live: Any = None

    @contextlib.contextmanager
    def running(self, requirements: tuple[str, ...], log_path: str) -> Iterator[None]:
        self.progress = SetupProgress(requirements=requirements)
        self._started = self.clock()
        if self.plain:
            self.write(f"setup-env: log {log_path}")
            yield
            return
        from rich.console import Console
        from rich.live import Live

        console = Console(stderr=True, highlight=False)
        self._live = Live(self, console=console, refresh_per_second=8, transient=True)
        with self._live:
            yield
        self._live = None

    def note(self, message: str) -> None:
        self.write(message)

    def feed(self, text: str) -> None:
        if self.progress.feed(text) and self.plain:
            self.write(f"setup-env [{self.clock() - self._started:4.0f} s] {self.progress.label}")

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        elapsed = f"{self.clock() - self._started:.0f} s"
        head = Spinner("dots", Text.assemble((self.progress.label, "bold"), f"  {elapsed}"))
        recent = [Text(f"  {line[:160]}", style="dim") for line in self.progress.recent]
        return Group(head, *recent)


# -- the edge ------------------------------------------------------------------------------------


def _stage(ctx: Context, run_dir: str, request: EnvRequest, script: str) -> None:
    shell = ctx.scheduler.shell
    shell.makedirs(run_dir)
    shell.write_bytes(f"{run_dir}/{REQUIREMENTS_NAME}", request.requirements.encode())
    shell.write_bytes(f"{run_dir}/{SCRIPT_NAME}", script.encode(), mode=0o755)


# Stops an interrupted login-node run: the script's process group (it leads one, started by sshd
# or by LocalShell), after checking that the pid in the file still is that script; then notes
# the reason at the end of its log.
# The run directory is $1; `script_runs` is true while the pid in its setup-env.pid is still the
# run's script (a recycled pid runs something else). The start of _STOP and _LOOK.
_FIND_SCRIPT = r"""
dir=$1
pid=$(cat "$dir/setup-env.pid" 2>/dev/null) || pid=""
script_runs() {
    [ -n "$pid" ] && ps -ww -o args= -p "$pid" 2>/dev/null | grep -q -F "$dir/setup-env.sh"
}
"""

_STOP = (
    _FIND_SCRIPT
    + r"""
if script_runs; then
    group=$(ps -o pgid= -p "$pid" | tr -d ' ')
    if [ "$group" = "$pid" ]; then target="-$pid"; else target="$pid"; fi
    kill -TERM -- "$target" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 -- "$target" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL -- "$target" 2>/dev/null
fi
printf '%s\n' "$2" >> "$dir/setup-env.log"
"""
)


def _stop_script(shell: Shell, run_dir: str, note: str) -> None:
    """Best effort: the connection may be the thing that failed."""
    with contextlib.suppress(Exception):
        shell.run(["bash", "-c", _STOP, "hpcjob-stop", run_dir, note], check=False, timeout=30)


def setup_on_login_node(
    ctx: Context,
    request: EnvRequest,
    *,
    display: ProgressDisplay | None = None,
    timeout_s: float = LOGIN_TIMEOUT_S,
) -> tuple[Run, EnvResult, str]:
    """Stream the script through the profile's shell; record it as a run of scheduler `login`.

    Interrupted (Ctrl-C → CANCELLED), timed out or cut off (FAILED), the run is recorded as such
    with the reason, the script is stopped, and its log so far stays in the run directory.
    """
    from hpcjob.app import run_root
    from hpcjob.ledger import NewRun
    from hpcjob.render import script_hash
    from hpcjob.scheduler import JobInfo, utc_now

    scheduler = ctx.scheduler
    script = render_setup_script(request)
    new = NewRun(
        profile=ctx.profile.name,
        # Not the scheduler's cluster: refresh must never ask Slurm about this run.
        cluster=f"login:{scheduler.cluster}",
        scheduler="login",
        workload="setup-env",
        spec={"workload": "setup-env", "resources": {}, "args": _spec_args(request)},
        script=script,
        script_hash=script_hash(script),
        run_dir="",
    )
    run_dir = f"{run_root(ctx).rstrip('/')}/{new.run_id}"
    new = NewRun(**{**new.__dict__, "run_dir": run_dir})
    run = ctx.ledger.create_run(new)
    # Who drives the run: a refresh that finds this process gone ends the run (see below).
    ctx.ledger.set_facts(run.run_id, {DRIVER_FACT: driver_identity()})
    try:
        _stage(ctx, run_dir, request, script)
    except (HpcjobError, OSError) as exc:
        ctx.ledger.mark_unsubmitted(run.run_id, f"staging the run directory failed: {exc}")
        raise HpcjobError(
            f"Could not stage {run_dir}: {exc}",
            hint="Check that the cluster's home has room (Snellius: `myquota`), or set the "
            "profile's remote_root to a folder with room.",
        ) from exc
    log_path = f"{run_dir}/{LOG_NAME}"
    run = ctx.ledger.set_submitted(run.run_id, "login", log_path)
    started = utc_now()
    run = ctx.ledger.record_info(
        run, JobInfo("login", JobState.RUNNING, started_at=started), "login node"
    )
    display = display or ProgressDisplay(plain=True, write=lambda _line: None)
    names = tuple(requirement_names(request.requirements))
    begun = time.monotonic()

    def ended(state: JobState, reason: str | None, exit_code: int | None = None) -> Run:
        ctx.ledger.set_facts(run.run_id, {"setup_env_s": round(time.monotonic() - begun, 1)})
        info = JobInfo(
            "login",
            state,
            exit_code=exit_code,
            started_at=started,
            ended_at=utc_now(),
            reason=reason,
        )
        return ctx.ledger.record_info(run, info, "login node")

    try:
        with display.running(names, log_path):
            done = scheduler.shell.stream(
                ["bash", f"{run_dir}/{SCRIPT_NAME}"], display.feed, timeout=timeout_s
            )
    except KeyboardInterrupt:
        seconds = time.monotonic() - begun
        reason = f"interrupted (Ctrl-C) after {seconds:.0f} s"
        _stop_script(scheduler.shell, run_dir, f"hpcjob: {reason}; the script was stopped.")
        ended(JobState.CANCELLED, reason)
        raise HpcjobError(
            f"setup-env was interrupted after {seconds:.0f} s; run {run.run_id} is recorded "
            f"CANCELLED and the venv is marked unfinished. Its log so far: {log_path}",
            hint="Run hpcjob setup-env again to finish it (the unfinished venv is repaired).",
            exit_code=EXIT_INTERRUPTED,
        ) from None
    except Exception as exc:
        reason = exc.message if isinstance(exc, HpcjobError) else f"{type(exc).__name__}: {exc}"
        _stop_script(scheduler.shell, run_dir, f"hpcjob: {reason}; the script was stopped.")
        ended(JobState.FAILED, reason)
        raise HpcjobError(
            f"setup-env on the login node did not finish: {reason}. Run {run.run_id} is recorded "
            f"FAILED; its log so far: {log_path}",
            hint="For long installs use --as-job (login-node commands are killed after 15 "
            "minutes on Snellius); run hpcjob setup-env again to repair the venv.",
        ) from exc
    output = done.stdout + (f"\n{done.stderr}" if done.stderr else "")
    try:
        result = parse_result(done.stdout)
    except HpcjobError:
        how = (
            f"was killed (signal {-done.returncode})"
            if done.returncode < 0
            else f"ended with exit status {done.returncode}"
        )
        if done.returncode == -1:
            how = "was killed (by a signal)"  # over SSH the signal's number is not told
        result = EnvResult(ok=False, stage="script", error=how)
    ok = result.ok and done.returncode == 0
    run = ended(
        JobState.COMPLETED if ok else JobState.FAILED,
        None if ok else f"{result.stage}: {result.error}",
        done.returncode,
    )
    return run, result, output


def setup_as_job(ctx: Context, request: EnvRequest) -> tuple[Run, EnvResult, str]:
    """Submit the setup-env workload (its template runs the same staged script) and wait."""
    from hpcjob import app as core
    from hpcjob.spec import SpecRequest

    prepared = core.prepare(ctx, SpecRequest(workload="setup-env", require_data=False))
    script = render_setup_script(request)
    _stage(ctx, prepared.new_run.run_dir, request, script)  # the job's template runs it
    run = core.submit(ctx, prepared)
    run = core.wait(ctx, run)
    output = core.read_log(ctx, run).decode("utf-8", errors="replace")
    try:
        result = parse_result(output)
    except HpcjobError:
        result = EnvResult(ok=False, stage="job", error=f"the job ended {run.state.value}")
    return run, result, output


def gpu_partition(ctx: Context, requested: str | None) -> str | None:
    """Where the GPU check runs: --gpu-partition, else the profile's gpu-check (or train)
    partition when it has GPUs, else the first partition with GPUs that sinfo shows."""
    from hpcjob.app import cached_partitions

    if requested:
        return requested  # `prepare` checks it against sinfo, with suggestions
    partitions = cached_partitions(ctx) or []
    with_gpus = [p for p in partitions if p.gpus]
    for workload in ("gpu-check", "train"):
        name = ctx.profile.partitions.get(workload)
        if name and any(p.name == name for p in with_gpus):
            return name
    if not with_gpus:
        raise HpcjobError(
            "--check-gpu found no partition with GPUs on this cluster (sinfo shows none).",
            hint="Name one with --gpu-partition (see `hpcjob partitions`).",
            exit_code=EXIT_USAGE,
        )
    up = [p for p in with_gpus if p.available] or with_gpus
    return str(up[0].name)


_ERROR_LINE = re.compile(r"^Error: (.+)$", re.MULTILINE)


def prepare_gpu_check(ctx: Context, partition: str | None) -> Any:
    """The gpu-check job, validated against the cluster before anything is installed."""
    from hpcjob import app as core
    from hpcjob.spec import SpecRequest

    if ctx.profile.scheduler == "local":
        raise HpcjobError(
            "--check-gpu submits a job to a GPU partition, and this profile runs jobs on this "
            "machine (the embedded scheduler has no GPUs to give).",
            hint="Use a Slurm profile (--profile snellius), or `hpcjob submit gpu-check` here.",
            exit_code=EXIT_USAGE,
        )
    part = gpu_partition(ctx, partition)
    return core.prepare(
        ctx, SpecRequest(workload="gpu-check", partition=part, gpus=1, require_data=False)
    )


def check_gpu(ctx: Context, prepared: Any) -> GpuCheck:
    """Submit the prepared gpu-check job (in the profile's venv, with its modules) and wait."""
    from hpcjob import app as core

    run = core.submit(ctx, prepared)
    run = core.wait(ctx, run)
    facts = ctx.ledger.facts(run.run_id)
    output = core.read_log(ctx, run).decode("utf-8", errors="replace")
    errors = _ERROR_LINE.findall(output)
    reason = errors[-1].strip() if errors else None
    if reason is None and run.state.value != "COMPLETED":
        reason = f"the job ended {run.state.value}" + (f" ({run.reason})" if run.reason else "")
    elif reason is None and not facts.get("cuda_available"):
        reason = "torch.cuda.is_available() is False on the GPU node"
    gpus = facts.get("gpu_count")
    return GpuCheck(
        run_id=run.run_id,
        job_id=run.job_id,
        partition=prepared.spec.resources.partition,
        state=run.state.value,
        cuda_available=facts.get("cuda_available"),
        gpus_visible=gpus if isinstance(gpus, int) else None,
        torch=facts.get("torch"),
        cuda_build=facts.get("cuda_build"),
        reason=reason,
    )


def setup_env(
    ctx: Context,
    request: EnvRequest,
    *,
    as_job: bool = False,
    display: ProgressDisplay | None = None,
    gpu: bool = False,
    gpu_partition_name: str | None = None,
) -> Outcome:
    """The whole command: set up (login node or job), raise the user's error when it failed,
    then the GPU check when asked for (validated first, so a bad partition costs no install)."""
    gpu_job = prepare_gpu_check(ctx, gpu_partition_name) if gpu else None
    if as_job:
        run, result, output = setup_as_job(ctx, request)
    else:
        run, result, output = setup_on_login_node(ctx, request, display=display)
    if not (result.ok and run.state.value == "COMPLETED"):
        raise result_error(result, request, output)
    if gpu_job is None:
        return Outcome(run, result, output)
    if display is not None:
        partition = gpu_job.spec.resources.partition
        display.note(f"Checking CUDA with a gpu-check job on {partition} in this venv …")
    return Outcome(run, result, output, check_gpu(ctx, gpu_job))


def _spec_args(request: EnvRequest) -> dict[str, Any]:
    return {
        "venv": request.venv,
        "installer": request.installer,
        "editable": request.editable,
        "system_site_packages": request.system_site_packages,
        "force": request.force,
        "fingerprint": fingerprint(request),
    }


# -- a login-node run whose hpcjob is gone --------------------------------------------------------
#
# A login-node run is driven by the hpcjob process that streams its script; that process records
# how the run ended. When it is SIGKILLed (or its laptop sleeps for good) nothing else would, so
# refresh looks at such runs: the driver's pid and start time (recorded at the start, so a
# recycled pid is not taken for it) and, once the driver is gone, the script's pid file on the
# cluster side.

DRIVER_FACT = "setup_env_driver"
# A run without a recorded driver (recorded by an older hpcjob) is taken as abandoned only when
# its driver would have given up on it long ago.
_UNRECORDED_GRACE_S = 5 * 60

# Prints `running PID` while the run's script still runs (the pid in its file is that script),
# else `gone` and the pid it had, if any.
_LOOK = (
    _FIND_SCRIPT
    + r"""
if script_runs; then
    echo "running $pid"
else
    echo "gone $pid"
fi
"""
)


def process_start(pid: int) -> str | None:
    """When a live process started, as the kernel tells it; None when there is no such process
    (or only its zombie). Compared with the recorded value, a recycled pid is told apart."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    # No /proc (macOS): ps tells the state and the start time.
    try:
        found = subprocess.run(
            ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = found.stdout.split(None, 1)
    if found.returncode != 0 or len(words) < 2 or words[0].startswith("Z"):
        return None
    return words[1].strip()


def driver_identity() -> dict[str, Any]:
    """This hpcjob process, as the driver of a login-node run: host, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid)}


def driver_gone(driver: dict[str, Any], host: str, start_now: str | None) -> bool | None:
    """Whether the recorded driver no longer runs: its pid is free, or taken by a process that
    started at another time. None when it ran on another host (this one cannot see it)."""
    if driver.get("host") != host:
        return None
    return start_now is None or (driver.get("start") is not None and start_now != driver["start"])


@dataclass(frozen=True)
class LoginSighting:
    """What a refresh found out about a login-node run that it does not drive itself."""

    driver_pid: int | None  # the hpcjob that streamed the script; None: not recorded
    driver_gone: bool | None  # None: cannot tell (another host, or not recorded)
    script_pid: int | None  # from setup-env.pid
    script_running: bool  # that pid still is the run's script
    result: EnvResult | None  # the script's result line, when its log has one
    age_s: float  # since the run started


@dataclass(frozen=True)
class LoginVerdict:
    """What to do with the run: a final state (None: leave it), a note, stop the script."""

    state: JobState | None = None
    reason: str | None = None
    note: str | None = None
    stop_script: bool = False


def judge_login_run(
    run_id: str, log_path: str, seen: LoginSighting, timeout_s: float = LOGIN_TIMEOUT_S
) -> LoginVerdict:
    """Decide a login-node run's state once the hpcjob driving it may be gone (pure).

    The driver alive (or unknowable): leave it. The driver gone and the script ended: COMPLETED
    when its result line says so (it wrote the marker itself), else FAILED. The driver gone and
    the script still running: keep it RUNNING (its end will be read from its log) and say so,
    until the login-node limit the driver would have enforced: then stop it and FAIL the run.
    """
    gone = seen.driver_gone
    if seen.driver_pid is None and gone is None:
        gone = seen.age_s > timeout_s + _UNRECORDED_GRACE_S or None
    if not gone:
        return LoginVerdict()
    who = f"pid {seen.driver_pid}" if seen.driver_pid is not None else "pid unknown"
    killed = f"hpcjob was killed while setup-env ran ({who})"
    if seen.script_running:
        if seen.age_s >= timeout_s:
            return LoginVerdict(
                JobState.FAILED,
                f"{killed}; the script was stopped after {timeout_s / 60:g} minutes",
                note=f"Run {run_id}: {killed}; its script ran past the login-node limit and was "
                f"stopped. Run hpcjob setup-env again (or with --as-job) to repair the venv.",
                stop_script=True,
            )
        return LoginVerdict(
            note=f"Run {run_id}: {killed}, but its script still runs on the login node "
            f"(pid {seen.script_pid}); it stays RUNNING and hpcjob records how it ends. "
            f"Log: {log_path}. To stop it: kill -TERM -{seen.script_pid} (on the login node)."
        )
    if seen.result is not None and seen.result.ok:
        return LoginVerdict(
            JobState.COMPLETED, f"finished after hpcjob was killed ({who}); the venv is ready"
        )
    return LoginVerdict(
        JobState.FAILED,
        killed,
        note=f"Run {run_id}: {killed}; the venv is marked unfinished. Run hpcjob setup-env "
        f"again to repair it. Log: {log_path}",
    )


def settle_login_runs(ctx: Context, runs: list[Run]) -> list[Run]:
    """Refresh's part for RUNNING login-node runs of this profile's cluster whose hpcjob is gone."""
    from hpcjob.scheduler import parse_utc

    shell = ctx.scheduler.shell
    host = socket.gethostname()
    now = time.time()
    out: list[Run] = []
    for run in runs:
        if run.cluster != f"login:{ctx.scheduler.cluster}" or run.state != JobState.RUNNING:
            out.append(run)
            continue
        driver = ctx.ledger.facts(run.run_id).get(DRIVER_FACT)
        driver = driver if isinstance(driver, dict) else None
        pid = int(driver["pid"]) if driver and str(driver.get("pid", "")).isdigit() else None
        age = now - parse_utc(run.started_at or run.created_at).timestamp()
        gone: bool | None = None
        if driver is not None and pid is not None:
            if pid == os.getpid() and driver.get("host") == host:
                out.append(run)  # this very process drives it
                continue
            gone = driver_gone(driver, host, process_start(pid))
            if gone is None:
                ctx.notes.append(
                    f"Run {run.run_id} (setup-env) is driven by hpcjob on {driver.get('host')}; "
                    "its state is recorded there."
                )
            if not gone:
                out.append(run)
                continue
        elif age <= LOGIN_TIMEOUT_S + _UNRECORDED_GRACE_S:
            out.append(run)  # no driver recorded (an older hpcjob) and too young to tell
            continue
        out.append(_settle_orphan(ctx, shell, run, pid, gone, age))
    return out


def _settle_orphan(
    ctx: Context, shell: Shell, run: Run, pid: int | None, gone: bool | None, age: float
) -> Run:
    """Look at the script of a run whose driver is gone, then record the verdict."""
    from hpcjob.scheduler import JobInfo, utc_now

    looked = shell.run(
        ["bash", "-c", _LOOK, "hpcjob-look", run.run_dir], check=False, timeout=30, idempotent=True
    )
    words = next(
        (
            ln.split()
            for ln in reversed(looked.stdout.splitlines())
            if ln.startswith(("running", "gone"))
        ),
        None,
    )
    if looked.returncode != 0 or not words:
        ctx.notes.append(f"Run {run.run_id} (setup-env): could not look for its script; unchanged.")
        return run
    running = words[0] == "running"
    script_pid = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    log_path = run.output_path or f"{run.run_dir}/{LOG_NAME}"
    result: EnvResult | None = None
    if not running and shell.exists(log_path):
        with contextlib.suppress(HpcjobError):
            result = parse_result(shell.read_bytes(log_path, 0).decode(errors="replace"))
    seen = LoginSighting(pid, gone, script_pid, running, result, age)
    verdict = judge_login_run(run.run_id, log_path, seen)
    if verdict.note:
        ctx.notes.append(verdict.note)
    if verdict.stop_script:
        _stop_script(shell, run.run_dir, f"hpcjob: {verdict.reason}; the script was stopped.")
    if verdict.state is None:
        return run
    info = JobInfo(
        "login", verdict.state, started_at=run.started_at, ended_at=utc_now(), reason=verdict.reason
    )
    return ctx.ledger.record_info(run, info, "hpcjob (driver gone)")
