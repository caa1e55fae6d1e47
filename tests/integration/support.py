"""What the integration tests share: the test cluster's state and environment, hpcjob run as the
test user (locally or over SSH), the SSH login data and config files, synthetic PCAM data, ways to
look at Slurm, the ledger and processes directly, and the means to interrupt things at a point the
test chooses (a waiting condition, a TCP valve, a package whose build waits for the test).

Nothing here guesses how long something takes: a test waits for an event (`wait_until`), and a
deadline only bounds a hang. Test modules import from here, never from each other; fixtures live
in conftest.py."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hpcjob.ssh.session import SSHShell
from tests import helpers
from tests.helpers import Result

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


STATE = Path(os.environ.get("HPCJOB_TEST_CLUSTER_DIR", "/var/tmp/hpcjob-test-cluster"))


def cluster_required() -> bool:
    """CI (CI=true/1/yes) or HPCJOB_REQUIRE_CLUSTER=1: a missing cluster fails, never skips. One
    definition, shared with the rule that fails a CI run on any skip (tests/conftest.py)."""
    from tests.helpers import ci_required

    return ci_required()


# Integration checks run commands (squeue, sacct …): ask less often, and bound a hang more
# generously on a loaded machine. The one definition is tests/helpers.py's.
wait_until = functools.partial(helpers.wait_until, guard_s=180, tick_s=0.2)


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
    profile_env: dict[str, str] = field(default_factory=dict)  # more HPCJOB_* for every call

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
            **self.profile_env,
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


# ------------------------------------------------------------------------------ config files


def _toml(value: Any) -> str:
    # JSON's strings, numbers and arrays of them are valid TOML.
    return json.dumps(value)


def ssh_profile(cluster: dict[str, str], name: str = "cluster", **settings: Any) -> str:
    """A `[profiles.NAME]` reaching the test cluster's Slurm through the test sshd as the test
    user; `settings` (python, venv, remote_root, modules, identity_file…) add to or replace the
    defaults, a None value drops one."""
    values: dict[str, Any] = {
        "scheduler": "slurm",
        "host": cluster["HPCJOB_TEST_SSH_HOST"],
        "port": int(cluster["HPCJOB_TEST_SSH_PORT"]),
        "user": cluster["HPCJOB_TEST_USER"],
        "identity_file": cluster["HPCJOB_TEST_SSH_KEY"],
        "known_hosts": cluster["HPCJOB_TEST_KNOWN_HOSTS"],
        **settings,
    }
    lines = [f"[profiles.{name}]"]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def setup_env_profile(cluster: dict[str, str], venv: str, **settings: Any) -> str:
    """The profile `hpcjob setup-env` tests use: the cluster's system Python builds `venv`."""
    return ssh_profile(cluster, python="/usr/bin/python3", venv=venv, **settings)


