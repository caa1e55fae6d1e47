"""A login-node setup-env run whose hpcjob was SIGKILLed: refresh ends it (session 4 state rule).

The decision is pure (`judge_login_run`); the end-to-end test starts a real `hpcjob setup-env`
on the embedded/local profile with a `python` that hangs, SIGKILLs hpcjob, and reads `status`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpcjob.envscript import EnvResult
from hpcjob.jobstate import JobState
from hpcjob.run.login import (
    DRIVER_FACT,
    LOGIN_TIMEOUT_S,
    LoginSighting,
    driver_gone,
    driver_identity,
    judge_login_run,
    process_start,
)
from tests.helpers import process_state, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
LOG = "/runs/r1/setup-env.log"


def seen(**kw: Any) -> LoginSighting:
    base: dict[str, Any] = {
        "driver_pid": 4242,
        "driver_gone": True,
        "script_pid": 777,
        "script_running": False,
        "result": None,
        "age_s": 60.0,
    }
    return LoginSighting(**{**base, **kw})


# -- the decision (pure) --------------------------------------------------------------------------


def test_driver_alive_or_on_another_host_leaves_the_run_alone() -> None:
    assert judge_login_run("r1", LOG, seen(driver_gone=False)).state is None
    verdict = judge_login_run("r1", LOG, seen(driver_gone=None, script_running=False))
    assert verdict.state is None and not verdict.stop_script


def test_driver_gone_and_script_gone_fails_with_the_driver_pid() -> None:
    verdict = judge_login_run("r1", LOG, seen())
    assert verdict.state == JobState.FAILED
    assert verdict.reason == "hpcjob was killed while setup-env ran (pid 4242)"
    assert verdict.note is not None and "setup-env again" in verdict.note and LOG in verdict.note
    failed = EnvResult(ok=False, stage="install", error="install_failed")
    assert judge_login_run("r1", LOG, seen(result=failed)).state == JobState.FAILED


def test_script_that_finished_on_its_own_is_completed() -> None:
    verdict = judge_login_run("r1", LOG, seen(result=EnvResult(ok=True)))
    assert verdict.state == JobState.COMPLETED
    assert "after hpcjob was killed (pid 4242)" in (verdict.reason or "")


def test_script_still_running_stays_running_and_says_how_to_stop_it() -> None:
    verdict = judge_login_run("r1", LOG, seen(script_running=True))
    assert verdict.state is None and not verdict.stop_script
    note = verdict.note or ""
    assert "hpcjob was killed while setup-env ran (pid 4242)" in note
    assert "still runs on the login node (pid 777)" in note and "kill -TERM -777" in note


def test_script_running_past_the_login_limit_is_stopped_and_failed() -> None:
    verdict = judge_login_run("r1", LOG, seen(script_running=True, age_s=LOGIN_TIMEOUT_S + 1))
    assert verdict.state == JobState.FAILED and verdict.stop_script
    assert (verdict.reason or "").startswith("hpcjob was killed while setup-env ran (pid 4242)")


def test_run_without_a_recorded_driver_is_judged_only_when_long_overdue() -> None:
    young = seen(driver_pid=None, driver_gone=None, age_s=LOGIN_TIMEOUT_S)
    assert judge_login_run("r1", LOG, young).state is None
    old = seen(driver_pid=None, driver_gone=None, age_s=LOGIN_TIMEOUT_S + 3600)
    verdict = judge_login_run("r1", LOG, old)
    assert verdict.state == JobState.FAILED and "(pid unknown)" in (verdict.reason or "")


def test_driver_gone_compares_host_and_start_time() -> None:
    me = {"host": "laptop", "pid": 10, "start": "1234"}
    assert driver_gone(me, "laptop", "1234") is False
    assert driver_gone(me, "laptop", None) is True  # no such process (or a zombie)
    assert driver_gone(me, "laptop", "9999") is True  # the pid was recycled
    assert driver_gone(me, "elsewhere", None) is None  # cannot see another host's processes


def test_process_start_tells_live_processes_from_dead_ones_and_zombies() -> None:
    me = driver_identity()
    assert me["pid"] == os.getpid() and me["start"] == process_start(os.getpid())
    assert me["start"] is not None
    child = subprocess.Popen(["sleep", "200"])
    assert process_start(child.pid) not in (None, me["start"])
    child.kill()
    # A zombie now (not yet waited for): dead all the same.
    wait_until(lambda: process_state(child.pid) == "Z", "the killed child to become a zombie")
    assert process_start(child.pid) is None
    child.wait()
    assert process_start(child.pid) is None


# -- for real: SIGKILL a running `hpcjob setup-env` ----------------------------------------------


def _profile(home: Path, tmp_path: Path, python: str | Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        'default_profile = "mine"\n[profiles.mine]\nscheduler = "local"\n'
        f'venv = "{tmp_path / "venv"}"\npython = "{python}"\n'
    )


def _hpcjob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcjob", *args], capture_output=True, text=True, timeout=60
    )


def _setup_run() -> dict[str, Any]:
    found = _hpcjob("runs", "-P", "mine", "--json")
    assert found.returncode == 0, found.stderr
    rows = [r for r in json.loads(found.stdout) if r["workload"] == "setup-env"]
    assert len(rows) == 1, rows
    return dict(rows[0])


def _status() -> tuple[dict[str, Any], str]:
    shown = _hpcjob("status", "-P", "mine", "--json")
    assert shown.returncode == 0, shown.stderr
    return next(r for r in json.loads(shown.stdout) if r["workload"] == "setup-env"), shown.stderr


def _alive(pid: int) -> bool:
    return process_start(pid) is not None


def test_sigkilled_setup_env_ends_failed_in_status(isolated_home: Path, tmp_path: Path) -> None:
    """The script hangs in `python` (as a stuck install does); hpcjob is SIGKILLed. While the
    script still runs, status keeps the run RUNNING and says so; once it ends, FAILED."""
    slow = tmp_path / "slow-python"
    # Stuck for longer than any wait here: it ends only when the test kills it.
    slow.write_text(f"#!/bin/bash\necho $$ > {tmp_path}/slow.pid\nexec sleep 600\n")
    slow.chmod(0o755)
    _profile(isolated_home, tmp_path, slow)
    requirements = tmp_path / "req.txt"
    requirements.write_text("")
    driver = subprocess.Popen(
        [sys.executable, "-m", "hpcjob", "setup-env", "-P", "mine", "--requirements",
         str(requirements)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    slow_pid_file = tmp_path / "slow.pid"
    script_pid = None
    try:

        def reached_python() -> bool:
            assert driver.poll() is None, driver.communicate()
            return slow_pid_file.exists() and bool(slow_pid_file.read_text().strip())

        wait_until(reached_python, "the script to reach its python step")
        before = _setup_run()
        assert before["state"] == "RUNNING"
        script_pid = int(Path(before["run_dir"], "setup-env.pid").read_text().split()[0])
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()

        row, stderr = _status()  # the script (its python) still runs: not failed yet
        assert row["state"] == "RUNNING", (row, stderr)
        assert f"hpcjob was killed while setup-env ran (pid {driver.pid})" in stderr
        assert f"still runs on the login node (pid {script_pid})" in stderr

        os.kill(int(slow_pid_file.read_text()), signal.SIGKILL)  # the stuck step ends
        wait_until(lambda: not _alive(script_pid), "the script to end")
        row, stderr = _status()
        assert row["state"] == "FAILED", row
        assert row["reason"] == f"hpcjob was killed while setup-env ran (pid {driver.pid})"
        assert "setup-env again" in stderr
        assert _status()[0]["ended_at"] == row["ended_at"]  # decided once, not again
    finally:
        if driver.poll() is None:
            driver.kill()
        if slow_pid_file.exists() and slow_pid_file.read_text().strip():
            _kill_quietly(int(slow_pid_file.read_text()))
        if script_pid:
            _kill_quietly(script_pid)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_script_that_finished_after_its_hpcjob_died_is_completed(
    isolated_home: Path, tmp_path: Path
) -> None:
    """A real (empty) install finishes; the ledger is then made to look as if its hpcjob died
    before recording the end: refresh reads the script's own result line from its log. Driven
    from another host, the same run is left alone."""
    from hpcjob.env.setup import request_for, setup_on_login_node
    from hpcjob.run.context import open_context
    from hpcjob.run.refresh import refresh

    _profile(isolated_home, tmp_path, SYSTEM_PYTHON)
    ctx: Any = open_context("mine")
    try:
        run, result, _ = setup_on_login_node(ctx, request_for(ctx, ""))
        assert result.ok and run.state == JobState.COMPLETED
        ctx.ledger.db.execute("UPDATE runs SET state = 'RUNNING', ended_at = NULL")

        elsewhere = {"host": "another-host", "pid": 1, "start": "1"}
        ctx.ledger.set_facts(run.run_id, {DRIVER_FACT: elsewhere})
        refresh(ctx)
        assert ctx.ledger.get_run(run.run_id).state == JobState.RUNNING
        assert any("another-host" in note for note in ctx.notes)

        dead = subprocess.Popen(["true"])
        dead.wait()
        ctx.ledger.set_facts(
            run.run_id, {DRIVER_FACT: {**driver_identity(), "pid": dead.pid, "start": "1"}}
        )
        refresh(ctx)
        run = ctx.ledger.get_run(run.run_id)
        assert run.state == JobState.COMPLETED
        assert f"after hpcjob was killed (pid {dead.pid})" in (run.reason or "")
    finally:
        ctx.close()
