"""Course accounts and partitions on the real test cluster (issue 17: 2). start.sh makes them at
run time: the test user is in hpctest_acct (default) and hpctest_course; gpu_course is for
hpctest_course only, thin_course for other_course only (an account the user is not in).

    flock /tmp/hpcjob-cluster.lock .venv/bin/python -m pytest tests/integration/test_accounts.py
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import invoke, wait_until
from tests.integration.support import SSHLogin, UserSession, ssh_profile, write_config

COURSE, DEFAULT = "hpctest_course", "hpctest_acct"
EVERYWHERE = "rome, gpu_a100, gpu_h100, staging"


@pytest.fixture(autouse=True)
def course_cluster(cluster: dict[str, str]) -> None:
    """The course partitions vanish when slurmctld restarts from slurm.conf (a start.sh without
    them may have run since): say how to get them back rather than fail obscurely."""
    import subprocess

    shown = subprocess.run(
        ["scontrol", "-o", "show", "partition"], capture_output=True, text=True, timeout=60
    ).stdout
    missing = [p for p in ("gpu_course", "thin_course") if f"PartitionName={p} " not in shown]
    assert not missing, (
        f"the test cluster lacks the partitions {missing}: re-run "
        "`flock /tmp/hpcjob-cluster.lock bash tests/cluster/start.sh` from this checkout"
    )


def _named(user: UserSession, name: str) -> list[str]:
    """The test user's jobs of that name, queued or in accounting (other tests may have jobs)."""
    queue = user.as_user("squeue", "--me", "-h", "--states=all", "-o", "%j").stdout.split()
    acct = ["sacct", "-X", "-n", "-P", "-o", "JobName", "--starttime", "now-1hours"]
    return [n for n in queue + user.as_user(*acct).stdout.split() if n == name]


def test_a_partition_no_account_of_the_user_may_use_is_refused_before_sbatch(
    user: UserSession,
) -> None:
    name = f"accounts-{uuid.uuid4().hex[:8]}"
    for dry in ([], ["--dry-run"]):
        refused = user.hpcjob("submit", "gpu-check", "-p", "thin_course", "--job-name", name, *dry)
        assert refused.exit_code == 2, refused.stderr
        assert (
            f"account {DEFAULT} (your default) may not use partition thin_course; it may use: "
            f"{EVERYWHERE}" in refused.stderr
        )
        assert f"None of your accounts ({COURSE}, {DEFAULT})" in refused.stderr
        assert "Traceback" not in refused.stderr and "sbatch" not in refused.stderr
    assert user.hpcjob("runs", "--json").json() == []
    assert _named(user, name) == []


def test_an_account_the_user_does_not_have_is_refused_with_their_accounts(
    user: UserSession,
) -> None:
    name = f"accounts-{uuid.uuid4().hex[:8]}"
    refused = user.hpcjob(
        "submit", "gpu-check", "-p", "rome", "--account", "other_course", "--job-name", name
    )
    assert refused.exit_code == 2, refused.stderr
    assert f"you have no account other_course on this cluster; yours: {COURSE}, {DEFAULT}" in (
        refused.stderr
    )
    wrong = user.hpcjob(
        "submit", "gpu-check", "-p", "gpu_course", "--account", DEFAULT, "--job-name", name
    )
    assert wrong.exit_code == 2, wrong.stderr
    assert f"Submit with --account {COURSE}" in wrong.stderr
    assert user.hpcjob("runs", "--json").json() == []
    assert _named(user, name) == []


def test_the_course_account_is_picked_for_gpu_course_and_the_job_runs_with_it(
    user: UserSession,
) -> None:
    dry = user.hpcjob("submit", "--dry-run", "-p", "gpu_course", "--time", "5", "--", "true")
    assert dry.exit_code == 0, dry.stderr
    assert f"#SBATCH --account={COURSE}" in dry.stdout
    assert f"Partition gpu_course is for account {COURSE}" in dry.stderr
    assert "rate assumed" not in dry.stderr  # the test cluster's profile has no Snellius rates

    result = user.hpcjob(
        "submit", "-p", "gpu_course", "--time", "5", "--wait", "--json", "--", "true", timeout=300
    )
    assert result.exit_code == 0, result.stderr
    run: dict[str, Any] = result.json()
    assert run["state"] == "COMPLETED"
    assert f"submitting with --account {COURSE}" in result.stderr

    def accounted() -> str | None:
        out = user.as_user("sacct", "-j", run["job_id"], "-X", "-n", "-P", "-o", "Account,JobName")
        rows = [line.split("|") for line in out.stdout.splitlines()]
        return next((a for a, name in rows if name != "allocation"), None)

    assert wait_until(accounted, f"sacct's record of job {run['job_id']}", tick_s=1) == COURSE


def test_partitions_names_the_accounts_that_may_use_each(user: UserSession) -> None:
    result = user.hpcjob("partitions", "--json")
    assert result.exit_code == 0, result.stderr
    accounts = {p["partition"]: p["accounts"] for p in result.json()}
    assert accounts["gpu_course"] == [COURSE]
    assert accounts["thin_course"] == []
    assert accounts["rome"] == [COURSE, DEFAULT]
    table = user.hpcjob("partitions", extra_env={"COLUMNS": "200"}).stdout
    shown = {line.split()[1]: line.split("│")[-2].strip() for line in table.splitlines()[4:-1]}
    assert shown["gpu_course"] == COURSE and shown["thin_course"] == "-", table


@pytest.mark.ssh
def test_over_ssh_the_accounts_cost_one_command_and_are_cached(
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    user_python: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From 'a laptop': the dry run picks the course account, a second one asks nothing again
    (the hour's cache), and with the login node gone the cache still refuses thin_course."""
    home = tmp_path / "home"
    root = f"~/hpcjob/runs-accounts-{uuid.uuid4().hex[:8]}"
    write_config(home, ssh_profile(cluster, python=user_python, remote_root=root))
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    picked = invoke("submit", "gpu-check", "-p", "gpu_course", "--dry-run", "--json")
    assert picked.exit_code == 0, picked.stderr
    assert picked.json()["spec"]["resources"]["account"] == COURSE
    cache = home / "cache" / "accounts-cluster.json"
    stamp = cache.stat().st_mtime_ns
    again = invoke("submit", "gpu-check", "-p", "gpu_course", "--dry-run")
    assert again.exit_code == 0 and cache.stat().st_mtime_ns == stamp
    # No login node (port 1 refuses): the cached accounts still refuse thin_course.
    offline = ssh_profile(cluster, python=user_python, remote_root=root, port=1)
    write_config(home, offline)
    refused = invoke("submit", "gpu-check", "-p", "thin_course", "--dry-run")
    assert refused.exit_code == 2, refused.stderr
    assert "may not use partition thin_course" in refused.stderr