def write_config(home: Path, text: str, owner: str | None = None) -> Path:
    """`home/config.toml` with `text` (owned by `owner` when the test user's hpcjob reads it)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    if owner:
        subprocess.run(["chown", owner, str(home), str(path)], check=True)
    return path


def synthetic_pcam(
    folder: Path, python: str, *, train: int, valid: int, test: int, seed: int
) -> Path:
    """A synthetic PCAM set (official flavour) made by workloads/synth.py under `folder`, named by
    its sizes and seed, readable by everyone (the test user's jobs read it); made once."""
    target = folder / f"pcam-synth-{train}-{valid}-{test}-seed{seed}"
    if not (target / "synth.json").exists():
        subprocess.run(
            [python, str(REPO / "workloads" / "synth.py"), str(target), "--flavour", "official",
             "--train", str(train), "--valid", str(valid), "--test", str(test),
             "--seed", str(seed)],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


def known_hosts_for_port(cluster: dict[str, str], port: int, path: Path) -> Path:
    """A known_hosts file naming the test sshd's host key at 127.0.0.1:`port` (a second sshd or
    a forwarder in front of the test one)."""
    key_type, key = Path(cluster["HPCJOB_TEST_SSH_HOST_KEY_PUB"]).read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    return path


# ------------------------------------------------------------------------------ Slurm, ledger


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


def current_job(user: UserSession, not_: str | None = None) -> str | None:
    """The run's job id in the ledger, once it is there (and is not `not_`)."""
    rows = ledger_rows(user.home) if (user.home / "ledger.db").exists() else []
    job = rows[0]["job_id"] if rows else None
    return job if job != not_ else None


def backdate_run(home: Path, run_id: str, seconds: float, owner: str | None = None) -> None:
    """Move the run's last change (`updated_at`) `seconds` into the past, in the ledger file
    itself — as `owner` when the test user's ledger it is, so that its WAL files stay theirs."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "done = db.execute(\"UPDATE runs SET updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', \"\n"
        '                  "updated_at, ?) WHERE run_id = ?", (sys.argv[3], sys.argv[2]))\n'
        "assert done.rowcount == 1, done.rowcount\n"
    )
    modifier = f"-{seconds:g} seconds"  # SQLite's date arithmetic
    argv = ["/usr/bin/python3", "-c", code, str(home / "ledger.db"), run_id, modifier]
    if owner:
        argv = ["runuser", "-u", owner, "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


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
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    user_python: str,
    home: Path,
    *,
    cwd: Path | None = None,
    remote_root: str | None = None,
) -> Hpcjob:
    """hpcjob on 'a laptop' (as root, HPCJOB_HOME `home`), run in `cwd` (default: `home`),
    its runs in `remote_root` on the cluster (default: one folder per test process)."""
    remote_root = remote_root or f"~/hpcjob/runs-laptop-{os.getpid()}"
    profile = ssh_profile(cluster, python=user_python, remote_root=remote_root)
    write_config(home, profile)
    env = {
        "HOME": str(ssh_login.home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HPCJOB_HOME": str(home),
        "HPCJOB_PROFILE": "cluster",
        "PYTHONPATH": str(REPO),
    }
    python = str(REPO / ".venv" / "bin" / "python")
    return Hpcjob(home, lambda *a: [python, "-m", "hpcjob", *a], env, cwd or home)


# ------------------------------------------------------------------------------ processes


def alive(pid: int) -> bool:
    """Running, stopped or sleeping — not gone and not a zombie (PID 1 reaps them slowly here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def processes_matching(*parts: str) -> list[int]:
    """Live processes whose command line holds every one of `parts`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(words).decode(errors="replace")
        if all(part in line for part in parts) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def pending_signals(pid: int) -> set[signal.Signals]:
    """Signals sent to the process and not handled yet (a stopped process keeps them)."""
    mask = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    return {sig for sig in signal.Signals if mask >> (sig.value - 1) & 1}


class Streamed:
    """A process started now whose stderr lines are collected as they come (by a thread)."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        self.lines: list[str] = []
        self.stdout = ""
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def finish(self, timeout: float = 300) -> str:
        """Wait for the end; all it printed on stderr."""
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=60)
        return "".join(self.lines)


# ------------------------------------------------------------------------------ SSH


def client_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of the process's TCP connections to `server_port` on loopback."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return []
    inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if fields[9] in inodes and int(remote, 16) == server_port:
            ports.append(int(local, 16))
    return ports


def sshd_pids_serving(client_port: int, server_port: int) -> list[int]:
    """The sshd processes on this machine serving the TCP connection from `client_port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == server_port and int(remote, 16) == client_port:
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
    return pids


def sshd_pids_of(shell: SSHShell) -> list[int]:
    """The sshd processes serving this shell's TCP connection (found by its client port)."""
    sock = shell.tcp_socket
    assert sock is not None
    pids = sshd_pids_serving(sock.getsockname()[1], sock.getpeername()[1])
    assert pids, "no sshd process holds the connection"
    return pids


def drop_connection(shell: SSHShell) -> None:
    for pid in sshd_pids_of(shell):
        os.kill(pid, signal.SIGKILL)


@dataclass
class _Link:
    """One connection through a Valve: both sockets, and how many more bytes may pass each way
    (no entry: unlimited)."""

    client: socket.socket
    server: socket.socket
    budget: dict[str, int] = field(default_factory=dict)
    held: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Valve:
    """A TCP forwarder on 127.0.0.1 in front of the test sshd, for interrupting a transfer at a
    point the test chooses: `hold_after("up"|"down", n)` lets n more bytes of the live connection
    pass that way (up: client to server) and then forwards nothing more (the sender's buffers
    fill and it waits); `cut()` closes the live connection on both sides, as a network that
    drops it. Connections opened later pass freely. `outlive_client`: see __init__."""

    def __init__(self, port: int, outlive_client: bool = False) -> None:
        self._target = ("127.0.0.1", port)
        # As a laptop that sleeps for good: when the client goes, the server side stays open and
        # what the server still sends is read and dropped (its sessions go on to their end).
        self.outlive_client = outlive_client
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.links: list[_Link] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Valve:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for link in self.links:
            link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(client, socket.create_connection(self._target))
            self.links.append(link)
            for src, dst, way in ((client, link.server, "up"), (link.server, client, "down")):
                threading.Thread(target=self._pump, args=(link, src, dst, way), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    if self.outlive_client and way == "up":
                        return  # the client went: the server never hears of it
                    break
                budget = link.budget.get(way)
                if budget is not None and len(data) >= budget:
                    dst.sendall(data[:budget])
                    link.budget[way] = 0
                    link.held.set()
                    link.closed.wait()  # forward nothing more on this connection
                    return
                if budget is not None:
                    link.budget[way] = budget - len(data)
                try:
                    dst.sendall(data)
                except OSError:
                    if not (self.outlive_client and way == "down"):
                        raise
                    while src.recv(65536):  # the client went: drop what the server sends
                        pass
                    break
        except OSError:
            if self.outlive_client and way == "up":
                return
        link.close()

    @property
    def live(self) -> _Link:
        (link,) = [lk for lk in self.links if not lk.closed.is_set()]
        return link

    def hold_after(self, way: str, nbytes: int) -> _Link:
        """Arm the live (idle) connection; its `held` event says when the point is reached."""
        link = self.live
        link.budget[way] = nbytes
        return link

    def cut(self) -> None:
        self.live.close()


# ------------------------------------------------------------------------------ setup-env


@dataclass
class GatedPackage:
    """A local package (its path is the requirements line) whose wheel build waits for the test:
    from `building` until `release()`, pip installing it is demonstrably mid-install."""

    folder: Path

    @classmethod
    def create(cls, folder: Path, owner: str) -> GatedPackage:
        folder.mkdir(parents=True)
        (folder / "pyproject.toml").write_text(
            '[build-system]\nrequires = []\nbuild-backend = "gated_backend"\nbackend-path = ["."]\n'
        )
        shutil.copy(Path(__file__).with_name("gated_backend.py"), folder / "gated_backend.py")
        subprocess.run(["chown", "-R", owner, str(folder)], check=True)
        return cls(folder)

    @property
    def requirement(self) -> str:
        return str(self.folder)

    def building(self) -> bool:
        return (self.folder / "building").exists()

    def release(self) -> None:
        (self.folder / "release").touch()


def start_setup_env(requirements: Path, gated: GatedPackage) -> Streamed:
    """`hpcjob setup-env` (this checkout, with the caller's HPCJOB_HOME and profile) installing
    the gated package, returned once pip demonstrably builds it: the install then waits for the
    test (`gated.release()`)."""
    requirements.write_text(gated.requirement + "\n")
    argv = [sys.executable, "-m", "hpcjob", "setup-env", "--requirements", str(requirements)]
    # Ctrl-C (SIGINT) must reach it as at a terminal, also when the tests run as a background
    # job (which starts with SIGINT ignored, and Python then installs no handler).
    running = Streamed(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(
        lambda: gated.building() or running.proc.poll() is not None,
        "pip building the gated package",
        guard_s=300,
    )
    assert running.proc.poll() is None, running.finish()
    return running


MULTI = "multi"  # tcn1 + tcn2, 2 cores each (tests/cluster/slurm.conf.in)


def require_multi_partition() -> None:
    """A cluster started by an older start.sh lacks the two-node partitions: say how to get them
    rather than fail obscurely."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "partition", MULTI], capture_output=True, text=True, timeout=60
    ).stdout
    assert "Nodes=tcn[1-2]" in shown or "Nodes=tcn1,tcn2" in shown, (
        f"the test cluster lacks the two-node partition {MULTI}: re-run "
        "`flock /tmp/hpcjob-cluster.lock bash tests/cluster/start.sh` from this checkout"
    )
