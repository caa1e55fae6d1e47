"""Exactly-once submission, proven by killing hpcjob (SIGKILL) at each step of a submit, on the
real test cluster — with hpcjob on the login node (profile `slurm`) and over SSH.

No test hook lives in hpcjob: wrappers for `sbatch` and `squeue` are put first on the PATH (locally
through the environment, over SSH through the test user's `~/bin`, which `~/.profile` adds to the
login shell's PATH). An armed wrapper tells the test it was reached (a file) and waits; the test
SIGKILLs the hpcjob process, then lets the wrapper finish. Unarmed, the wrappers just exec the real
command. Kill points:

- `before_sbatch`: the run is recorded and staged; sbatch never ran.
- `after_sbatch`:  the real sbatch queued the job; hpcjob never read the job id.
- `after_stored`:  the job id is in the ledger (killed at the first squeue of `submit --wait`).
- `ambiguous`:     not a kill: sbatch queued the job but reported a socket timeout.

For each: zero lost and zero duplicate jobs (counted in squeue and sacct by the run's token),
exactly one ledger row, and the next `hpcjob status` completes the record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcjob.run.recovery import SETTLE_S
from tests.integration.support import (
    Hpcjob,
    SSHLogin,
    UserSession,
    backdate_run,
    jobs_with_token,
    ledger_rows,
    ssh_hpcjob,
    wait_until,
)

pytestmark = [pytest.mark.slurm]

KILL_POINTS = ("before_sbatch", "after_sbatch", "after_stored", "ambiguous")
REMOTE_BIN = Path("/home/hpctest/bin")  # on the login shell's PATH when it exists (~/.profile)

WRAPPER = r"""#!/bin/bash
# hpcjob test wrapper (tests/integration/test_exactly_once.py): the real command unless armed.
CTL=@CTL@
name=${0##*/}
real=/usr/bin/$name
point=$(cat "$CTL/arm.$name" 2>/dev/null) || exec "$real" "$@"
rm -f "$CTL/arm.$name"
reached() { echo "$PPID" >"$CTL/hit.tmp"; mv "$CTL/hit.tmp" "$CTL/hit"; }
wait_go() { for _ in $(seq 3000); do [[ -e $CTL/go ]] && return; sleep 0.1; done; }
case $point in
    before)
        reached; wait_go; exit 1 ;;
    ambiguous)
        "$real" "$@" >/dev/null 2>&1
        echo "sbatch: error: Batch job submission failed:" \
            "Socket timed out on send/recv operation" >&2
        exit 1 ;;
    *)
        out=$("$real" "$@" 2>"$CTL/stderr"); rc=$?
        reached; wait_go
        printf '%s\n' "$out"; cat "$CTL/stderr" >&2; exit $rc ;;
esac
"""


@dataclass
class KillSwitch:
    """The wrappers' control folder: arm one, wait until it is reached, let it go on."""

    ctl: Path
    bin: Path
    armed: list[str] = field(default_factory=list)

    def arm(self, command: str, point: str) -> None:
        for name in ("hit", "go"):
            (self.ctl / name).unlink(missing_ok=True)
        (self.ctl / f"arm.{command}").write_text(point)
        self.armed.append(command)

    def wait_reached(self, proc: subprocess.Popen[str]) -> int:
        """The pid of the wrapper's parent, once the wrapper was reached."""

        def reached() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"hpcjob ended before the kill point:\n{out}\n{err}")
            return (self.ctl / "hit").exists()

        wait_until(reached, "the wrapper reached", tick_s=0.05)
        return int((self.ctl / "hit").read_text().split()[0])

    def release(self) -> None:
        (self.ctl / "go").touch()

    def disarm(self) -> None:
        for command in self.armed:
            (self.ctl / f"arm.{command}").unlink(missing_ok=True)
        self.release()


def install_wrappers(ctl: Path, bin_dir: Path, owner: str) -> KillSwitch:
    ctl.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "squeue"):
        path = bin_dir / name
        path.write_text(WRAPPER.replace("@CTL@", str(ctl)))
        path.chmod(0o755)
    for folder in (ctl, bin_dir):
        shutil.chown(folder, owner)
    ctl.chmod(0o777)
    return KillSwitch(ctl, bin_dir)


def local_hpcjob(user: UserSession, switch: KillSwitch) -> Hpcjob:
    path = f"{switch.bin}:/usr/local/bin:/usr/bin:/bin"
    return Hpcjob(user.home, lambda *a: user.argv(*a, extra_env={"PATH": path}), None, user.workdir)


def quick_template(home: Path, owner: str | None) -> None:
    folder = home / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo exactly-once\n{% endblock %}'
    )
    if owner:
        subprocess.run(["chown", "-R", owner, str(home)], check=True)


# ------------------------------------------------------------------------------- the check


