"""`hpcjob setup-env` over SSH SIGKILLed mid-install: the next `status` ends the login run.

The install is held mid-way by a package whose build waits for the test (support.GatedPackage),
so each step is an event: hpcjob is killed while pip demonstrably works; `status` then sees the
script still running; once the test lets the install go on, the script (its output now going
nowhere) ends, and the next `status` ends the run FAILED.

The sshd is this machine, so the test sees the script's processes and the venv on disk. The
offline twin (embedded/local shell) is tests/test_setup_env_killed.py.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from tests.helpers import invoke, status_of
from tests.integration.support import GatedPackage, alive, start_setup_env, wait_until

pytestmark = pytest.mark.ssh


def test_sigkilled_setup_env_over_ssh_ends_failed(
    remote_venv: tuple[Path, Path], cluster: dict[str, str]
) -> None:
    venv, requirements = remote_venv
    folder = Path(cluster["HPCJOB_TEST_SCRATCH"]) / f"gated-{uuid.uuid4().hex[:8]}"
    gated = GatedPackage.create(folder, cluster["HPCJOB_TEST_USER"])
    try:
        running = start_setup_env(requirements, gated)
        running.proc.kill()  # SIGKILL: no handler runs, nothing is recorded by hpcjob itself
        running.finish(timeout=60)
        killed = f"hpcjob was killed while setup-env ran (pid {running.proc.pid})"

        run_id = invoke("runs", "--json").json()[0]["run_id"]
        run, notes = status_of(run_id)
        # Told, not ended: the script still runs (held by the test) on the login node.
        assert run["state"] == "RUNNING", run
        assert killed in notes and "still runs on the login node" in notes, notes
        gated.release()
        run, notes = wait_until(
            lambda: (s := status_of(run_id))[0]["state"] != "RUNNING" and s, "the run ended"
        )
        assert (run["state"], run["reason"]) == ("FAILED", killed), (run, notes)
        pid = int((Path(run["run_dir"]) / "setup-env.pid").read_text().split()[0])
        assert not alive(pid)
        assert not (venv / ".hpcjob-env.json").exists()  # the venv stays marked unfinished
    finally:
        gated.release()
        shutil.rmtree(folder, ignore_errors=True)
