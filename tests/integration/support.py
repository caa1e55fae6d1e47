"""What the integration tests share: the test cluster's state and environment, hpcjob run as the
test user (locally or over SSH), the SSH login data, and ways to look at Slurm and the ledger
directly. Test modules import from here, never from each other; fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcjob.ssh.session import SSHShell
from tests.helpers import Result

REPO = Path(__file__).resolve().parents[2]


STATE = Path(os.environ.get("HPCJOB_TEST_CLUSTER_DIR", "/var/tmp/hpcjob-test-cluster"))


def cluster_required() -> bool:
    """CI (CI=true/1/yes) or HPCJOB_REQUIRE_CLUSTER=1: a missing cluster fails, never skips. One
    definition, shared with the rule that fails a CI run on any skip (tests/conftest.py)."""
    from tests.helpers import ci_required

    return ci_required()


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
        from hpcjob.ssh.connect import ConnectOptions, ssh_shell_for

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


def jobs_with_token(user: UserSession, token: str) -> set[str]:
    """Every Slurm job carrying this token in its comment, from squeue and from sacct."""
    found = set()
    queue = user.as_user("squeue", "--me", "-h", "--states=all", "-o", "%i|%k").stdout
    acct = user.as_user(
        "sacct", "-X", "-n", "-P", "-o", "JobID,Comment", "--starttime", "now-2hours"
    ).stdout
    for line in (queue + "\n" + acct).splitlines():
        job_id, _, comment = line.partition("|")
        if comment.strip() == token:
            found.add(job_id.strip())
    return found


def ledger_rows(home: Path) -> list[dict[str, Any]]:
    """The ledger's runs, read directly (a command would refresh them first)."""
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs")]
    finally:
        db.close()


class Hpcjob:
    """hpcjob as a process that can be killed (locally as the test user, or over SSH as root)."""

    def __init__(self, home: Path, argv: Any, env: dict[str, str] | None, cwd: Path) -> None:
        self.home, self._argv, self._env, self.cwd = home, argv, env, cwd
        self.local = env is None  # as the test user through runuser, on this machine

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._argv(*args), cwd=self.cwd, env=self._env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def run(self, *args: str, timeout: float = 180) -> tuple[int, str, str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=timeout)
        assert "Traceback" not in err, err
        return proc.returncode, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code in (0, 3), err
        return json.loads(out)


def ssh_hpcjob(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, home: Path
) -> Hpcjob:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "[profiles.cluster]\n"
        'scheduler = "slurm"\nhost = "127.0.0.1"\n'
        f'port = {cluster["HPCJOB_TEST_SSH_PORT"]}\nuser = "{cluster["HPCJOB_TEST_USER"]}"\n'
        f'identity_file = "{cluster["HPCJOB_TEST_SSH_KEY"]}"\n'
        f'known_hosts = "{cluster["HPCJOB_TEST_KNOWN_HOSTS"]}"\npython = "{user_python}"\n'
        f'remote_root = "~/hpcjob/runs-exactly-once-{os.getpid()}"\n'
    )
    env = {
        "HOME": str(ssh_login.home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HPCJOB_HOME": str(home),
        "HPCJOB_PROFILE": "cluster",
        "PYTHONPATH": str(REPO),
    }
    python = str(REPO / ".venv" / "bin" / "python")
    return Hpcjob(home, lambda *a: [python, "-m", "hpcjob", *a], env, home)


def sshd_pids_of(shell: SSHShell) -> list[int]:
    """The sshd processes serving this shell's TCP connection (found by its client port)."""
    sock = shell.tcp_socket
    assert sock is not None
    server = sock.getpeername()[1]
    client = sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == server and int(remote, 16) == client:
            inodes.add(fields[9])
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link == f"socket:[{inode}]" for inode in inodes for link in links):
            pids.append(int(proc.name))
    assert pids, "no sshd process holds the connection"
    return pids


def drop_connection(shell: SSHShell) -> None:
    for pid in sshd_pids_of(shell):
        os.kill(pid, signal.SIGKILL)