def kill_at(point: str, job: Hpcjob, switch: KillSwitch) -> dict[str, Any]:
    """Submit, kill hpcjob at `point`, return the run as the ledger holds it right after."""
    if point == "after_stored":
        switch.arm("squeue", "stop")
        proc = job.start("submit", "gpu-check", "--wait", "--json")
    else:
        switch.arm(
            "sbatch", {"before_sbatch": "before", "ambiguous": "ambiguous"}.get(point, "after")
        )
        proc = job.start("submit", "gpu-check", "--json")
    if point == "ambiguous":
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err  # found by its token: a normal submit for the user
        assert not (switch.ctl / "arm.sbatch").exists(), "the sbatch wrapper was not used"
        assert "Traceback" not in err
        rows = ledger_rows(job.home)
        assert len(rows) == 1 and rows[0]["job_id"] == json.loads(out)["job_id"]
        return rows[0]
    parent = switch.wait_reached(proc)
    if point == "after_stored":
        rows = ledger_rows(job.home)
        assert rows and rows[0]["job_id"], "the job id was not stored before the first squeue"
    victim = parent if job.local else proc.pid  # locally: the wrapper's parent (hpcjob)
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=60)
    switch.release()
    rows = ledger_rows(job.home)
    assert len(rows) == 1, rows
    return rows[0]


def check_recovery(
    point: str, job: Hpcjob, user: UserSession, run: dict[str, Any]
) -> dict[str, int]:
    """After the kill: the next commands complete the record; no job lost, none doubled."""
    token = run["token"]
    if point in ("before_sbatch",):
        assert run["state"] == "SUBMITTING" and run["job_id"] is None
        assert jobs_with_token(user, token) == set()
        # Nothing can still be on its way once the dead submitter's lock is free and SETTLE_S
        # have passed since the run's last change: rather than wait, the test moves that change
        # into the past. The run is marked UNSUBMITTED, then resubmitted exactly once.
        owner = user.cluster["HPCJOB_TEST_USER"] if job.local else None
        backdate_run(job.home, run["run_id"], SETTLE_S + 1, owner=owner)
        (shown,) = [r for r in job.json("status") if r["run_id"] == run["run_id"]]
        assert shown["state"] == "UNSUBMITTED" and "never reached" in shown["reason"]
        code, out, err = job.run("resubmit", run["run_id"], "--json")
        assert code == 0, err
        assert json.loads(out)["run_id"] == run["run_id"]
    elif point == "after_sbatch":
        assert run["state"] == "SUBMITTING" and run["job_id"] is None
        (queued,) = jobs_with_token(user, token)
        # A retried submit checks the token first: it finds the job and submits nothing.
        code, out, err = job.run("resubmit", run["run_id"], "--json")
        assert code == 0, err
        assert json.loads(out)["job_id"] == queued
    final = wait_final(job, run["run_id"])
    # squeue --states=all keeps every job of the last 5 minutes (MinJobAge), sacct the older
    # ones, and the test's own processes are all gone: one look finds any duplicate.
    jobs = jobs_with_token(user, token)
    assert len(jobs) == 1, f"{point}: jobs with the run's token: {jobs}"
    assert final["job_id"] == next(iter(jobs))
    assert final["state"] == "COMPLETED", final
    assert final["output_path"].endswith(f"slurm-{final['job_id']}.out")
    assert len(ledger_rows(job.home)) == 1
    return {"lost": 0, "duplicates": len(jobs) - 1}


def wait_final(job: Hpcjob, run_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        rows = job.json("status")
        for row in rows:
            assert all(k in row for k in ("run_id", "state", "job_id")), row
        (shown,) = [r for r in rows if r["run_id"] == run_id]
        unfinished = ("SUBMITTING", "PENDING", "RUNNING", "COMPLETING")
        return None if shown["state"] in unfinished else dict(shown)

    return wait_until(final, f"run {run_id} final", tick_s=1)


# ------------------------------------------------------------------------------- the tests


@pytest.fixture
def local_switch(user: UserSession) -> Iterator[KillSwitch]:
    switch = install_wrappers(
        user.home / "ctl", user.home / "wrapbin", user.cluster["HPCJOB_TEST_USER"]
    )
    yield switch
    switch.disarm()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_point_on_the_login_node(
    point: str, user: UserSession, local_switch: KillSwitch
) -> None:
    quick_template(user.home, user.cluster["HPCJOB_TEST_USER"])
    job = local_hpcjob(user, local_switch)
    run = kill_at(point, job, local_switch)
    check_recovery(point, job, user, run)


@pytest.fixture
def remote_switch(user: UserSession) -> Iterator[KillSwitch]:
    if REMOTE_BIN.exists():
        pytest.fail(f"{REMOTE_BIN} exists already; the test will not overwrite it")
    switch = install_wrappers(user.home / "ctl", REMOTE_BIN, user.cluster["HPCJOB_TEST_USER"])
    try:
        yield switch
    finally:
        switch.disarm()
        shutil.rmtree(REMOTE_BIN, ignore_errors=True)


@pytest.mark.ssh
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_point_over_ssh(
    point: str,
    user: UserSession,
    ssh_login: SSHLogin,
    user_python: str,
    remote_switch: KillSwitch,
    tmp_path: Path,
) -> None:
    job = ssh_hpcjob(user.cluster, ssh_login, user_python, tmp_path / "laptop")
    quick_template(job.home, None)
    run = kill_at(point, job, remote_switch)
    check_recovery(point, job, user, run)
