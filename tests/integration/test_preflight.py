"""Refused before anything is submitted, on the real cluster behind the real sshd: a data folder
that is not there, one that lacks PCAM's files, and a venv without its python — by `submit` and
`submit --dry-run` alike, with nothing in the ledger and no job in Slurm.

    flock /tmp/hpcjob-cluster.lock .venv/bin/python -m pytest tests/integration/test_preflight.py
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.integration.support import SSHLogin, ssh_profile, write_config

pytestmark = pytest.mark.ssh


@pytest.fixture
def laptop(
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    user_python: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """hpcjob on 'a laptop' (this process, HPCJOB_HOME of its own) with the profile `cluster`:
    the test user's Slurm over the test sshd. Returns the HPCJOB_HOME."""
    home = tmp_path / "home"
    write_config(home, _profile(cluster, user_python))
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    return home


def _profile(cluster: dict[str, str], user_python: str, **settings: str) -> str:
    root = f"~/hpcjob/runs-preflight-{os.getpid()}"
    return ssh_profile(cluster, python=user_python, remote_root=root, **settings)


def _jobs_named(cluster: dict[str, str], name: str) -> list[str]:
    """The test user's Slurm jobs of that name, queued or in accounting."""
    user = cluster["HPCJOB_TEST_USER"]
    queue = ["squeue", "--me", "-h", "--states=all", "-o", "%j"]
    acct = ["sacct", "-X", "-n", "-P", "-o", "JobName", "--starttime", "now-1hours"]
    names = []
    for argv in (queue, acct):
        done = subprocess.run(
            ["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60
        )
        names += done.stdout.split()
    return [n for n in names if n == name]


def _refused(cluster: dict[str, str], *args: str) -> str:
    """`submit ARGS` and `submit ARGS --dry-run`: both exit 2; nothing recorded or queued."""
    name = f"preflight-{uuid.uuid4().hex[:8]}"
    told = []
    for dry in ([], ["--dry-run"]):
        result = invoke("submit", *args, "--job-name", name, *dry)
        assert result.exit_code == 2, (dry, result.stderr)
        assert "Traceback" not in result.stderr and "Valid" not in result.stderr
        told.append(result.stderr)
    assert told[0] == told[1]  # a dry run says what a submit would
    assert invoke("runs", "--json").json() == []
    assert _jobs_named(cluster, name) == []
    return told[0]


def test_a_data_folder_the_cluster_lacks_is_refused_before_submit(
    cluster: dict[str, str], laptop: Path, user_pcam: Path
) -> None:
    host = cluster["HPCJOB_TEST_SSH_HOST"]
    missing = f"/nonexistent-{uuid.uuid4().hex[:8]}/pcam"
    for workload in ("train", "eda"):
        told = _refused(cluster, workload, "-p", "rome", "--data-dir", missing)
        assert f"the data directory {missing} does not exist on {host}" in told
        assert "Point --data-dir" in told
    # A folder that is there but holds no PCAM files: each missing file is named.
    told = _refused(cluster, "train", "-p", "rome", "--data-dir", str(user_pcam.parent))
    assert f"{user_pcam.parent} on {host} lacks camelyonpatch_level_2_split_train_x.h5" in told
    assert "camelyonpatch_level_2_split_valid_y.h5" in told
    # The real files, looked at over the same connection, pass.
    fine = invoke("submit", "train", "-p", "rome", "--data-dir", str(user_pcam), "--dry-run")
    assert fine.exit_code == 0, fine.stderr
    assert "Valid." in fine.stderr


def test_a_venv_without_its_python_is_refused_with_setup_env(
    cluster: dict[str, str], laptop: Path, user_python: str
) -> None:
    host = cluster["HPCJOB_TEST_SSH_HOST"]
    absent = f"~/hpcjob-test-venvs/absent-{uuid.uuid4().hex[:8]}"
    write_config(laptop, _profile(cluster, user_python, venv=absent))
    told = _refused(cluster, "gpu-check", "-p", "rome")
    assert f"the venv {absent} has no bin/python on {host}" in told
    assert "hpcjob setup-env -P cluster" in told
    # The test user's own venv (it has its python) passes.
    write_config(laptop, _profile(cluster, user_python, venv=str(Path(user_python).parent.parent)))
    fine = invoke("submit", "gpu-check", "-p", "rome", "--dry-run")
    assert fine.exit_code == 0, fine.stderr
