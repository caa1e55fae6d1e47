"""Faults hpcjob survives, each on the real test cluster: sshd stopped mid-command, a connection
dropped during a transfer, slurmctld restarted while jobs run and hpcjob polls, slurmdbd down,
a full or read-only run directory and HPCJOB_HOME, a damaged or locked ledger, and the embedded
scheduler's runner killed.

Daemons are stopped with tests/cluster/lib.sh's `stop_ours` and always brought back by
tests/cluster/start.sh in a `finally`. Run these under the cluster lock (they disturb the others):
    flock /tmp/hpcjob-cluster.lock .venv/bin/pytest tests/integration/test_faults.py
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (
    REPO,
    SSHLogin,
    UserSession,
    Valve,
    alive,
    client_ports,
    jobs_with_token,
    known_hosts_for_port,
    ledger_rows,
    ssh_hpcjob,
    sshd_pids_serving,
    wait_until,
)

pytestmark = [pytest.mark.slurm]

LIB = REPO / "tests" / "cluster" / "lib.sh"


# ------------------------------------------------------------------------------- helpers


def stop_daemon(name: str) -> None:
    subprocess.run(["bash", "-c", f'source "{LIB}" && stop_ours "{name}"'], check=True, timeout=60)


def restore_cluster() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "tests" / "cluster" / "start.sh")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@contextmanager
def daemon_down(name: str) -> Iterator[None]:
    """`name` stopped for the block; the cluster is whole again afterwards, whatever happened."""
    try:
        stop_daemon(name)
        yield
    finally:
        restore_cluster()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def integrity(home: Path) -> str:
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def clean_failure(result: Any, *phrases: str, code: int = 1) -> None:
    """Exit `code` with an `Error:` the user can read, and no traceback."""
    got, err = (result.exit_code, result.stderr) if hasattr(result, "exit_code") else result
    assert got == code, err
    assert "Traceback" not in err and err.startswith("Error: "), err
    for phrase in phrases:
        assert phrase in err, err


def wait_state(user: UserSession, ref: str, states: set[str]) -> dict[str, Any]:
    def shown() -> dict[str, Any] | None:
        result = user.hpcjob("show", ref, "--json")
        assert result.exit_code == 0, result.stderr
        run: dict[str, Any] = result.json()
        return run if run["state"] in states else None

    return wait_until(shown, f"run {ref} in {sorted(states)}", tick_s=1)


# A job that ends only once the test creates `release` in its run directory.
GATED = 'until [ -e "$HPCJOB_RUN_DIR/release" ]; do sleep 0.2; done; echo {word}'


def release(user: UserSession, run: dict[str, Any]) -> None:
    done = user.as_user("touch", f"{run['run_dir']}/release")
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------- sshd


@pytest.mark.ssh
def test_sshd_stopped_while_wait_polls_over_it(
    user: UserSession, ssh_login: SSHLogin, user_python: str, tmp_path: Path
) -> None:
    laptop = ssh_hpcjob(user.cluster, ssh_login, user_python, tmp_path / "laptop")
    (laptop.home / "templates").mkdir()
    (laptop.home / "templates" / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}'
        + GATED.format(word="survived")
        + "\n{% endblock %}"
    )
    run = laptop.json("submit", "gpu-check")
    waiting = laptop.start("wait", run["run_id"], "--json")
    port = int(user.cluster["HPCJOB_TEST_SSH_PORT"])
    # The wait's own connection, found once it is open (its sshd processes serve it).
    sessions = wait_until(
        lambda: [
            pid for c in client_ports(waiting.pid, port) for pid in sshd_pids_serving(c, port)
        ],
        "the wait's SSH connection",
    )
    with daemon_down("sshd"):
        for pid in sessions:  # the connection is cut, and no new one can be made
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _out, err = waiting.communicate(timeout=300)
        clean_failure((waiting.returncode, err), "127.0.0.1")
        before = ledger_rows(laptop.home)
        status = laptop.run("status", "--json")
        clean_failure((status[0], status[2]), "127.0.0.1")
        assert ledger_rows(laptop.home) == before  # a failed refresh changes nothing
        assert integrity(laptop.home) == "ok"
        assert before[0]["state"] in ("PENDING", "RUNNING")  # the job cannot end by itself
        # Let it end before sshd is back (start.sh checks the cluster with a job of its own).
        release(user, run)
    code, out, err = laptop.run("wait", run["run_id"], "--json", timeout=300)
    assert code == 0, err
    assert json.loads(out)["state"] == "COMPLETED"
    assert len(ledger_rows(laptop.home)) == 1


# ------------------------------------------------------------------------------- transfers


@pytest.mark.ssh
def test_connection_dropped_during_a_transfer(ssh_login: SSHLogin, tmp_path: Path) -> None:
    """The shell reaches sshd through a Valve: each transfer is held after 4 MiB of its 24 MiB
    (so it is certainly mid-way), and then the connection is cut."""
    data = os.urandom(24 * 1024 * 1024)
    cluster = ssh_login.cluster
    sshd_port = int(cluster["HPCJOB_TEST_SSH_PORT"])
    # The Valve closes first: nothing the helper runs can then be left waiting on it.
    with ThreadPoolExecutor(1) as helper, Valve(sshd_port) as valve:
        hosts = known_hosts_for_port(cluster, valve.port, tmp_path / "known_hosts")
        with ssh_login.shell(port=valve.port, known_hosts=str(hosts)) as shell:
            folder = Path(shell.expand_home(f"~/hpcjob-fault-{os.getpid()}"))
            shell.makedirs(str(folder))  # the SFTP session is open: the connection is idle now
            path = folder / "big.bin"
            try:
                # Writing: the retry writes the whole file again, and at no moment does the
                # final name hold part of it.
                seen: list[int] = []
                watching = threading.Event()

                def watch() -> None:
                    while not watching.is_set():
                        with contextlib.suppress(OSError):
                            seen.append(path.stat().st_size)
                        time.sleep(0.005)

                watcher = threading.Thread(target=watch)
                watcher.start()
                link = valve.hold_after("up", 4 * 1024 * 1024)
                writing = helper.submit(shell.write_bytes, str(path), data)
                try:
                    wait_until(link.held.is_set, "the upload held", tick_s=0.05)
                    partial = wait_until(
                        lambda: [p for p in folder.glob(".big.bin.tmp-*") if p.stat().st_size],
                        "part of the upload on disk",
                    )
                    assert not path.exists() and partial[0].stat().st_size < len(data)
                    valve.cut()
                    writing.result(timeout=300)
                finally:
                    watching.set()
                    watcher.join()
                assert shell.connections_opened == 2
                assert set(seen) <= {len(data)}, (
                    f"a partial file was visible: {sorted(set(seen))[:3]}"
                )
                assert path.read_bytes() == data
                # Reading: cut mid-way, the read is done again; a short read is never returned.
                link = valve.hold_after("down", 4 * 1024 * 1024)
                reading = helper.submit(shell.read_bytes, str(path))
                wait_until(link.held.is_set, "the download held", tick_s=0.05)
                valve.cut()
                assert reading.result(timeout=300) == data
                assert shell.connections_opened == 3
            finally:
                shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------- slurmctld


def test_slurmctld_restarted_while_jobs_run_and_hpcjob_polls(user: UserSession) -> None:
    user.template("gpu-check", GATED.format(word="finished"))
    first = user.hpcjob("submit", "gpu-check", "--json").json()
    second = user.hpcjob("submit", "gpu-check", "--json").json()
    wait_state(user, first["run_id"], {"RUNNING"})
    # The wait's squeue goes through a shim that writes down how each call ended.
    shims, calls = user.home / "shims", user.home / "squeue-calls"
    shims.mkdir()
    (shims / "squeue").write_text(
        f'#!/bin/sh\n/usr/bin/squeue "$@"\nrc=$?\necho $rc >> {calls}\nexit $rc\n'
    )
    (shims / "squeue").chmod(0o755)

    def polls() -> list[str]:
        return calls.read_text().split() if calls.exists() else []

    path = f"{shims}:/usr/local/bin:/usr/bin:/bin"
    waiting = subprocess.Popen(
        user.argv("wait", first["run_id"], "--json", extra_env={"PATH": path}),
        cwd=user.workdir, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_until(lambda: "0" in polls(), "the wait's first poll")
    with daemon_down("slurmctld"):
        down = user.hpcjob("status", "--json")
        clean_failure(down, "squeue")  # says what failed, in words
        assert integrity(user.home) == "ok"
        states = {r["run_id"]: r["state"] for r in ledger_rows(user.home)}
        assert states[first["run_id"]] == "RUNNING"  # a failed poll changes nothing
        # The wait has met the controller down (hpcjob waits out 30 s of failed polls).
        wait_until(lambda: set(polls()) - {"0"}, "a failed poll of the wait", guard_s=300)
        # The jobs may end now: they free rome's cores for start.sh's own check job.
        for run in (first, second):
            release(user, run)
    out, err = waiting.communicate(timeout=300)  # the wait rode through the restart
    assert waiting.returncode == 0, err
    assert "Traceback" not in err
    assert json.loads(out)["state"] == "COMPLETED"
    assert wait_state(user, second["run_id"], {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    for run in (first, second):
        assert jobs_with_token(user, ledger_token(user, run["run_id"])) == {run["job_id"]}


def ledger_token(user: UserSession, run_id: str) -> str:
    (row,) = [r for r in ledger_rows(user.home) if r["run_id"] == run_id]
    return str(row["token"])


# ------------------------------------------------------------------------------- slurmdbd


def test_slurmdbd_down_status_falls_back_and_recovers(user: UserSession) -> None:
    user.template("gpu-check", "echo without accounting; exit 0")
    with daemon_down("slurmdbd"):
        submitted = user.hpcjob("submit", "gpu-check", "--wait", "--json", timeout=300)
        assert submitted.exit_code == 0, submitted.stderr
        run = submitted.json()
        assert (run["state"], run["exit_code"]) == ("COMPLETED", 0)
        status = user.hpcjob("status", "--json")
        assert status.exit_code == 0, status.stderr
        assert "accounting (sacct) is not answering" in status.stderr
        assert "sacct_elapsed_s" not in user.hpcjob("show", run["run_id"], "--json").json()["facts"]

    def accounted() -> Any:  # back: the accounting record is fetched after all
        status = user.hpcjob("status", "--json")
        assert status.exit_code == 0 and "Traceback" not in status.stderr
        facts = user.hpcjob("show", run["run_id"], "--json").json()["facts"]
        return status if "sacct_elapsed_s" in facts else None

    status = wait_until(accounted, "the accounting record", guard_s=300, tick_s=3)
    assert "not answering" not in status.stderr


# ------------------------------------------------------------------------------- disks


@contextmanager
def small_disk(
    where: Path, owner: str, size: str = "256k", read_only: bool = False
) -> Iterator[Path]:
    """A tiny tmpfs (or a read-only bind mount of an empty folder) at `where`, for the block."""
    where.mkdir(parents=True, exist_ok=True)
    if read_only:
        subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], check=True)  # fmt: skip
        shutil.chown(where, owner)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, owner: str) -> None:
    """Fill a filesystem to the last byte, as the test user would."""
    subprocess.run(
        ["runuser", "-u", owner, "--", "sh", "-c", f"cat /dev/zero > {folder}/filler"],
        capture_output=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_run_directory_full_or_read_only(user: UserSession, kind: str) -> None:
    owner = user.cluster["HPCJOB_TEST_USER"]
    mount = user.home / f"disk-{kind}"
    with small_disk(mount, owner, read_only=kind == "read-only"):
        if kind == "full":
            fill(mount, owner)
        result = user.hpcjob("submit", "gpu-check", "--json",
                             extra_env={"HPCJOB_REMOTE_ROOT": str(mount / "runs")})  # fmt: skip
        why = "No space left on device" if kind == "full" else "Read-only file system"
        clean_failure(result, "Could not stage", why)
        (row,) = ledger_rows(user.home)
        assert row["state"] == "UNSUBMITTED" and why in row["reason"]
        assert jobs_with_token(user, row["token"]) == set()
        assert integrity(user.home) == "ok"
        shown = user.hpcjob("runs", "--json").json()
        assert [r["state"] for r in shown] == ["UNSUBMITTED"]


def test_hpcjob_home_full(user: UserSession) -> None:
    owner = user.cluster["HPCJOB_TEST_USER"]
    home = user.home / "full-home"
    with small_disk(home, owner, size="1m"):
        env = {"HPCJOB_HOME": str(home), "HPCJOB_REMOTE_ROOT": str(user.home / "runs")}
        assert user.hpcjob("runs", "--json", extra_env=env).exit_code == 0  # ledger created
        fill(home, owner)
        before = sha256(home / "ledger.db")
        result = user.hpcjob("submit", "gpu-check", "--json", extra_env=env)
        clean_failure(result)
        assert "full" in result.stderr.lower() or "No space" in result.stderr
        assert sha256(home / "ledger.db") == before
        (home / "filler").unlink()
        assert integrity(home) == "ok"
        again = user.hpcjob("submit", "gpu-check", "--json", extra_env=env)
        assert again.exit_code == 0, again.stderr


# ------------------------------------------------------------------------------- the ledger


def test_damaged_ledger_is_reported_and_never_overwritten(user: UserSession) -> None:
    ledger = user.home / "ledger.db"
    assert user.hpcjob("runs", "--json").exit_code == 0
    ledger.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    before = sha256(ledger)
    for args in (["status"], ["runs", "--json"], ["submit", "gpu-check"], ["show", "last"],
                 ["ledger", "check"], ["ledger", "backup"]):  # fmt: skip
        clean_failure(user.hpcjob(*args), "is damaged", "has not changed it")
    assert sha256(ledger) == before


def test_ledger_damaged_inside_is_found_by_check(user: UserSession) -> None:
    user.template("gpu-check", "true")
    env = {"HPCJOB_PROFILE": "local"}
    for _ in range(6):
        assert user.hpcjob("submit", "gpu-check", "--json", extra_env=env).exit_code == 0
    ledger = user.home / "ledger.db"
    checked = user.hpcjob("ledger", "check", "--json")
    assert checked.exit_code == 0 and checked.json()["ok"] is True
    assert checked.json()["mode"] == "0o600"
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    with open(ledger, "r+b") as handle:  # scribble over the last page (a table's leaf)
        handle.seek((pages - 1) * 4096)
        handle.write(os.urandom(4096))
    before = sha256(ledger)
    result = user.hpcjob("ledger", "check")
    clean_failure(result)
    assert "is damaged" in result.stderr or "has problems" in result.stderr
    runs = user.hpcjob("runs", "--json", extra_env=env)
    assert "Traceback" not in runs.stderr
    assert runs.exit_code in (0, 1)
    assert sha256(ledger) == before


def test_locked_ledger_waits_then_says_so(user: UserSession) -> None:
    env = {"HPCJOB_PROFILE": "local"}
    user.template("gpu-check", "true")
    assert user.hpcjob("submit", "gpu-check", "--wait", "--json", extra_env=env).exit_code == 0
    ledger = user.home / "ledger.db"
    # It holds the lock until the test lets it go (kills it), however long the test takes.
    holder = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-c",
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(ledger)!r}, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        reads = user.hpcjob("runs", "--json", extra_env=env)  # readers never wait (WAL)
        assert reads.exit_code == 0 and len(reads.json()) == 1
        started = time.monotonic()
        blocked = user.hpcjob("submit", "gpu-check", "--json", extra_env=env)
        # It waited for the lock (hpcjob's busy timeout is 30 s) instead of failing at once: a
        # lower bound, which a slow machine only makes longer.
        assert time.monotonic() - started >= 25
        clean_failure(blocked, "stayed locked by another process")
        backup = user.hpcjob("ledger", "backup", "--json")  # an online backup still works
        assert backup.exit_code == 0, backup.stderr
        copy = Path(backup.json()["backup"])
        assert backup.json()["runs"] == 1 and copy.stat().st_mode & 0o777 == 0o600
    finally:
        holder.kill()
        holder.wait()
    again = user.hpcjob("submit", "gpu-check", "--json", extra_env=env)
    assert again.exit_code == 0, again.stderr
    assert len(ledger_rows(user.home)) == 2  # the refused submit left no row


def test_backup_while_submits_run(user: UserSession) -> None:
    env = {"HPCJOB_PROFILE": "local"}
    user.template("gpu-check", "true")
    assert user.hpcjob("submit", "gpu-check", "--json", extra_env=env).exit_code == 0
    procs = [subprocess.Popen(user.argv("submit", "gpu-check", "--json", extra_env=env),
                              cwd=user.workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(6)]  # fmt: skip
    copies = []
    for n in range(3):
        out = user.home / f"copy-{n}.sqlite"
        result = user.hpcjob("ledger", "backup", "--out", str(out), "--json")
        assert result.exit_code == 0, result.stderr
        copies.append(result.json())
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    for copy in copies:
        assert copy["integrity"] == "ok" and copy["mode"] == "0o600"
    first = Path(copies[0]["backup"])
    before = sha256(first)
    again = user.hpcjob("ledger", "backup", "--out", str(first))
    clean_failure(again, "never overwrites", code=2)
    assert sha256(first) == before


# ------------------------------------------------------------------------------- embedded runner


def test_embedded_runner_killed_marks_the_job_failed(user: UserSession) -> None:
    env = {"HPCJOB_PROFILE": "local"}
    user.template("gpu-check", "echo started; sleep infinity")  # ends only when killed
    run = user.hpcjob("submit", "gpu-check", "--json", extra_env=env).json()
    record_path = user.home / "local" / "jobs" / f"{run['job_id']}.json"
    record = wait_until(
        lambda: (r := json.loads(record_path.read_text())).get("state") == "RUNNING" and r,
        "the job RUNNING",
    )
    supervisor = int(record["supervisor"]["pid"])
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(supervisor), "the runner gone")
    status = user.hpcjob("status", "--json", extra_env=env)
    assert status.exit_code == 0, status.stderr
    (row,) = [r for r in status.json() if r["run_id"] == run["run_id"]]
    assert row["state"] == "FAILED"
    assert "runner" in row["reason"] and "died" in row["reason"]
    pgid = record.get("pgid")
    if pgid:
        wait_until(
            lambda: not any(_in_group(pid, pgid) for pid in _pids()),
            "the job's processes gone with their runner",
        )


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid
