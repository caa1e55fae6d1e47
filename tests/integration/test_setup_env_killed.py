"""`hpcjob setup-env` over SSH SIGKILLed mid-install: the next `status` ends the login run.

The sshd is this machine, so the test sees the script's processes and the venv on disk. The
offline twin (embedded/local shell) is tests/test_setup_env_killed.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.integration.test_setup_env import remote, start_installing_torch  # noqa: F401

pytestmark = pytest.mark.ssh


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkilled_setup_env_over_ssh_ends_failed(remote: tuple[Path, Path]) -> None:  # noqa: F811
    venv, requirements = remote
    proc, _ = start_installing_torch(requirements)  # slow enough to kill hpcjob in
    proc.kill()  # SIGKILL: no handler runs, nothing is recorded by hpcjob itself
    proc.wait(timeout=30)
    killed = f"hpcjob was killed while setup-env ran (pid {proc.pid})"

    run = invoke("runs", "--json").json()[0]  # refreshes as status does
    notes = ""
    deadline = time.monotonic() + 60
    while run["state"] == "RUNNING":  # the script may outlive its hpcjob for a moment
        assert time.monotonic() < deadline, notes
        listed = invoke("status", "--json")
        notes = listed.stderr
        assert killed in notes, notes
        run = next(r for r in listed.json() if r["run_id"] == run["run_id"])
        if run["state"] == "RUNNING":  # told, not yet ended: the script is still there
            assert "still runs on the login node" in notes, notes
            time.sleep(1)
    shown = invoke("status", "--json")
    run = next(r for r in shown.json() if r["run_id"] == run["run_id"])
    assert (run["state"], run["reason"]) == ("FAILED", killed), run
    pid = int((Path(run["run_dir"]) / "setup-env.pid").read_text())
    assert not _alive(pid)
    assert not (venv / ".hpcjob-env.json").exists()  # the venv stays marked unfinished
