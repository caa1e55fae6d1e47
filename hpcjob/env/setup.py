"""The edge of `hpcjob setup-env`: run the setup script on the login node (streamed through the
profile's shell, with a progress display) or as the setup-env batch job, then optionally a
gpu-check job in the new venv; each is recorded in the ledger like any run.

The same rendered script (hpcjob/envscript.py) runs on the login node and inside the batch job: it
creates or repairs the venv, installs, verifies in that very environment, and only then writes
the marker `<venv>/.hpcjob-env.json` with the fingerprint, so a half-finished install never looks
healthy. A login-node run whose hpcjob is killed is settled by a later refresh (run/login.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from hpcjob.clock import utc_now
from hpcjob.env.report import GpuCheck, Outcome, check_module_names, result_error
from hpcjob.envscript import (
    INSTALLERS,
    LOG_NAME,
    MARKER_NAME,
    REQUIREMENTS_NAME,
    SCRIPT_NAME,
    EnvRequest,
    EnvResult,
    environment_key,
    fingerprint,
    parse_result,
    render_setup_script,
    requirement_names,
    requirements_sha256,
)
from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import NewRun, Run
from hpcjob.render import script_hash
from hpcjob.run.context import Context, cached_partitions, cluster_key, run_root
from hpcjob.run.login import DRIVER_FACT, LOGIN_TIMEOUT_S, driver_identity, stop_script
from hpcjob.run.prepare import Prepared, prepare
from hpcjob.run.rundir import Files, staging
from hpcjob.run.submit import submit
from hpcjob.run.watch import read_log_end, wait
from hpcjob.shell import CommandResult
from hpcjob.spec import SpecRequest

EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
_ERROR_LINE = re.compile(r"^Error: (.+)$", re.MULTILINE)


class SetupDisplay(Protocol):
    """What the command shows while the script runs (the CLI's live line, or plain lines)."""

    def running(
        self, requirements: tuple[str, ...], log_path: str
    ) -> contextlib.AbstractContextManager[None]: ...

    def feed(self, text: str) -> None:
        """The script's output as it arrives."""
        ...

    def note(self, message: str) -> None: ...


# -- checks before anything runs ------------------------------------------------------------------


def venv_warning(ctx: Context, requirements: str | None = None) -> str | None:
    """A sentence when the profile's venv was never set up, never finished, or was set up for
    other modules or another Python than the profile names now, or — given the `requirements`
    text a project's workload needs — does not hold those requirements; None when it matches.

    A marker from before markers recorded their requirements cannot tell, and says nothing. A
    venv without its python is no warning: `prepare` refuses it (run/prepare.py)."""
    venv = ctx.profile.get("venv")
    if not venv or ctx.scheduler.jobs_run_here:
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
    held = stored.get("requirements_sha256")
    if requirements is not None and held is not None and held != requirements_sha256(requirements):
        return (
            f"The venv {venv} does not hold the project's current requirements (they changed "
            f"after its last setup-env): the job may fail with ModuleNotFoundError; run "
            f"`hpcjob setup-env --profile {ctx.profile.name}` in the project's folder first."
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
    check_module_names(profile.modules, profile.name)
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


# -- the whole command ----------------------------------------------------------------------------


def setup_env(
    ctx: Context,
    request: EnvRequest,
    *,
    as_job: bool = False,
    display: SetupDisplay | None = None,
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
        raise result_error(result, request, output, profile=ctx.profile.name)
    if gpu_job is None:
        return Outcome(run, result, output)
    if display is not None:
        partition = gpu_job.spec.resources.partition
        display.note(f"Checking CUDA with a gpu-check job on {partition} in this venv …")
    return Outcome(run, result, output, check_gpu(ctx, gpu_job))


def _script_files(request: EnvRequest, script: str) -> Files:
    """What the setup script needs beside it in the run directory."""
    return {
        REQUIREMENTS_NAME: (request.requirements.encode(), 0o644),
        SCRIPT_NAME: (script.encode(), 0o755),
    }


def _spec_args(request: EnvRequest) -> dict[str, Any]:
    return {
        "venv": request.venv,
        "installer": request.installer,
        "editable": request.editable,
        "system_site_packages": request.system_site_packages,
        "force": request.force,
        "fingerprint": fingerprint(request),
    }


# -- on the login node ----------------------------------------------------------------------------


class _Quiet:
    """No display: the script's output is only kept (tests, library use)."""

    @contextlib.contextmanager
    def running(self, requirements: tuple[str, ...], log_path: str) -> Iterator[None]:
        yield

    def feed(self, text: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def setup_on_login_node(
    ctx: Context,
    request: EnvRequest,
    *,
    display: SetupDisplay | None = None,
    timeout_s: float = LOGIN_TIMEOUT_S,
) -> tuple[Run, EnvResult, str]:
    """Stream the script through the profile's shell; record it as a run of scheduler `login`.

    Interrupted (Ctrl-C → CANCELLED), timed out or cut off (FAILED), the run is recorded as such
    with the reason, the script is stopped, and its log so far stays in the run directory.
    """
    script = render_setup_script(request)
    run = _start_login_run(ctx, request, script)
    driven = _LoginRun(ctx, run, time.monotonic())
    names = tuple(requirement_names(request.requirements))
    shown = display or _Quiet()
    try:
        with shown.running(names, driven.log_path):
            done = ctx.scheduler.shell.stream(
                ["bash", f"{run.run_dir}/{SCRIPT_NAME}"], shown.feed, timeout=timeout_s
            )
    except KeyboardInterrupt:
        raise driven.interrupted() from None
    except Exception as exc:
        raise driven.cut_off(exc) from exc
    result = _result_of(done)
    ok = result.ok and done.returncode == 0
    output = done.stdout + (f"\n{done.stderr}" if done.stderr else "")
    run = driven.ended(
        JobState.COMPLETED if ok else JobState.FAILED,
        None if ok else f"{result.stage}: {result.error}",
        done.returncode,
    )
    return run, result, output


def _start_login_run(ctx: Context, request: EnvRequest, script: str) -> Run:
    """Record the run, stage its directory, mark it RUNNING on the login node."""
    new = NewRun(
        profile=ctx.profile.name,
        # Not the scheduler's cluster: refresh must never ask Slurm about this run.
        cluster=f"login:{cluster_key(ctx)}",
        scheduler="login",
        workload="setup-env",
        spec={"workload": "setup-env", "resources": {}, "args": _spec_args(request)},
        script=script,
        script_hash=script_hash(script),
        run_dir="",
        run_id=ctx.ledger.fresh_run_id(),
    )
    new = dataclasses.replace(new, run_dir=f"{run_root(ctx).rstrip('/')}/{new.run_id}")
    run = ctx.ledger.create_run(new)
    # Who drives the run: a refresh that finds this process gone ends the run (run/login.py).
    ctx.ledger.set_facts(run.run_id, {DRIVER_FACT: driver_identity()})
    with staging(ctx, run):
        ctx.scheduler.shell.write_files(run.run_dir, _script_files(request, script))
    run = ctx.ledger.set_submitted(run.run_id, "login", f"{run.run_dir}/{LOG_NAME}")
    started = JobInfo("login", JobState.RUNNING, started_at=utc_now())
    return ctx.ledger.record_info(run, started, "login node")


@dataclass
class _LoginRun:
    """The run this process drives on the login node, and how it is recorded when it ends."""

    ctx: Context
    run: Run
    begun: float  # monotonic

    @property
    def log_path(self) -> str:
        return self.run.output_path or f"{self.run.run_dir}/{LOG_NAME}"

    def ended(self, state: JobState, reason: str | None, exit_code: int | None = None) -> Run:
        seconds = round(time.monotonic() - self.begun, 1)
        self.ctx.ledger.set_facts(self.run.run_id, {"setup_env_s": seconds})
        info = JobInfo(
            "login",
            state,
            exit_code=exit_code,
            started_at=self.run.started_at,
            ended_at=utc_now(),
            reason=reason,
        )
        return self.ctx.ledger.record_info(self.run, info, "login node")

    def _stop(self, reason: str) -> None:
        note = f"hpcjob: {reason}; the script was stopped."
        stop_script(self.ctx.scheduler.shell, self.run.run_dir, note)

    def interrupted(self) -> HpcjobError:
        """Ctrl-C: the script stopped, the run CANCELLED, the error to raise."""
        seconds = time.monotonic() - self.begun
        reason = f"interrupted (Ctrl-C) after {seconds:.0f} s"
        self._stop(reason)
        self.ended(JobState.CANCELLED, reason)
        return HpcjobError(
            f"setup-env was interrupted after {seconds:.0f} s; run {self.run.run_id} is "
            f"recorded CANCELLED and the venv is marked unfinished. Its log so far: "
            f"{self.log_path}",
            hint=f"Run hpcjob setup-env --profile {self.run.profile} again to finish it (the "
            "unfinished venv is repaired).",
            exit_code=EXIT_INTERRUPTED,
        )

    def cut_off(self, exc: Exception) -> HpcjobError:
        """A timeout or a dropped connection: the script stopped, the run FAILED, the error."""
        reason = exc.message if isinstance(exc, HpcjobError) else f"{type(exc).__name__}: {exc}"
        self._stop(reason)
        self.ended(JobState.FAILED, reason)
        return HpcjobError(
            f"setup-env on the login node did not finish: {reason}. Run {self.run.run_id} is "
            f"recorded FAILED; its log so far: {self.log_path}",
            hint="For long installs use --as-job (login-node commands are killed after 15 "
            f"minutes on Snellius); run hpcjob setup-env --profile {self.run.profile} again to "
            "repair the venv.",
        )


def _result_of(done: CommandResult) -> EnvResult:
    """The script's result line; a script that died before writing it, as a failed result."""
    try:
        return parse_result(done.stdout)
    except HpcjobError:
        how = (
            f"was killed (signal {-done.returncode})"
            if done.returncode < 0
            else f"ended with exit status {done.returncode}"
        )
        if done.returncode == -1:
            how = "was killed (by a signal)"  # over SSH the signal's number is not told
        return EnvResult(ok=False, stage="script", error=how)


# -- as a batch job, and the GPU check -------------------------------------------------------------


def setup_as_job(ctx: Context, request: EnvRequest) -> tuple[Run, EnvResult, str]:
    """Submit the setup-env workload (its template runs the same staged script) and wait."""
    prepared = prepare(ctx, SpecRequest(workload="setup-env", require_data=False))
    script = render_setup_script(request)
    prepared = dataclasses.replace(prepared, files=_script_files(request, script))
    run = wait(ctx, submit(ctx, prepared))
    output = read_log_end(ctx, run)  # bounded: a runaway pip log must not fill memory
    try:
        result = parse_result(output)
    except HpcjobError:
        result = EnvResult(ok=False, stage="job", error=f"the job ended {run.state.value}")
    return run, result, output


def gpu_partition(ctx: Context, requested: str | None) -> str | None:
    """Where the GPU check runs: --gpu-partition, else the profile's gpu-check (or train)
    partition when it has GPUs, else the first partition with GPUs that sinfo shows."""
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
            f"--check-gpu found no partition with GPUs on the cluster of profile "
            f"{ctx.profile.name} (sinfo shows none).",
            hint=f"Name one with --gpu-partition (see `hpcjob partitions --profile "
            f"{ctx.profile.name}`).",
            exit_code=EXIT_USAGE,
        )
    up = [p for p in with_gpus if p.available] or with_gpus
    return str(up[0].name)


def prepare_gpu_check(ctx: Context, partition: str | None) -> Prepared:
    """The gpu-check job, validated against the cluster before anything is installed."""
    if ctx.scheduler.jobs_run_here:
        raise HpcjobError(
            f"--check-gpu submits a job to a GPU partition, and profile {ctx.profile.name} runs "
            "jobs on this machine (the embedded scheduler has no GPUs to give).",
            hint="Use a Slurm profile (--profile snellius), or `hpcjob submit gpu-check` here.",
            exit_code=EXIT_USAGE,
        )
    part = gpu_partition(ctx, partition)
    # Validated before the install, so the venv it runs in need not exist yet (check_files off).
    return prepare(
        ctx,
        SpecRequest(workload="gpu-check", partition=part, gpus=1, require_data=False),
        check_files=False,
    )


def check_gpu(ctx: Context, prepared: Prepared) -> GpuCheck:
    """Submit the prepared gpu-check job (in the profile's venv, with its modules) and wait."""
    run = wait(ctx, submit(ctx, prepared))
    facts = ctx.ledger.facts(run.run_id)
    output = read_log_end(ctx, run)  # bounded: a runaway pip log must not fill memory
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
