"""Login-node runs (`hpcjob setup-env` without --as-job) whose hpcjob is gone.

A login-node run is driven by the hpcjob process that streams its script; that process records
how the run ended. When it is SIGKILLed (or its laptop sleeps for good) nothing else would, so
refresh looks at such runs: the driver's pid and start time (recorded at the start, so a
recycled pid is not taken for it) and, once the driver is gone, the script's pid file on the
cluster side. The driver (hpcjob/env/setup.py) uses the same script to stop an interrupted run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcjob.clock import parse_utc, utc_now
from hpcjob.envscript import LOG_NAME, EnvResult, parse_result
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context, cluster_key
from hpcjob.shell import Shell

LOGIN_TIMEOUT_S = 15 * 60  # login-node commands are killed after 15 minutes on Snellius


# The run directory is $1; `script_runs` is true while the pid in its setup-env.pid is still the
# run's script (a recycled pid runs something else) on this login node: the file names the node
# the script runs on (`4242 int5`; an older hpcjob wrote the pid alone), and ps on another login
# node cannot see it. The start of _STOP and _LOOK.
_FIND_SCRIPT = r"""
dir=$1
pid="" host=""
{ read -r pid host < "$dir/setup-env.pid"; } 2>/dev/null || true
on_this_node() {
    [ -z "$host" ] || [ "$host" = "$(uname -n)" ]
}
script_runs() {
    on_this_node && [ -n "$pid" ] &&
        ps -ww -o args= -p "$pid" 2>/dev/null | grep -q -F -e "$dir/setup-env.sh"
}
"""


# Stops an interrupted login-node run: the script's process group (it leads one, started by sshd
# or by LocalShell), after checking that the pid in the file still is that script; then notes
# the reason at the end of its log.
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


def stop_script(shell: Shell, run_dir: str, note: str) -> None:
    """Best effort: the connection may be the thing that failed."""
    with contextlib.suppress(Exception):
        shell.run(["bash", "-c", _STOP, "hpcjob-stop", run_dir, note], check=False, timeout=30)


DRIVER_FACT = "setup_env_driver"


# A run without a recorded driver (recorded by an older hpcjob) is taken as abandoned only when
# its driver would have given up on it long ago.
_UNRECORDED_GRACE_S = 5 * 60


# Prints `running PID` while the run's script still runs (the pid in its file is that script),
# `elsewhere PID NODE THIS-NODE` when it was started on another login node (ps here cannot
# tell), else `gone` and the pid it had, if any.
_LOOK = (
    _FIND_SCRIPT
    + r"""
if ! on_this_node; then
    echo "elsewhere $pid $host $(uname -n)"
elif script_runs; then
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
    # The login node the script was started on, when it is not the one this refresh reached
    # (`this_node`): ps here cannot see it, so `script_running` says nothing.
    script_node: str | None = None
    this_node: str | None = None


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
    if seen.script_node is not None:
        return _judge_elsewhere(run_id, log_path, seen, killed, timeout_s)
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


# The login node ends a command at its limit; its log may lag that by a little.
_ELSEWHERE_GRACE_S = 5 * 60


def _judge_elsewhere(
    run_id: str, log_path: str, seen: LoginSighting, killed: str, timeout_s: float
) -> LoginVerdict:
    """A run whose script was started on another login node than the one this refresh reached:
    ps here cannot see it, so it is never judged by ps. Its log (on the filesystem the login
    nodes share) tells how it ended; with no result there past the login-node limit (and a
    grace), it no longer runs and the run is FAILED, saying why."""
    there, here, minutes = seen.script_node, seen.this_node, f"{timeout_s / 60:g}"
    if seen.result is not None:
        if seen.result.ok:
            return LoginVerdict(
                JobState.COMPLETED,
                f"finished on {there} after hpcjob was killed; the venv is ready",
            )
        return LoginVerdict(
            JobState.FAILED,
            f"{killed}; its script on login node {there} failed",
            note=f"Run {run_id}: {killed}; its script on login node {there} failed. Run "
            f"hpcjob setup-env again to repair the venv. Log: {log_path}",
        )
    if seen.age_s >= timeout_s + _ELSEWHERE_GRACE_S:
        return LoginVerdict(
            JobState.FAILED,
            f"{killed}; its script on login node {there} wrote no result within the "
            f"{minutes}-minute login-node limit",
            note=f"Run {run_id}: {killed}; its script on login node {there} wrote no result "
            f"within the {minutes}-minute login-node limit, so it no longer runs. Run hpcjob "
            f"setup-env again to repair the venv. Log: {log_path}",
        )
    return LoginVerdict(
        note=f"Run {run_id}: {killed}; its script was started on login node {there}, but this "
        f"connection reached {here}, where ps cannot see it. It stays RUNNING until its log has "
        f"a result (or the {minutes}-minute login-node limit passes). To check by hand, on "
        f"{there}: ps -o args= -p {seen.script_pid}. Log: {log_path}"
    )


def settle_login_runs(ctx: Context, runs: list[Run]) -> list[Run]:
    """Refresh's part for RUNNING login-node runs of this profile's cluster whose hpcjob is gone."""
    shell = ctx.scheduler.shell
    host = socket.gethostname()
    now = ctx.clock.now().timestamp()
    out: list[Run] = []
    for run in runs:
        if run.state != JobState.RUNNING or run.cluster != f"login:{cluster_key(ctx)}":
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
    looked = shell.run(
        ["bash", "-c", _LOOK, "hpcjob-look", run.run_dir], check=False, timeout=30, idempotent=True
    )
    words = next(
        (
            ln.split()
            for ln in reversed(looked.stdout.splitlines())
            if ln.startswith(("running", "gone", "elsewhere"))
        ),
        None,
    )
    if looked.returncode != 0 or not words:
        ctx.notes.append(f"Run {run.run_id} (setup-env): could not look for its script; unchanged.")
        return run
    running = words[0] == "running"
    script_pid = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    # `elsewhere PID NODE THIS-NODE`: the script runs (or ran) on another login node.
    nodes = (words[-2], words[-1]) if words[0] == "elsewhere" and len(words) >= 4 else (None, None)
    log_path = run.output_path or f"{run.run_dir}/{LOG_NAME}"
    result: EnvResult | None = None
    if not running and shell.exists(log_path):
        with contextlib.suppress(HpcjobError):
            result = parse_result(shell.read_bytes(log_path, 0).decode(errors="replace"))
    seen = LoginSighting(pid, gone, script_pid, running, result, age, *nodes)
    verdict = judge_login_run(run.run_id, log_path, seen)
    if verdict.note:
        ctx.notes.append(verdict.note)
    if verdict.stop_script:
        stop_script(shell, run.run_dir, f"hpcjob: {verdict.reason}; the script was stopped.")
    if verdict.state is None:
        return run
    info = JobInfo(
        "login", verdict.state, started_at=run.started_at, ended_at=utc_now(), reason=verdict.reason
    )
    return ctx.ledger.record_info(run, info, "hpcjob (driver gone)")
