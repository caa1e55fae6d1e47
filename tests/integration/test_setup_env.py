"""`hpcjob setup-env` over SSH against the test sshd and Slurm: create, no-op, update, repair,
and the same script as a batch job. The venvs go under hpctest's home and are removed after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from tests.helpers import Result, invoke
from tests.integration.support import (
    GatedPackage,
    alive,
    setup_env_profile,
    start_setup_env,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.ssh

SYSTEM_PYTHON = "/usr/bin/python3"


def laptop_home() -> Path:
    """The HPCJOB_HOME remote_venv set up (this process's, as a laptop's)."""
    return Path(os.environ["HPCJOB_HOME"])


def setup_env(requirements: Path, *args: str) -> Result:
    result = invoke("setup-env", "--requirements", str(requirements), "--json", *args)
    assert result.exit_code == 0, result.stderr
    return result


def test_setup_env_over_ssh_creates_skips_updates_repairs(remote_venv: tuple[Path, Path]) -> None:
    venv, requirements = remote_venv
    created = setup_env(requirements).json()
    assert created["action"] == "create" and created["state"] == "COMPLETED"
    assert created["python_version"].startswith("3.")
    assert [(p["name"], p["ok"]) for p in created["packages"]] == [("six", True)]
    assert created["venv_files"] > 100 and created["venv_bytes"] > 0
    marker = json.loads((venv / ".hpcjob-env.json").read_text())
    assert len(marker["fingerprint"]) == 64
    runs = invoke("runs", "--json").json()
    assert [(r["run_id"], r["workload"], r["state"]) for r in runs] == [
        (created["run_id"], "setup-env", "COMPLETED")
    ]
    assert "HPCJOB-SETUP-ENV-RESULT" in invoke("logs", created["run_id"]).stdout

    marker_text = (venv / ".hpcjob-env.json").read_text()
    again = invoke("setup-env", "--requirements", str(requirements))
    assert again.exit_code == 0, again.stderr
    assert "up to date" in again.stdout
    # A no-op: it verified the venv and installed nothing.
    log = (Path(invoke("runs", "--json").json()[0]["run_dir"]) / "setup-env.log").read_text()
    assert "HPCJOB-SETUP-ENV-STEP venv verify" in log, log
    assert "HPCJOB-SETUP-ENV-STEP install" not in log, log
    assert (venv / ".hpcjob-env.json").read_text() == marker_text

    requirements.write_text("six\ntomli-w\n")
    updated = setup_env(requirements).json()
    assert updated["action"] == "update"
    assert [(p["module"], p["ok"]) for p in updated["packages"]] == [
        ("six", True),
        ("tomli_w", True),
    ]

    (venv / "bin" / "python").unlink()  # a broken venv
    repaired = setup_env(requirements).json()
    assert repaired["action"] == "repair" and (venv / "bin" / "python").exists()

    (venv / ".hpcjob-env.json").unlink()  # as an install killed halfway leaves it
    assert setup_env(requirements).json()["action"] == "repair"

    requirements.write_text("six\nno-such-package-hpcjob-xyz==1.0\n")
    failed = invoke("setup-env", "--requirements", str(requirements))
    assert failed.exit_code == 1
    assert "no-such-package-hpcjob-xyz==1.0 could not be installed" in failed.stderr
    assert not (venv / ".hpcjob-env.json").exists()  # never left looking healthy
    states = [r["state"] for r in invoke("runs", "--json").json()]
    assert states[0] == "FAILED" and states.count("COMPLETED") == 5


def test_setup_env_as_job_runs_through_slurm(remote_venv: tuple[Path, Path]) -> None:
    venv, requirements = remote_venv
    done = setup_env(requirements, "--as-job").json()
    assert done["state"] == "COMPLETED" and done["action"] == "create"
    assert (venv / ".hpcjob-env.json").exists()
    shown = invoke("show", done["run_id"], "--json").json()
    assert shown["job_id"].isdigit() and shown["scheduler"] == "slurm"


def test_jobs_run_in_the_venv_setup_env_made(remote_venv: tuple[Path, Path]) -> None:
    """Before setup-env, submit is refused (the venv has no python) with the fix; afterwards a
    job runs the venv's own Python, silently; a venv whose marker is gone is only a warning."""
    venv, requirements = remote_venv
    templates = Path(invoke("config", "show", "--json").json()["home"]) / "templates"
    templates.mkdir()
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}'
        "{{ python }} -c \"import sys; print('python:', sys.prefix)\"\n{% endblock %}"
    )
    early = invoke("submit", "gpu-check", "--partition", "rome", "--json")
    assert early.exit_code == 2, early.stderr
    assert "has no bin/python" in early.stderr and "hpcjob setup-env -P cluster" in early.stderr
    assert invoke("runs", "--json").json() == []
    setup_env(requirements)
    done = invoke("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
    assert done.exit_code == 0, done.stderr + invoke("logs", "last").stdout
    assert "setup-env" not in done.stderr
    assert f"python: {venv}" in invoke("logs", done.json()["job_id"]).stdout
    (venv / ".hpcjob-env.json").unlink()  # as an install killed halfway leaves it
    warned = invoke("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
    assert warned.exit_code == 0, warned.stderr
    assert "was not set up by hpcjob setup-env" in warned.stderr


def test_a_venv_another_user_owns_is_a_clear_error_and_stays_as_it_was(
    cluster: dict[str, str], remote_venv: tuple[Path, Path]
) -> None:
    """A venv another user made (root, here), readable by all: setup-env runs as the test user
    over the test sshd, where permissions bite as on a cluster. Updating it (its marker is for
    other requirements), repairing it (no marker) and making a venv inside it are each refused
    before anything changes, in words: the venv, not writable by this user, the fix."""
    venv, requirements = remote_venv
    requirements.write_text("")  # nothing to install: only the marker would have been written
    owner = cluster["HPCJOB_TEST_USER"]
    subprocess.run(["runuser", "-u", owner, "--", "mkdir", "-p", str(venv.parent)], check=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)  # root's
    marker = venv / ".hpcjob-env.json"
    marker.write_text(json.dumps({"fingerprint": "of other requirements"}))
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(venv)], check=True)

    def refused(said: str) -> None:
        before = sorted(str(p) for p in venv.rglob("*"))
        result = invoke("setup-env", "--requirements", str(requirements))
        assert result.exit_code == 1, result.stderr
        assert said in result.stderr and venv.name in result.stderr
        assert "Traceback" not in result.stderr and "15 minutes" not in result.stderr
        assert "`venv` in the profile" in result.stderr and "nothing was changed" in result.stderr
        assert sorted(str(p) for p in venv.rglob("*")) == before

    refused("is not writable by this user")  # an update
    marker.unlink()
    refused("is not writable by this user")  # a repair
    write_config(laptop_home(), setup_env_profile(cluster, f"{venv}/inner/venv"))
    refused("goes in is not writable by this user")  # a new venv in a folder not ours
    states = [r["state"] for r in invoke("runs", "--json").json()]
    assert states == ["FAILED"] * 3


