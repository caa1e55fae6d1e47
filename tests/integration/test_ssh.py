"""SSHShell against the real test sshd (127.0.0.1:2222) and the real Slurm behind it, as hpctest.

The sshd runs on this machine, so what hpctest sees over SSH is this machine's filesystem: file
operations are checked against LocalShell on the same paths.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.shell import LocalShell
from hpcjob.ssh.connect import ConnectOptions, connect_and_trust
from hpcjob.ssh.session import QuickAckSocket, SSHShell
from tests.integration.support import (
    SSHLogin,
    drop_connection,
    known_hosts_for_port,
    ssh_profile,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.ssh


@pytest.fixture
def shell(ssh_login: SSHLogin) -> Iterator[SSHShell]:
    with ssh_login.shell() as opened:
        yield opened


@pytest.fixture
def remote_dir(shell: SSHShell) -> Iterator[str]:
    """A fresh folder in hpctest's home, removed afterwards."""
    path = shell.expand_home(f"~/hpcjob-ssh-test-{uuid.uuid4().hex[:10]}")
    shell.makedirs(path)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def other_ed25519(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def host_key_fingerprint(cluster: dict[str, str]) -> str:
    line = subprocess.run(
        ["ssh-keygen", "-lf", cluster["HPCJOB_TEST_SSH_HOST_KEY_PUB"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return line.split()[1]


# ---------------------------------------------------------------------------- commands
def test_commands_share_one_connection_and_one_channel_each(
    ssh_login: SSHLogin, shell: SSHShell
) -> None:
    offset = ssh_login.sshd_log_offset()
    for _ in range(3):
        result = shell.run(slurm.squeue_mine_argv(), idempotent=True)
        slurm.parse_squeue(result.stdout)
    assert shell.stats()["connections"] == 1
    assert shell.channels_opened == 3 and shell.commands_run == 3
    assert shell.exists("~")  # the SFTP session: one more channel, reused from now on
    shell.read_bytes("~/.profile")
    assert shell.channels_opened == 4
    failed = shell.run(["sh", "-c", "echo out; echo oops >&2; exit 3"], check=False)
    assert (failed.returncode, failed.stdout, failed.stderr) == (3, "out\n", "oops\n")
    with pytest.raises(HpcjobError, match=r"`ls /no/such/dir` exited with 2:\n.*No such file"):
        shell.run(["ls", "/no/such/dir"])
    with pytest.raises(HpcjobError, match=r"did not answer within 0\.5 s"):
        shell.run(["sleep", "5"], timeout=0.5)
    env = shell.run(["sh", "-c", 'printf "%s" "$GREETING"'], env={"GREETING": "a b;$(c)"})
    assert env.stdout == "a b;$(c)"
    assert shell.connections_opened == 1
    assert ssh_login.sshd_log_since(offset).count("Accepted publickey for hpctest") == 1


def test_tcp_nodelay_is_on_and_can_be_turned_off(ssh_login: SSHLogin, shell: SSHShell) -> None:
    """paramiko leaves Nagle's algorithm on, which costs ~40 ms a command on loopback
    (TEST-CLUSTER-FACTS.md); hpcjob turns it off on its socket. What that saves is measured in
    bench/, not here."""
    shell.run(["true"])
    sock = shell.tcp_socket
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    with ssh_login.shell() as plain:  # the check can fail: without it, the option is off
        plain.tcp_nodelay = False
        plain.run(["true"])
        assert plain.tcp_socket is not None
        assert plain.tcp_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_quick_ack_is_on_and_can_be_turned_off(ssh_login: SSHLogin, shell: SSHShell) -> None:
    """sshd answers a command in several small writes, each held by Nagle until the client ACKs
    the one before, which Linux delays ~40 ms: hpcjob's socket ACKs at once after every read.
    The time it saves is measured in bench/remote.py, not here."""
    assert shell.run(["echo", "hi"]).stdout == "hi\n"
    assert isinstance(shell.tcp_socket, QuickAckSocket)
    with ssh_login.shell() as plain:
        plain.quick_ack = False
        assert plain.run(["echo", "hi"]).stdout == "hi\n"
        assert plain.tcp_socket is not None
        assert not isinstance(plain.tcp_socket, QuickAckSocket)


# ------------------------------------------------------------------------------- files
def test_files_match_local_shell(shell: SSHShell, remote_dir: str) -> None:
    local = LocalShell()
    data = secrets.token_bytes(300_000)
    shell.write_bytes(f"{remote_dir}/a/b.bin", data, mode=0o600) if shell.exists(
        f"{remote_dir}/a"
    ) else None
    shell.makedirs(f"{remote_dir}/a/deep/deeper/deepest")
    shell.makedirs(f"{remote_dir}/a")  # exists: fine
    shell.write_bytes(f"{remote_dir}/a/b.bin", data, mode=0o600)
    shell.write_bytes(f"{remote_dir}/top.txt", b"top\n")
    shell.write_bytes(f"{remote_dir}/a/deep/x.txt", b"x")
    shell.write_bytes(f"{remote_dir}/a/deep/deeper/too-deep.txt", b"no")
    shell.write_bytes(f"{remote_dir}/a/deep/deeper/deepest/far.txt", b"no")
    os.symlink(f"{remote_dir}/top.txt", f"{remote_dir}/link.txt")
    assert shell.read_bytes(f"{remote_dir}/a/b.bin") == data
    assert shell.read_bytes(f"{remote_dir}/a/b.bin", 1000, 5000) == data[1000:6000]
    assert shell.read_bytes(f"{remote_dir}/a/b.bin", len(data) + 5) == b""
    assert Path(f"{remote_dir}/a/b.bin").stat().st_mode & 0o777 == 0o600
    assert Path(f"{remote_dir}/a/b.bin").owner() == "hpctest"
    for depth in (0, 1, 2, 5):
        assert shell.list_files(remote_dir, depth) == local.list_files(remote_dir, depth)
    assert ("link.txt", 4) in shell.list_files(remote_dir)
    assert shell.list_files(f"{remote_dir}/missing") == local.list_files(f"{remote_dir}/missing")
    assert shell.size(f"{remote_dir}/a/b.bin") == len(data)
    assert shell.size(f"{remote_dir}/nothing") is None and not shell.exists(f"{remote_dir}/nope")
    with pytest.raises(FileNotFoundError):
        shell.read_bytes(f"{remote_dir}/nothing")
    with pytest.raises(FileNotFoundError):
        shell.write_bytes(f"{remote_dir}/no/such/folder/file", b"")
    with pytest.raises(FileExistsError):
        shell.makedirs(f"{remote_dir}/top.txt/sub")
    assert shell.expand_home("~/x") == "/home/hpctest/x" and shell.expand_home("/abs") == "/abs"
    assert not [p for p, _ in local.list_files(remote_dir, 5) if ".tmp-" in p]
    assert shell.connections_opened == 1


def test_write_is_atomic_for_a_concurrent_reader(
    ssh_login: SSHLogin, shell: SSHShell, remote_dir: str
) -> None:
    path = f"{remote_dir}/big.bin"
    versions = [bytes([n]) * 2_000_000 for n in range(3)]
    shell.write_bytes(path, versions[0])
    done = threading.Event()

    def writer() -> None:
        n = 0
        while not done.is_set():
            n += 1
            shell.write_bytes(path, versions[n % 3])

    seen = set()
    with ssh_login.shell() as reader:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            # At least 12 reads, more until a rewrite was seen: on a busy machine the writer's
            # first rewrite may take longer than 12 reads (the deadline only bounds a hang).
            deadline, reads = time.monotonic() + 180, 0
            while reads < 12 or (len(seen) < 2 and time.monotonic() < deadline):
                reads += 1
                data = reader.read_bytes(path)
                assert data in versions, f"a partial file: {len(data)} bytes"
                seen.add(data[:1])
        finally:
            done.set()
            thread.join()
    assert len(seen) >= 2


def test_write_files_is_one_command_and_no_sftp(ssh_login: SSHLogin, remote_dir: str) -> None:
    files = {
        "job.sh": (b"#!/bin/bash\necho hi\n", 0o755),
        "run.json": (b"{}", 0o644),
        **{f"workload/m{i}.py": (secrets.token_bytes(20_000), 0o644) for i in range(9)},
    }
    name = posixpath.basename(remote_dir)
    with ssh_login.shell() as fresh:
        fresh.write_files(f"~/{name}/run", files)  # "~/…": expanded over there, no SFTP
        assert fresh.stats()["commands"] == 1 and fresh.stats()["sftp_requests"] == 0
        fresh.write_files(f"{remote_dir}/run", {"job.sh": (b"second\n", 0o755)})
        assert fresh.stats()["round_trips"] == 2
    root = Path(remote_dir) / "run"
    for rel, (data, mode) in files.items():
        path = root / rel
        assert path.read_bytes() == (b"second\n" if rel == "job.sh" else data), rel
        assert path.stat().st_mode & 0o777 == mode and path.owner() == "hpctest", rel
    assert (root / "workload").stat().st_mode & 0o777 == 0o700
    assert not [p for p in root.iterdir() if p.name.startswith(".hpcjob-stage")]
    Path(remote_dir, "file").write_text("in the way")
    with ssh_login.shell() as fresh, pytest.raises(HpcjobError, match="Writing files to"):
        fresh.write_files(f"{remote_dir}/file/run", {"a": (b"", 0o644)})


def test_server_without_sftp_gets_a_plain_error(ssh_login: SSHLogin, tmp_path: Path) -> None:
    """A second sshd, the test one without its sftp subsystem: commands work, and file access
    says what is missing instead of a traceback."""
    state = Path(ssh_login.cluster["HPCJOB_TEST_CLUSTER_DIR"])
    base = (state / "sshd" / "sshd_config").read_text().splitlines()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kept = [line for line in base if not line.startswith(("Port ", "PidFile ", "Subsystem "))]
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([*kept, f"Port {port}", f"PidFile {tmp_path}/sshd.pid", ""]))
    server = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
                return True
            return False

        wait_until(listening, "the second sshd listening", tick_s=0.05)
        known = known_hosts_for_port(ssh_login.cluster, port, tmp_path / "known_hosts")
        with ssh_login.shell(port=port, known_hosts=str(known)) as shell:
            assert shell.run(["echo", "ok"]).stdout == "ok\n"
            with pytest.raises(HpcjobError, match="refused an SFTP session") as caught:
                shell.expand_home("~/x")
            assert "Subsystem sftp" in (caught.value.hint or "")
    finally:
        server.terminate()
        server.wait(timeout=10)


# ------------------------------------------------------------------------ Slurm over SSH
def test_submit_poll_output_and_cancel_through_slurm_scheduler(
    shell: SSHShell, remote_dir: str
) -> None:
    scheduler = SlurmScheduler(shell, address="x")
    assert "rome" in {p.name for p in scheduler.partitions()}
    script = f"{remote_dir}/job.sh"
    shell.write_bytes(
        script,
        b"#!/bin/bash\n#SBATCH --time=2\n#SBATCH --partition=rome\n#SBATCH --output=out-%j.txt\n"
        b'echo "hello from $SLURM_JOB_ID on $(hostname)"\n',
        mode=0o755,
    )
    token = f"hpcjob-ssh-{uuid.uuid4().hex[:12]}"
    job_id = scheduler.submit(script, token=token, workdir=remote_dir)
    assert scheduler.find_by_token(token) == job_id
    sleeper = f"{remote_dir}/sleep.sh"
    # A job that never ends on its own: only the cancel ends it.
    shell.write_bytes(sleeper, b"#!/bin/bash\n#SBATCH --time=2\nsleep infinity\n", mode=0o755)
    other = scheduler.submit(sleeper, token=f"{token}-b", workdir=remote_dir)
    scheduler.cancel([other])

    def both_ended() -> dict[str, Any] | None:
        infos = scheduler.poll([job_id, other])
        done = len(infos) == 2 and all(i.state.is_final for i in infos.values())
        return infos if done else None

    infos = wait_until(both_ended, "both jobs ended", tick_s=1)
    # (exit_code is the scheduler's business: sacct may not have it on the first final record)
    assert infos[job_id].state is JobState.COMPLETED
    assert infos[other].state is JobState.CANCELLED
    output = shell.read_bytes(f"{remote_dir}/out-{job_id}.txt").decode()
    assert output.startswith(f"hello from {job_id} on ")
    assert shell.connections_opened == 1
    print(f"\nsubmit+poll+cancel over SSH: {shell.stats()}")


# ------------------------------------------------------------------------------ host keys
def test_unknown_host_key_is_refused_with_its_fingerprint(
    ssh_login: SSHLogin, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    offset = ssh_login.sshd_log_offset()
    shell = ssh_login.shell(known_hosts=str(empty))
    with pytest.raises(HpcjobError) as refused:
        shell.run(["true"])
    text = str(refused.value)
    assert "[127.0.0.1]:2222 is not known" in text
    assert f"ED25519 key fingerprint is {host_key_fingerprint(ssh_login.cluster)}" in text
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {empty}" in text and "hpcjob connect" in text
    assert shell.auth_attempts == 0 and empty.read_text() == ""
    with pytest.raises(HpcjobError, match="is not known"):
        shell.exists("~")  # refused again without a new connection
    assert shell.connections_opened == 1
    assert "Accepted" not in ssh_login.sshd_log_since(offset)


def test_connect_and_trust_writes_known_hosts_only_on_yes(
    ssh_login: SSHLogin, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    profile = {**ssh_login.profile, "known_hosts": str(known)}
    questions: list[str] = []

    def say(answer: bool) -> Any:
        def confirm(question: str) -> bool:
            questions.append(question)
            return answer

        return confirm

    with pytest.raises(HpcjobError, match="was not accepted; nothing was written"):
        connect_and_trust(
            profile, ConnectOptions(ssh_config_path=ssh_login.ssh_config, confirm=say(False))
        )
    assert not known.exists() or known.read_text() == ""
    fingerprint = host_key_fingerprint(ssh_login.cluster)
    assert fingerprint in questions[0]
    report = connect_and_trust(
        profile, ConnectOptions(ssh_config_path=ssh_login.ssh_config, confirm=say(True))
    )
    assert report.home == "/home/hpctest" and len(report.trusted) == 1
    assert known.read_text().startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    # Known now: no question, and a plain shell connects.
    again = connect_and_trust(
        profile, ConnectOptions(ssh_config_path=ssh_login.ssh_config, confirm=say(True))
    )
    assert again.trusted == () and len(questions) == 2
    with ssh_login.shell(known_hosts=str(known)) as shell:
        assert shell.run(["whoami"]).stdout == "hpctest\n"


def test_changed_host_key_is_refused_loudly(ssh_login: SSHLogin, tmp_path: Path) -> None:
    impostor = other_ed25519(tmp_path, "impostor")
    public = Path(f"{impostor}.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"# mine\n[127.0.0.1]:2222 {public[0]} {public[1]}\n")
    shell = ssh_login.shell(known_hosts=str(known))
    with pytest.raises(HpcjobError) as refused:
        shell.run(["true"])
    text = str(refused.value)
    assert "HAS CHANGED" in text and "man-in-the-middle" in text
    assert f"{known} line 2" in text
    assert f"ssh-keygen -R '[127.0.0.1]:2222' -f {known}" in text
    assert host_key_fingerprint(ssh_login.cluster) in text
    assert shell.auth_attempts == 0


# ------------------------------------------------------------------------------ logging in
def test_wrong_key_is_reported_and_not_retried(ssh_login: SSHLogin, tmp_path: Path) -> None:
    wrong = other_ed25519(tmp_path, "id_wrong")
    offset = ssh_login.sshd_log_offset()
    asked: list[str] = []
    # A terminal is there, but this sshd takes no passwords: nothing is asked.
    shell = ssh_login.shell(identity_file=str(wrong), prompt=asked.append, interactive=True)
    with pytest.raises(HpcjobError) as refused:
        shell.run(["squeue"], idempotent=True)
    assert asked == []
    text = str(refused.value)
    assert "Could not log in to 127.0.0.1 port 2222 as hpctest" in text
    assert str(wrong) in text and "does not try again" in text
    with pytest.raises(HpcjobError, match="Could not log in"):
        shell.read_bytes("~/.profile")  # every later operation: the same answer, no new login
    assert (shell.connections_opened, shell.auth_attempts) == (1, 1)
    log = ssh_login.sshd_log_since(offset)
    assert log.count("Failed publickey for hpctest") == 1
    assert len(re.findall(r"Connection from 127\.0\.0\.1", log)) == 1


def test_encrypted_key_asks_its_passphrase_once(ssh_login: SSHLogin) -> None:
    cluster = ssh_login.cluster
    passphrase = Path(cluster["HPCJOB_TEST_SSH_KEY_PASSPHRASE_FILE"]).read_text().strip()
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return passphrase

    key = cluster["HPCJOB_TEST_SSH_KEY_ENCRYPTED"]
    with ssh_login.shell(identity_file=key, prompt=prompt, interactive=True) as shell:
        assert shell.run(["whoami"]).stdout == "hpctest\n"
        shell.close()  # a new connection reuses the decrypted key
        assert shell.run(["whoami"]).stdout == "hpctest\n"
        assert shell.connections_opened == 2
    assert asked == [f"Passphrase for key {key}: "]
    # No terminal: not asked, and the message says why.
    shell = ssh_login.shell(identity_file=key, prompt=prompt)
    with pytest.raises(HpcjobError, match="needs its passphrase and there is no terminal"):
        shell.run(["true"])
    # A wrong passphrase: refused here, nothing offered to the server.
    shell = ssh_login.shell(identity_file=key, prompt=lambda _: "wrong", interactive=True)
    with pytest.raises(HpcjobError, match=r"passphrase for .* is not right"):
        shell.run(["true"])
    assert shell.auth_attempts == 0 and len(asked) == 1


def test_ssh_agent_key(ssh_login: SSHLogin, tmp_path: Path, monkeypatch: Any) -> None:
    if shutil.which("ssh-agent") is None:
        pytest.skip("ssh-agent is not installed")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, "ssh-agent's socket", tick_s=0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", "-q", ssh_login.cluster["HPCJOB_TEST_SSH_KEY"]], env=env, check=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with ssh_login.shell(identity_file=None) as shell:  # nothing but the agent
            assert shell.run(["whoami"]).stdout == "hpctest\n"
            assert shell.auth_attempts == 1
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_proxyjump_chain_through_direct_tcpip(ssh_login: SSHLogin) -> None:
    cluster = ssh_login.cluster
    block = (
        f"    HostName 127.0.0.1\n    Port 2222\n    User hpctest\n"
        f"    IdentityFile {cluster['HPCJOB_TEST_SSH_KEY']}\n"
    )
    config = (
        f"Host cluster\n{block}    ProxyJump jump1,jump2\n"
        f"Host jump1\n{block}Host jump2\n{block}"
        f"Host *\n    UserKnownHostsFile {cluster['HPCJOB_TEST_KNOWN_HOSTS']}\n"
        "    GlobalKnownHostsFile none\n"
    )
    with ssh_login.shell(
        ssh_config_text=config,
        host="cluster",
        port=None,
        user=None,
        identity_file=None,
        known_hosts=None,
    ) as shell:
        assert len(shell.target.hops) == 3
        assert shell.run(["sh", "-c", "echo $SSH_CLIENT"]).stdout.startswith("127.0.0.1 ")
        assert shell.exists("~/.profile")
        # Three SSH connections (two jumps), two direct-tcpip channels, one exec, one SFTP.
        assert (shell.connections_opened, shell.channels_opened) == (3, 4)
    unreachable = config.replace("Host jump2\n", "Host jump2\n    Port 1\n", 1)
    shell = ssh_login.shell(
        ssh_config_text=unreachable,
        host="cluster",
        port=None,
        user=None,
        identity_file=None,
        known_hosts=None,
    )
    with pytest.raises(
        HpcjobError, match=r"jump host 127\.0\.0\.1 could not reach 127\.0\.0\.1 port 1"
    ):
        shell.run(["true"], idempotent=True)
    assert shell.connections_opened == 1  # jump1 only: it could not reach jump2


# ------------------------------------------------------------------------- faults, noise
def test_dropped_connection_is_recovered_for_reads(shell: SSHShell, remote_dir: str) -> None:
    path = f"{remote_dir}/log.txt"
    shell.write_bytes(path, b"line 1\n")
    offset = 0
    for n in range(2, 5):
        offset += len(shell.read_bytes(path, offset))
        drop_connection(shell)  # as a flaky network would, while `logs --follow` reads
        with open(path, "a") as handle:
            handle.write(f"line {n}\n")
        assert shell.read_bytes(path, offset) == f"line {n}\n".encode()
    assert shell.connections_opened == 4
    assert shell.run(["squeue", "--me"], idempotent=True).returncode == 0


def test_lost_command_is_not_run_again_unless_idempotent(shell: SSHShell, remote_dir: str) -> None:
    """The connection is cut while a command demonstrably runs: it has written its line and
    waits for a file that the test creates only afterwards."""
    counter = Path(remote_dir) / "runs"

    def command(word: str, gate: str) -> list[str]:
        return ["sh", "-c", f"echo {word} >> {counter}; until [ -e {remote_dir}/{gate} ]; "
                "do sleep 0.05; done"]  # fmt: skip

    def lines() -> str:
        return counter.read_text() if counter.exists() else ""

    def cut_once_started() -> None:
        wait_until(lambda: lines() == "x\n", "the command's line")
        drop_connection(shell)

    def cut_then_release() -> None:
        wait_until(lambda: lines() == "x\ny\n", "the command's line")
        drop_connection(shell)
        wait_until(lambda: lines() == "x\ny\ny\n", "the command run again")
        Path(remote_dir, "go-y").touch()

    shell.run(["true"])
    with ThreadPoolExecutor(1) as helper:
        cutting = helper.submit(cut_once_started)
        with pytest.raises(HpcjobError, match="may or may not have run, and hpcjob did not run it"):
            shell.run(command("x", "go-x"), timeout=300)
        cutting.result(timeout=300)
        Path(remote_dir, "go-x").touch()  # the first command, still waiting over there, ends
        assert lines() == "x\n"
        # After a lost connection, a new command reconnects first and runs once.
        assert shell.run(["cat", str(counter)]).stdout == "x\n"
        releasing = helper.submit(cut_then_release)
        shell.run(command("y", "go-y"), idempotent=True, timeout=300)
        releasing.result(timeout=300)
    assert lines() == "x\ny\ny\n"


def test_bashrc_noise_does_not_break_parsing(ssh_login: SSHLogin, shell: SSHShell) -> None:
    bashrc = Path("/home/hpctest/.bashrc")
    saved = bashrc.read_bytes()
    try:
        bashrc.write_bytes(
            b'echo "Welcome to the cluster! JOBID|JOBID|fake"\necho "noise on stderr" >&2\n' + saved
        )
        cluster = ssh_login.cluster
        plain = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", cluster["HPCJOB_TEST_SSH_PORT"], "-i",
             cluster["HPCJOB_TEST_SSH_KEY"], "-o", "BatchMode=yes", "-o",
             f"UserKnownHostsFile={cluster['HPCJOB_TEST_KNOWN_HOSTS']}",
             "hpctest@127.0.0.1", "squeue", "--me"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert plain.stdout.startswith("Welcome to the cluster!")  # the noise is really there
        result = shell.run(slurm.squeue_mine_argv())
        assert "Welcome" not in result.stdout and "noise" not in result.stderr
        assert result.stdout.startswith("JOBID|JOBID|")
        slurm.parse_squeue(result.stdout)
        assert SlurmScheduler(shell, address="x").partitions()
    finally:
        bashrc.write_bytes(saved)


def test_cli_full_cycle_over_ssh(
    cluster: dict[str, str], user_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hpcjob on 'a laptop' (this machine, as root) drives the test user's Slurm over SSH: submit,
    wait, logs, status, show and cancel all over one connection per command."""
    from tests.helpers import invoke

    home = tmp_path / "home"
    (home / "templates").mkdir(parents=True)
    write_config(home, ssh_profile(cluster, python=user_python))
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    (home / "templates" / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo "over ssh on $(hostname)"'
        "\n{% endblock %}"
    )
    done = invoke("submit", "gpu-check", "--wait", "--json")
    assert done.exit_code == 0, done.stderr
    run = done.json()
    assert run["state"] == "COMPLETED"
    assert run["run_dir"].startswith(f"/home/{cluster['HPCJOB_TEST_USER']}/hpcjob/runs/")
    assert "over ssh on" in invoke("logs", run["job_id"]).stdout
    assert [r["run_id"] for r in invoke("status", "--json").json()] == [run["run_id"]]
    (home / "templates" / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}sleep infinity\n{% endblock %}'
    )
    second = invoke("submit", "gpu-check", "--json").json()
    assert invoke("cancel", second["job_id"], "--json").exit_code == 0
    waited = invoke("wait", second["job_id"], "--json")
    assert waited.exit_code == 3 and waited.json()["state"] == "CANCELLED"


def test_a_dry_run_that_can_connect_checks_the_live_partitions(
    cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline a dry run checks what it can (tests/test_profiles_cli.py); connected, it checks
    everything: the live partitions, the run directory under the remote home."""
    from tests.helpers import invoke

    home = tmp_path / "home"
    write_config(home, ssh_profile(cluster))
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    refused = invoke("submit", "gpu-check", "-p", "nosuch", "--dry-run")
    assert refused.exit_code == 2, refused.stderr
    assert "Profile cluster: the job request has problems" in refused.stderr
    assert "the cluster has no partition 'nosuch'" in refused.stderr
    assert "Checked against the partitions cached" not in refused.stderr
    dry = invoke("submit", "gpu-check", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert dry.json()["not_checked"] == []
    assert dry.json()["run_dir"].startswith(f"/home/{cluster['HPCJOB_TEST_USER']}/hpcjob/runs/")
