"""The embedded scheduler: states, time limit, cancel, queueing, surviving the CLI, dead runners.

Jobs that must be running when the test looks wait at a gate the test opens (`bash_wait_for`);
jobs that must be stopped sleep longer than any wait here, so only the stop can end them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.scheduler.header import expand_output, parse_script_header
from hpcjob.scheduler.local import LocalScheduler
from tests.helpers import GUARD_S, bash_wait_for, process_gone, wait_until


def write_script(folder: Path, body: str, *, time_limit: str = "05:00", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name=test-job\n#SBATCH --time={time_limit}\n"
        f"#SBATCH --output={folder}/slurm-%j.out\n{extra}"
        "#SBATCH --comment=tok\n\n" + body + "\n"
    )
    return script


def submit(sched: LocalScheduler, folder: Path, body: str, **kw: str) -> str:
    script = write_script(folder, body, **kw)
    return sched.submit(str(script), token=f"tok-{folder.name}", workdir=str(folder))


def wait_for(sched: LocalScheduler, job_id: str, states: set[JobState]) -> JobInfo:
    """Poll until the job is in one of `states`; a final state outside them fails at once."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        info = sched.poll([job_id])[job_id]
        if info.state in states:
            return info
        assert not info.state.is_final, f"job {job_id} ended {info}, not in {states}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {sched.poll([job_id])}")


def stop_group(pgid: int | None) -> None:
    """Clean up after a failed test: nothing of a job outlives it."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def sched(tmp_path: Path) -> LocalScheduler:
    return LocalScheduler(tmp_path / "local", max_jobs=2, kill_wait_s=1)


def test_header_parsing() -> None:
    header = parse_script_header(
        "#!/bin/bash\n#SBATCH --job-name=a\n#SBATCH -t 1:30\n"
        '#SBATCH --output="/x y/slurm-%j.out"\n#SBATCH --gpus=2\n#SBATCH --signal=B:USR1@30\n'
        "echo hi\n#SBATCH --partition=ignored-after-first-command\n"
    )
    assert (header.job_name, header.time_s, header.output) == ("a", 90, "/x y/slurm-%j.out")
    assert header.gpus == 2 and header.partition is None
    assert header.signal == (signal.SIGUSR1, 30)
    assert expand_output("/r/slurm-%j-%x.out", "12", "n") == "/r/slurm-12-n.out"
    assert parse_script_header("#!/bin/bash\n#SBATCH --array=0-3%2\n").array == "0-3%2"
    assert expand_output("/r/slurm-%A_%a.out", "12_3", "n", task=3) == "/r/slurm-12_3.out"


def test_completed_job_has_slurm_environment(sched: LocalScheduler, tmp_path: Path) -> None:
    run = tmp_path / "run1"
    job = submit(sched, run, 'echo "id=$SLURM_JOB_ID name=$SLURM_JOB_NAME dir=$SLURM_SUBMIT_DIR"')
    info = wait_for(sched, job, {JobState.COMPLETED})
    assert info.exit_code == 0 and info.node and info.started_at and info.ended_at
    out = (run / f"slurm-{job}.out").read_text()
    assert f"id={job} name=test-job dir={run}" in out
    assert sched.find_by_token("tok-run1") == job


def test_failed_job_keeps_exit_code(sched: LocalScheduler, tmp_path: Path) -> None:
    job = submit(sched, tmp_path / "run", "echo boom >&2; exit 3")
    info = wait_for(sched, job, {JobState.FAILED})
    assert (info.exit_code, info.signal) == (3, 0)
    assert "boom" in (tmp_path / "run" / f"slurm-{job}.out").read_text()


def test_time_limit_gives_timeout_and_kills_stubborn_jobs(
    sched: LocalScheduler, tmp_path: Path
) -> None:
    # The job ignores TERM from its first instruction (an ignored signal stays ignored across
    # fork and exec: its runner is started while this process ignores TERM) and never ends by
    # itself, so only the KILL that must follow TERM can end it.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        job = submit(sched, tmp_path / "run", "while :; do sleep 1; done", time_limit="0:01")
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        info = wait_for(sched, job, {JobState.TIMEOUT})
        assert "DUE TO TIME LIMIT" in (tmp_path / "run" / f"slurm-{job}.out").read_text()
        assert info.state.is_final and info.ended_at
        assert (info.exit_code, info.signal) == (None, signal.SIGKILL)  # no exit code, not 0
        pgid = sched._read(job)["pgid"]
        wait_until(lambda: process_gone(pgid), "the job's processes to be killed")
    finally:
        stop_group(sched._read(job).get("pgid"))


def test_a_timeout_keeps_the_scripts_own_exit_code(sched: LocalScheduler, tmp_path: Path) -> None:
    # Like train.py: stopped by the TERM at the limit, it exits 75 (a checkpoint was saved).
    body = "trap 'exit 75' TERM; sleep 200 & wait"
    job = submit(sched, tmp_path / "run", body, time_limit="0:01")
    try:
        info = wait_for(sched, job, {JobState.TIMEOUT})
        assert (info.exit_code, info.signal) == (75, 0)
    finally:
        stop_group(sched._read(job).get("pgid"))


def test_warning_signal_before_the_limit(sched: LocalScheduler, tmp_path: Path) -> None:
    # Warned a second in, a minute before its limit. The batch shell does not catch USR1, so
    # the warning ends the job wherever it finds it, even before the shell's first line; without
    # a warning it would run into its limit (TIMEOUT).
    job = submit(
        sched,
        tmp_path / "run",
        "sleep 200 & wait",
        time_limit="1:00",
        extra="#SBATCH --signal=B:USR1@59\n",
    )
    try:
        info = wait_for(sched, job, {JobState.FAILED})
        assert info.signal == signal.SIGUSR1
        assert "DUE TO TIME LIMIT" not in (tmp_path / "run" / f"slurm-{job}.out").read_text()
    finally:
        stop_group(sched._read(job).get("pgid"))


def test_cancel_running_and_pending(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "local", max_jobs=1, kill_wait_s=1)
    first = submit(sched, tmp_path / "a", "sleep 200")
    try:
        wait_for(sched, first, {JobState.RUNNING})
        second = submit(sched, tmp_path / "b", "echo never")
        assert sched.poll([second])[second].state == JobState.PENDING  # one slot, taken
        sched.cancel([second])
        never = sched.poll([second])[second]
        assert never.state == JobState.CANCELLED and never.exit_code is None  # it never ran
        sched.cancel([first])
        info = wait_for(sched, first, {JobState.CANCELLED})
        assert info.ended_at
        assert (info.exit_code, info.signal) == (None, signal.SIGTERM)  # killed, not "exit 0"
        # The slot is free now; the cancelled job's runner must give up rather than run it.
        runner = sched._read(second)["supervisor"]["pid"]
        wait_until(lambda: process_gone(runner), "the cancelled job's runner to end")
        assert not (tmp_path / "b" / f"slurm-{second}.out").exists()
        assert sched.poll([second])[second].state == JobState.CANCELLED
    finally:
        stop_group(sched._read(first).get("pgid"))


def test_a_job_the_cancel_ended_before_the_supervisor_looked_is_cancelled(
    sched: LocalScheduler, tmp_path: Path
) -> None:
    """`cancel` marks the job and signals it at once; on a loaded machine the script may be gone
    before the supervisor's next look: it is still CANCELLED, not FAILED (a race seen in CI)."""
    (sched.root / "jobs").mkdir(parents=True, exist_ok=True)
    rec = {"job_id": "7", "cancel_requested": "2026-12-06T21:00:00Z"}
    (sched.root / "jobs" / "7.json").write_text(json.dumps(rec))
    proc = subprocess.Popen(["bash", "-c", "kill -TERM $$"])  # ended by the cancel's signal
    proc.wait(timeout=GUARD_S)
    with open(tmp_path / "out", "wb") as out:
        assert sched._watch(proc, rec, out) == "CANCELLED"
    assert "CANCELLED AT" in (tmp_path / "out").read_text()


