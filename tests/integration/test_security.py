"""Secrets planted around a full cycle on the real test cluster never reach hpcjob's artefacts.

Two ways in: hpcjob on the login node as the test user (local Slurm), and hpcjob on "a laptop"
driving the cluster over SSH with a passphrase-protected key whose passphrase is typed at a real
terminal (a pty). Then every artefact is scanned: the ledger (sqlite dump and raw file with WAL),
every file under HPCJOB_HOME (config, cache, locks), the run directories on the cluster (scripts,
run.json, job output, metrics, exit status), and the `--json` output of every command.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import SECRET_ENV, Result, artefacts, leaks, make_key, mode, needles
from tests.integration.support import UserSession, ssh_profile, wait_until, write_config

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
# A job that never ends on its own: the test cancels it.
SLEEPER = '{% extends "base.sbatch.j2" %}{% block command %}sleep infinity\n{% endblock %}'


def test_login_node_cycle_leaves_no_secret_and_private_files(
    user: UserSession, tmp_path: Path
) -> None:
    key, body = make_key(tmp_path, "PLANTED login passphrase 0007")
    env = {**SECRET_ENV, "HPCJOB_IDENTITY_FILE": str(key)}
    outputs: dict[str, bytes] = {}

    def run(*argv: str, codes: tuple[int, ...] = (0,)) -> Result:
        result = user.hpcjob(*argv, extra_env=env)
        assert result.exit_code in codes, (argv, result.stderr)
        outputs[" ".join(argv)] = (result.stdout + result.stderr).encode()
        return result

    run("config", "init")
    done = run("submit", "gpu-check", "--partition", "rome", "--wait", "--json").json()
    assert done["state"] == "COMPLETED"
    user.template("gpu-check", "sleep infinity")  # cancelled below
    sleeper = run("submit", "gpu-check", "--partition", "rome", "--json").json()
    run("status", "--json")
    run("runs", "--json")
    run("partitions", "--json")
    run("config", "show", "--json")
    for ref in (done["run_id"], sleeper["run_id"]):
        run("show", ref, "--json")
    run("logs", done["run_id"])
    run("cancel", sleeper["run_id"], "--json")
    run("wait", sleeper["run_id"], "--json", codes=(3,))

    blobs = {**artefacts(user.home), **{f"`{k}`": v for k, v in outputs.items()}}
    assert any("slurm-" in name for name in blobs)  # the job output was scanned
    assert not leaks(blobs, needles(body, "PLANTED login passphrase 0007"))
    # Private: the test user's ledger, config and run directories.
    assert mode(user.home / "ledger.db") == 0o600
    assert mode(user.home / "config.toml") == 0o600
    assert mode(Path(done["run_dir"])) == 0o700
    assert mode(user.home / "cache") == 0o700


def _hpcjob_at_a_terminal(
    argv: list[str], env: dict[str, str], answer: str, timeout: float = 300
) -> Result:
    """hpcjob at a real terminal (a pty for stdin and stderr; stdout captured apart): the
    passphrase is typed when its prompt shows (getpass flushes anything typed before)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcjob", *argv], stdin=slave, stdout=subprocess.PIPE,
        stderr=slave, env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()

    def read_screen() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the process closed the terminal
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    wait_until(
        lambda: b"Passphrase for key" in screen or proc.poll() is not None,
        "the passphrase prompt",
        tick_s=0.05,
    )
    if proc.poll() is None:
        os.write(master, answer.encode() + b"\n")
    out, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=5)
    os.close(master)
    return Result(proc.returncode, out.decode(errors="replace"), screen.decode(errors="replace"))


def test_ssh_cycle_with_a_typed_passphrase_leaves_no_secret(
    cluster: dict[str, str], user_python: str, tmp_path: Path
) -> None:
    passphrase = Path(cluster["HPCJOB_TEST_SSH_KEY_PASSPHRASE_FILE"]).read_text().strip()
    encrypted = cluster["HPCJOB_TEST_SSH_KEY_ENCRYPTED"]
    body = [
        ln for ln in Path(encrypted).read_text().splitlines() if ln and not ln.startswith("-----")
    ]
    home = tmp_path / "home"
    laptop = tmp_path / "laptop-home"
    (laptop / ".ssh").mkdir(parents=True)
    (home / "templates").mkdir(parents=True)
    write_config(home, ssh_profile(cluster, identity_file=encrypted, python=user_python))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(laptop),
        "HPCJOB_HOME": str(home),
        "HPCJOB_PROFILE": "cluster",
        **SECRET_ENV,
    }
    outputs: dict[str, bytes] = {}

    def run(*argv: str, codes: tuple[int, ...] = (0,)) -> Result:
        result = _hpcjob_at_a_terminal(list(argv), env, passphrase)
        assert result.exit_code in codes, (argv, result.stderr)
        outputs[" ".join(argv)] = (result.stdout + result.stderr).encode()
        return result

    submitted = run("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
    assert "Passphrase for key" in submitted.stderr  # typed at the terminal, not read from a file
    done = submitted.json()
    assert done["state"] == "COMPLETED"
    (home / "templates" / "gpu-check.sbatch.j2").write_text(SLEEPER)
    sleeper = run("submit", "gpu-check", "--partition", "rome", "--json").json()
    run("status", "--json")
    run("show", done["run_id"], "--json")
    run("logs", done["run_id"])
    run("cancel", sleeper["run_id"], "--json")
    run("wait", sleeper["run_id"], "--json", codes=(3,))
    run("partitions", "--json")
    run("config", "show", "--json")

    blobs = {**artefacts(home), **{f"`{k}`": v for k, v in outputs.items()}}
    for run_dir in (done["run_dir"], sleeper["run_dir"]):  # on the cluster (this machine)
        assert mode(Path(run_dir)) == 0o700
        blobs.update({str(p): p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file()})
    assert any(name.endswith(".out") for name in blobs)
    assert not leaks(blobs, [passphrase, *needles(body, passphrase)])
    assert mode(home / "ledger.db") == 0o600
    for run_dir in (done["run_dir"], sleeper["run_dir"]):
        shutil.rmtree(run_dir, ignore_errors=True)


def test_the_scan_sees_a_secret_a_job_prints(user: UserSession) -> None:
    """Not blind: a job that prints its environment does put the token into its output."""
    user.template("gpu-check", 'echo "token=$HF_TOKEN"')
    done = user.hpcjob(
        "submit", "gpu-check", "--partition", "rome", "--wait", "--json", extra_env=SECRET_ENV
    )
    assert done.exit_code == 0, done.stderr
    found = wait_until(
        lambda: leaks(artefacts(user.home), [SECRET_ENV["HF_TOKEN"]]),
        "the token in the job's output",
        tick_s=1,
    )
    assert all(done.json()["run_dir"] in f for f in found), found