# -- streaming, interruption, kills ---------------------------------------------------------------

# torch's CPU build from the machine's wheelhouse (sshd's sessions do not get PIP_FIND_LINKS):
# a real install of ~0.9 GB, for the tests that need torch itself.
WHEELS = os.environ.get("PIP_FIND_LINKS", "/opt/wheels")
TORCH_CPU = f"--find-links {WHEELS}\ntorch==2.13.0+cpu\n"


def test_streaming_over_ssh_hands_output_on_before_the_end(ssh_login: Any) -> None:
    """Each line is proven to arrive before the command ends: the command goes on only once the
    test, having received the line before, creates the file it waits for."""
    gates = Path(ssh_login.cluster["HPCJOB_TEST_SCRATCH"]) / f"stream-{uuid.uuid4().hex[:8]}"
    gates.mkdir(mode=0o755)
    chunks: list[str] = []

    def received(text: str) -> None:
        chunks.append(text)
        (gates / str(len(chunks))).touch()

    script = (
        f"echo one; until [ -e {gates}/1 ]; do sleep 0.05; done; echo two >&2; "
        f"until [ -e {gates}/2 ]; do sleep 0.05; done; echo three"
    )
    shell = ssh_login.shell()
    try:
        done = shell.stream(["bash", "-c", script], received, timeout=300)
        assert done.returncode == 0
        assert (done.stdout, done.stderr) == ("one\nthree\n", "two\n")
        assert chunks == ["one\n", "two\n", "three\n"]  # in order, and no login noise
        with pytest.raises(HpcjobError, match=r"was stopped after 0\.5 s"):
            shell.stream(["sleep", "5"], lambda _text: None, timeout=0.5)
        assert shell.run(["echo", "still connected"]).stdout == "still connected\n"
    finally:
        shell.close()
        shutil.rmtree(gates, ignore_errors=True)


@pytest.fixture
def gated(cluster: dict[str, str]) -> Iterator[GatedPackage]:
    """A package whose install waits for the test (see support.GatedPackage); released at the
    end, so nothing is left waiting."""
    folder = Path(cluster["HPCJOB_TEST_SCRATCH"]) / f"gated-{uuid.uuid4().hex[:8]}"
    package = GatedPackage.create(folder, cluster["HPCJOB_TEST_USER"])
    yield package
    package.release()
    shutil.rmtree(folder, ignore_errors=True)


def _run_dir_of(venv: Path) -> Path | None:
    """The login run directory whose script builds this venv (the user's default remote_root)."""
    for script in Path(venv.parent.parent / "hpcjob" / "runs").glob("*/setup-env.sh"):
        if str(venv) in script.read_text() or venv.name in script.read_text():
            return script.parent
    return None