def test_queue_runs_jobs_in_order_within_the_limit(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "local", max_jobs=1, kill_wait_s=1)
    log = tmp_path / "order.log"
    # The 0.2 s in each job only gives a scheduler that ignores the limit room to start another
    # job meanwhile (interleaving the lines); a correct one passes however long anything takes.
    body = 'echo "start {i}" >> {log}; sleep 0.2; echo "end {i}" >> {log}'
    jobs = [submit(sched, tmp_path / f"j{i}", body.format(i=i, log=log)) for i in range(3)]
    for job in jobs:
        wait_for(sched, job, {JobState.COMPLETED})
    assert log.read_text().splitlines() == [
        "start 0", "end 0", "start 1", "end 1", "start 2", "end 2"
    ]  # fmt: skip


def test_missing_output_directory_fails_like_slurm(sched: LocalScheduler, tmp_path: Path) -> None:
    script = write_script(tmp_path / "run", "echo hi")
    script.write_text(script.read_text().replace(str(tmp_path / "run"), str(tmp_path / "gone"), 1))
    text = script.read_text().replace(f"--output={tmp_path}/run", f"--output={tmp_path}/gone")
    script.write_text(text)
    job = sched.submit(str(script), token="t", workdir=str(tmp_path / "run"))
    info = wait_for(sched, job, {JobState.FAILED})
    assert (info.exit_code, info.signal) == (0, 53)
    assert "missing" in (info.reason or "")


def test_dead_runner_marks_the_job_failed(sched: LocalScheduler, tmp_path: Path) -> None:
    job = submit(sched, tmp_path / "run", "sleep 200")
    wait_for(sched, job, {JobState.RUNNING})
    record = sched._read(job)
    try:
        os.kill(record["supervisor"]["pid"], signal.SIGKILL)
        info = wait_for(sched, job, {JobState.FAILED})
        assert "runner" in (info.reason or "") and "died" in (info.reason or "")
        # The job's processes were stopped too (gone, or a zombie awaiting its reaper).
        wait_until(lambda: process_gone(record["pgid"]), "the job's processes to be stopped")
    finally:
        stop_group(record["pgid"])


def test_unknown_jobs_are_left_out(sched: LocalScheduler) -> None:
    assert sched.poll(["999"]) == {}
    with pytest.raises(HpcjobError):
        sched.cancel(["999"])


def test_afterok_dependency_waits_and_never_satisfied_cancels(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "local", max_jobs=2, kill_wait_s=1)
    log, gate = tmp_path / "order.log", tmp_path / "go"
    first = submit(sched, tmp_path / "a", f"{bash_wait_for(gate)}; echo first >> {log}")
    second = submit(
        sched,
        tmp_path / "b",
        f"echo second >> {log}",
        extra=f"#SBATCH --dependency=afterok:{first}\n",
    )
    wait_for(sched, first, {JobState.RUNNING})
    # A free slot, but the job it depends on is held at its gate: it must wait.
    assert sched.poll([second])[second].state == JobState.PENDING
    gate.touch()
    wait_for(sched, second, {JobState.COMPLETED})
    assert log.read_text().split() == ["first", "second"]
    failing = submit(sched, tmp_path / "c", "exit 1")
    blocked = submit(
        sched, tmp_path / "d", "echo never", extra=f"#SBATCH --dependency=afterok:{failing}\n"
    )
    info = wait_for(sched, blocked, {JobState.CANCELLED})
    assert "never satisfied" in (info.reason or "")
