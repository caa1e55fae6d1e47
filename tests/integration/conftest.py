"""Integration tests against the real test cluster that tests/cluster/start.sh starts.

hpcjob runs as the non-root test user (as users do), from a venv and a copy of the source that
user can read. Without the cluster the tests skip with the reason; in CI (CI=true or
HPCJOB_REQUIRE_CLUSTER=1) a missing cluster is a failure, never a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (
    REPO,
    STATE,
    SSHLogin,
    UserSession,
    cluster_required,
    read_cluster_env,
    setup_env_profile,
    synthetic_pcam,
    write_config,
)

SYSTEM_PYTHON = "/usr/bin/python3"
# The workloads' packages and hpcjob's own dependencies (pyproject.toml): hpcjob runs from here.
USER_PACKAGES = ["torch==2.13.0", "h5py", "numpy", "matplotlib", "typer>=0.29,<0.30", "rich",
                 "jinja2", "paramiko", "platformdirs", "pyyaml", "tomli-w"]  # fmt: skip


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    env = read_cluster_env()
    reason = None
    if env is None:
        reason = f"the test cluster is not running ({STATE}/cluster.env missing): " \
                 "run `sudo tests/cluster/start.sh`"  # fmt: skip
    elif os.geteuid() != 0:
        reason = "integration tests run hpcjob as the test user, which needs root (runuser)"
    if reason:
        if cluster_required():
            pytest.fail(f"REQUIRED in CI: {reason}")
        pytest.skip(reason)
    assert env is not None
    probe = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        message = f"the test cluster does not answer: {probe.stderr.strip()}"
        if cluster_required():
            pytest.fail(f"REQUIRED in CI: {message}")
        pytest.skip(message)
    return env


@pytest.fixture(scope="session")
def user_python(cluster: dict[str, str]) -> str:
    """A venv the test user can run (the developer's .venv may sit under /root), cached by the
    package list and constraints."""
    key = hashlib.sha256(
        (" ".join(USER_PACKAGES) + (REPO / "constraints.txt").read_text()).encode()
    ).hexdigest()[:12]
    venv = STATE / "venvs" / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-c", str(REPO / "constraints.txt"), *USER_PACKAGES],
            check=True,
        )  # fmt: skip
        (venv / ".complete").touch()
        for folder in (STATE, venv.parent, venv):
            folder.chmod(folder.stat().st_mode | 0o755)
    return str(python)


@pytest.fixture(scope="session")
def user_source(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's hpcjob, templates and workloads where the test user can read them."""
    scratch = Path(cluster["HPCJOB_TEST_SCRATCH"])
    target = scratch / f"hpcjob-src-{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    for name in ("hpcjob", "templates", "workloads"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


@pytest.fixture
def user(
    cluster: dict[str, str], user_python: str, user_source: Path, request: pytest.FixtureRequest
) -> Iterator[UserSession]:
    scratch = Path(cluster["HPCJOB_TEST_SCRATCH"])
    home = scratch / f"home-{os.getpid()}-{request.node.name[:40]}-{time.time_ns() % 10**6}"
    home.mkdir(parents=True)
    shutil.chown(home, cluster["HPCJOB_TEST_USER"])
    session = UserSession(cluster, user_python, user_source, home, scratch)
    yield session
    # Leave no job of this test behind to hold the cluster's slots.
    jobs = session.as_user("squeue", "--me", "-h", "-o", "%A").stdout.split()
    if jobs:
        session.as_user("scancel", *jobs)


@pytest.fixture(scope="session")
def user_pcam(cluster: dict[str, str], user_python: str) -> Path:
    """A small synthetic PCAM set the test user's jobs can read."""
    scratch = Path(cluster["HPCJOB_TEST_SCRATCH"])
    return synthetic_pcam(scratch, user_python, train=512, valid=128, test=128, seed=3)


@pytest.fixture
def ssh_login(cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHLogin:
    """Login data for the test sshd; $HOME is a fresh folder and no ssh-agent is reachable, so
    nothing of the developer's SSH setup is read."""
    home = tmp_path / "ssh-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = tmp_path / "ssh_config"
    config.write_text("GlobalKnownHostsFile none\n")
    profile: dict[str, Any] = {
        "host": cluster["HPCJOB_TEST_SSH_HOST"],
        "port": int(cluster["HPCJOB_TEST_SSH_PORT"]),
        "user": cluster["HPCJOB_TEST_USER"],
        "identity_file": cluster["HPCJOB_TEST_SSH_KEY"],
        "known_hosts": cluster["HPCJOB_TEST_KNOWN_HOSTS"],
    }
    return SSHLogin(cluster, home, config, profile)


TEST_VENVS = "hpcjob-test-venvs"


@pytest.fixture
def remote_venv(
    cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Path]]:
    """`hpcjob setup-env` from 'a laptop' (this process, HPCJOB_HOME of its own) for a venv on
    the cluster, reached through the test sshd; yields (the venv on the cluster, a requirements
    file here). The sshd is this machine, so the venv is checked on disk; removed afterwards."""
    user = cluster["HPCJOB_TEST_USER"]
    name = f"v-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    write_config(home, setup_env_profile(cluster, f"~/{TEST_VENVS}/{name}"))
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    venv = Path(f"/home/{user}/{TEST_VENVS}/{name}")
    yield venv, requirements
    shutil.rmtree(venv, ignore_errors=True)