def test_login_run_killed_on_the_cluster_ends_failed_with_its_log(
    remote_venv: tuple[Path, Path], gated: GatedPackage
) -> None:
    """As when a login node's watchdog kills a long command: the script's process group dies
    mid-install; the run ends FAILED with the reason, the log so far is kept, no marker."""
    venv, requirements = remote_venv
    requirements.write_text(gated.requirement + "\n")

    def kill_once_installing() -> None:
        try:
            wait_until(gated.building, "pip building the gated package", guard_s=300)
            run_dir = wait_until(lambda: _run_dir_of(venv), "the run directory")
            pid = int((run_dir / "setup-env.pid").read_text().split()[0])
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        finally:
            gated.release()  # whatever happened, the install does not wait forever

    with ThreadPoolExecutor(1) as helper:
        killing = helper.submit(kill_once_installing)
        failed = invoke("setup-env", "--requirements", str(requirements))
        killing.result(timeout=300)
    assert failed.exit_code == 1
    assert "The setup script was killed" in failed.stderr and "--as-job" in failed.stderr
    run = invoke("runs", "--json").json()[0]
    assert run["state"] == "FAILED"
    log = (Path(run["run_dir"]) / "setup-env.log").read_text()
    assert "HPCJOB-SETUP-ENV-STEP install pip" in log and gated.folder.name in log
    assert not (venv / ".hpcjob-env.json").exists()


def test_ctrl_c_cancels_the_login_run_and_stops_it_on_the_cluster(
    remote_venv: tuple[Path, Path], gated: GatedPackage
) -> None:
    venv, requirements = remote_venv
    proc = start_setup_env(requirements, gated)
    proc.proc.send_signal(signal.SIGINT)
    stderr = proc.finish(timeout=300)
    assert proc.proc.returncode == 130, stderr
    assert "checking python" in stderr  # the steps were shown as they happened, then:
    assert "interrupted after" in stderr and "CANCELLED" in stderr
    run = invoke("runs", "--json").json()[0]
    assert run["state"] == "CANCELLED"
    run_dir = Path(run["run_dir"])
    assert "interrupted (Ctrl-C)" in (run_dir / "setup-env.log").read_text()
    pid = int((run_dir / "setup-env.pid").read_text().split()[0])
    assert not alive(pid)
    assert not subprocess.run(["pgrep", "-f", str(venv)], capture_output=True).stdout
    assert not (venv / ".hpcjob-env.json").exists()


# -- errors ---------------------------------------------------------------------------------------


def test_no_module_command_on_the_cluster_is_said_plainly(
    remote_venv: tuple[Path, Path], cluster: dict[str, str]
) -> None:
    venv, requirements = remote_venv
    modules = ["2025", "Python/3.13.1-GCCcore-14.2.0"]
    write_config(laptop_home(), setup_env_profile(cluster, str(venv), modules=modules))
    failed = invoke("setup-env", "--requirements", str(requirements))
    assert failed.exit_code == 1
    assert "the cluster has no `module` command" in failed.stderr
    assert not venv.exists()


@pytest.fixture
def full_disk(cluster: dict[str, str]) -> Iterator[Path]:
    """A 30 MiB tmpfs the test user can write: a venv with pip fits, torch does not."""
    mount = Path(cluster["HPCJOB_TEST_SCRATCH"]) / f"full-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], check=True)
    try:
        shutil.chown(mount, cluster["HPCJOB_TEST_USER"])
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def test_a_full_filesystem_is_named_with_the_venv_size(
    remote_venv: tuple[Path, Path], full_disk: Path, cluster: dict[str, str]
) -> None:
    _, requirements = remote_venv
    write_config(laptop_home(), setup_env_profile(cluster, f"{full_disk}/venv"))
    requirements.write_text(TORCH_CPU)
    failed = invoke("setup-env", "--requirements", str(requirements))
    assert failed.exit_code == 1
    message = " ".join(failed.stderr.split())
    assert f"No space left on device on {full_disk} (the venv's filesystem)" in message
    assert "GiB free of 0.03 GiB" in message and "files so far" in message
    assert "myquota" in message and "--installer uv" in message
    assert invoke("runs", "--json").json()[0]["state"] == "FAILED"


# -- the GPU check ---------------------------------------------------------------------------------


def test_check_gpu_runs_gpu_check_in_the_venv_and_reports_no_cuda(
    remote_venv: tuple[Path, Path],
) -> None:
    """The test cluster's GPUs are stand-ins and its torch is the CPU build: the truthful
    outcome is a failed check that says why, with the setup itself done."""
    venv, requirements = remote_venv
    requirements.write_text(TORCH_CPU)
    result = invoke("setup-env", "--requirements", str(requirements), "--check-gpu", "--json")
    assert result.exit_code == 3, result.stderr
    data = result.json()
    assert data["state"] == "COMPLETED" and data["torch"]["cuda_build"] is None
    gpu = data["gpu_check"]
    assert gpu["ok"] is False and gpu["state"] == "FAILED" and gpu["partition"] == "gpu_a100"
    assert gpu["job_id"].isdigit() and gpu["cuda_available"] is False
    assert "CPU-only build" in gpu["reason"]
    assert "CPU-only build" in result.stderr and f"hpcjob logs {gpu['run_id']}" in result.stderr
    assert f"{venv}/bin/python" in invoke("logs", gpu["run_id"]).stdout
    assert (venv / ".hpcjob-env.json").exists()  # the venv itself is fine
