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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("HPCJOB_TEST_CLUSTER_DIR", "/var/tmp/hpcjob-test-cluster"))
SYSTEM_PYTHON = "/usr/bin/python3"
USER_PACKAGES = ["torch==2.13.0", "h5py", "numpy", "matplotlib", "typer", "rich", "jinja2",
                 "paramiko", "platformdirs"]  # fmt: skip


def cluster_required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("HPCJOB_REQUIRE_CLUSTER") == "1"
    )


def read_cluster_env() -> dict[str, str] | None:
    path = STATE / "cluster.env"
    if not path.exists():
        return None
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


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


@dataclass
class UserSession:
    """hpcjob as the test user, with a HPCJOB_HOME of its own."""

    cluster: dict[str, str]
    python: str
    source: Path
    home: Path
    workdir: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "HOME": f"/home/{self.cluster['HPCJOB_TEST_USER']}",
            "USER": self.cluster["HPCJOB_TEST_USER"],
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HPCJOB_HOME": str(self.home),
            "HPCJOB_PROFILE": "slurm",
            "HPCJOB_PYTHON": self.python,
            "HPCJOB_REMOTE_ROOT": str(self.home / "runs"),
            "PYTHONPATH": str(self.source),
            **(extra or {}),
        }

    def argv(self, *args: str, extra_env: dict[str, str] | None = None) -> list[str]:
        env = [f"{k}={v}" for k, v in self.env(extra_env).items()]
        return ["runuser", "-u", self.cluster["HPCJOB_TEST_USER"], "--", "env", "-i", *env,
                self.python, "-m", "hpcjob", *args]  # fmt: skip

    def hpcjob(self, *args: str, timeout: float = 300, **kw: Any) -> Result:
        proc = subprocess.run(
            self.argv(*args, **kw), cwd=self.workdir, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def as_user(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Any command as the test user (squeue, sacct … to check what hpcjob did)."""
        return subprocess.run(
            ["runuser", "-u", self.cluster["HPCJOB_TEST_USER"], "--", *argv],
            cwd=self.workdir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def template(self, workload: str, command: str) -> None:
        """A user template (as a user may write one) whose job runs `command`."""
        folder = self.home / "templates"
        folder.mkdir(exist_ok=True)
        (folder / f"{workload}.sbatch.j2").write_text(
            '{% extends "base.sbatch.j2" %}{% block command %}' + command + "\n{% endblock %}"
        )
        subprocess.run(["chown", "-R", self.cluster["HPCJOB_TEST_USER"], str(folder)], check=True)


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
    target = Path(cluster["HPCJOB_TEST_SCRATCH"]) / "pcam-synth-small"
    if not (target / "synth.json").exists():
        subprocess.run(
            [user_python, str(REPO / "workloads" / "synth.py"), str(target), "--flavour",
             "official", "--train", "512", "--valid", "128", "--test", "128", "--seed", "3"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


@dataclass
class SSHLogin:
    """The test sshd as hpctest, from a $HOME and an ssh config of the test's own."""

    cluster: dict[str, str]
    home: Path
    ssh_config: Path
    profile: dict[str, Any]

    def shell(
        self,
        *,
        ssh_config_text: str | None = None,
        prompt: Any = None,
        interactive: bool = False,
        **overrides: Any,
    ) -> Any:
        """An SSHShell for the profile with `overrides` (a None value drops the key)."""
        from hpcjob.ssh import ConnectOptions, ssh_shell_for

        if ssh_config_text is not None:
            self.ssh_config.write_text(ssh_config_text)
        profile = {k: v for k, v in {**self.profile, **overrides}.items() if v is not None}
        options = ConnectOptions(
            ssh_config_path=self.ssh_config, prompt=prompt, interactive=interactive
        )
        return ssh_shell_for(profile, options)

    def sshd_log_offset(self) -> int:
        return (STATE / "log" / "sshd.log").stat().st_size

    def sshd_log_since(self, offset: int) -> str:
        with open(STATE / "log" / "sshd.log", "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")


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
