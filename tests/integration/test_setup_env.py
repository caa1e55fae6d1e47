"""`hpcjob setup-env` over SSH against the test sshd and Slurm: create, no-op, update, repair,
and the same script as a batch job. The venvs go under hpctest's home and are removed after."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from tests.helpers import Result, invoke

pytestmark = pytest.mark.ssh

TEST_VENVS = "hpcjob-test-venvs"


@pytest.fixture
def remote(
    cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Path]]:
    """A laptop-side HPCJOB_HOME with a profile for the test sshd; yields (venv on the cluster,
    requirements file here). The sshd is this machine, so the venv is checked on disk."""
    user = cluster["HPCJOB_TEST_USER"]
    name = f"v-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[profiles.cluster]\n"
        'scheduler = "slurm"\nhost = "127.0.0.1"\n'
        f'port = {cluster["HPCJOB_TEST_SSH_PORT"]}\nuser = "{user}"\n'
        f'identity_file = "{cluster["HPCJOB_TEST_SSH_KEY"]}"\n'
        f'known_hosts = "{cluster["HPCJOB_TEST_KNOWN_HOSTS"]}"\n'
        f'python = "/usr/bin/python3"\nvenv = "~/{TEST_VENVS}/{name}"\n'
    )
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    venv = Path(f"/home/{user}/{TEST_VENVS}/{name}")
    yield venv, requirements
    shutil.rmtree(venv, ignore_errors=True)


def setup_env(requirements: Path, *args: str) -> Result:
    result = invoke("setup-env", "--requirements", str(requirements), "--json", *args)
    assert result.exit_code == 0, result.stderr
    return result


def test_setup_env_over_ssh_creates_skips_updates_repairs(remote: tuple[Path, Path]) -> None:
    venv, requirements = remote
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

    started = time.monotonic()
    again = invoke("setup-env", "--requirements", str(requirements))
    assert again.exit_code == 0, again.stderr
    assert "up to date" in again.stdout and time.monotonic() - started < 15

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


def test_setup_env_as_job_runs_through_slurm(remote: tuple[Path, Path]) -> None:
    venv, requirements = remote
    done = setup_env(requirements, "--as-job").json()
    assert done["state"] == "COMPLETED" and done["action"] == "create"
    assert (venv / ".hpcjob-env.json").exists()
    shown = invoke("show", done["run_id"], "--json").json()
    assert shown["job_id"].isdigit() and shown["scheduler"] == "slurm"


def test_jobs_run_in_the_venv_setup_env_made(remote: tuple[Path, Path]) -> None:
    """Before setup-env, submit warns; afterwards a job runs the venv's own Python, silently."""
    venv, requirements = remote
    templates = Path(invoke("config", "show", "--json").json()["home"]) / "templates"
    templates.mkdir()
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}'
        "{{ python }} -c \"import sys; print('python:', sys.prefix)\"\n{% endblock %}"
    )
    early = invoke("submit", "gpu-check", "--partition", "rome", "--json")
    assert "was not set up by hpcjob setup-env" in early.stderr
    invoke("cancel", early.json()["job_id"])
    setup_env(requirements)
    done = invoke("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
    assert done.exit_code == 0, done.stderr + invoke("logs", "last").stdout
    assert "setup-env" not in done.stderr
    assert f"python: {venv}" in invoke("logs", done.json()["job_id"]).stdout


# -- streaming, interruption, kills ---------------------------------------------------------------

# torch's CPU build from the machine's wheelhouse (sshd's sessions do not get PIP_FIND_LINKS):
# a real install of ~0.9 GB that takes 20-30 s, slow enough to interrupt.
WHEELS = os.environ.get("PIP_FIND_LINKS", "/opt/wheels")
TORCH_CPU = f"--find-links {WHEELS}\ntorch==2.13.0+cpu\n"


def test_streaming_over_ssh_hands_output_on_before_the_end(ssh_login: Any) -> None:
    shell = ssh_login.shell()
    chunks: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        done = shell.stream(
            ["bash", "-c", "echo one; sleep 1; echo two >&2; sleep 0.5; echo three"],
            lambda text: chunks.append((time.monotonic() - started, text)),
        )
        assert done.returncode == 0
        assert (done.stdout, done.stderr) == ("one\nthree\n", "two\n")
        assert [text for _, text in chunks] == ["one\n", "two\n", "three\n"]  # no login noise
        assert chunks[0][0] < 0.9 < chunks[1][0] < chunks[2][0]
        with pytest.raises(HpcjobError, match=r"was stopped after 0\.5 s"):
            shell.stream(["sleep", "5"], lambda _text: None, timeout=0.5)
        assert shell.run(["echo", "still connected"]).stdout == "still connected\n"
    finally:
        shell.close()


def _run_dir_of(venv: Path) -> Path | None:
    """The login run directory whose script builds this venv (the user's default remote_root)."""
    for script in Path(venv.parent.parent / "hpcjob" / "runs").glob("*/setup-env.sh"):
        if str(venv) in script.read_text() or venv.name in script.read_text():
            return script.parent
    return None


def _when_installing(venv: Path, action: Any, timeout: float = 60) -> threading.Thread:
    """Call action(run_dir) once the script there has started installing."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run_dir = _run_dir_of(venv)
            log = run_dir / "setup-env.log" if run_dir else None
            if log is not None and log.exists() and "STEP install" in log.read_text():
                time.sleep(1.0)  # well into pip's work
                action(run_dir)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_login_run_killed_on_the_cluster_ends_failed_with_its_log(
    remote: tuple[Path, Path],
) -> None:
    """As when a login node's watchdog kills a long command: the script's process group dies
    mid-install; the run ends FAILED with the reason, the log so far is kept, no marker."""
    venv, requirements = remote
    requirements.write_text(TORCH_CPU)

    def kill(run_dir: Path) -> None:
        pid = int((run_dir / "setup-env.pid").read_text())
        os.killpg(os.getpgid(pid), signal.SIGKILL)

    watcher = _when_installing(venv, kill)
    failed = invoke("setup-env", "--requirements", str(requirements))
    watcher.join(5)
    assert failed.exit_code == 1
    assert "The setup script was killed" in failed.stderr and "--as-job" in failed.stderr
    run = invoke("runs", "--json").json()[0]
    assert run["state"] == "FAILED"
    log = (Path(run["run_dir"]) / "setup-env.log").read_text()
    assert "HPCJOB-SETUP-ENV-STEP install pip 1" in log and "torch" in log
    assert not (venv / ".hpcjob-env.json").exists()


def start_installing_torch(requirements: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """`hpcjob setup-env` installing torch (a real ~20 s install), a second into it; and the
    lines it printed so far (not a terminal: one plain line per step, as they happen)."""
    requirements.write_text(TORCH_CPU)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcjob", "setup-env", "--requirements", str(requirements)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    shown: list[str] = []
    for line in proc.stderr:
        shown.append(line)
        if "installing" in line:
            break
    time.sleep(1.0)
    return proc, shown


def test_ctrl_c_cancels_the_login_run_and_stops_it_on_the_cluster(
    remote: tuple[Path, Path],
) -> None:
    venv, requirements = remote
    proc, shown = start_installing_torch(requirements)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(shown) + rest
    assert any("checking python" in line for line in shown)
    assert "interrupted after" in rest and "CANCELLED" in rest
    run = invoke("runs", "--json").json()[0]
    assert run["state"] == "CANCELLED"
    run_dir = Path(run["run_dir"])
    assert "interrupted (Ctrl-C)" in (run_dir / "setup-env.log").read_text()
    pid = int((run_dir / "setup-env.pid").read_text())
    assert not _alive(pid)
    assert not subprocess.run(["pgrep", "-f", str(venv)], capture_output=True).stdout
    assert not (venv / ".hpcjob-env.json").exists()


# -- errors ---------------------------------------------------------------------------------------


def test_no_module_command_on_the_cluster_is_said_plainly(remote: tuple[Path, Path]) -> None:
    venv, requirements = remote
    config = Path(os.environ["HPCJOB_HOME"]) / "config.toml"
    config.write_text(config.read_text() + 'modules = ["2025", "Python/3.13.1-GCCcore-14.2.0"]\n')
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
    remote: tuple[Path, Path], full_disk: Path
) -> None:
    _, requirements = remote
    config = Path(os.environ["HPCJOB_HOME"]) / "config.toml"
    text = re.sub(r'venv = "[^"]*"', f'venv = "{full_disk}/venv"', config.read_text())
    config.write_text(text)
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
    remote: tuple[Path, Path],
) -> None:
    """The test cluster's GPUs are stand-ins and its torch is the CPU build: the truthful
    outcome is a failed check that says why, with the setup itself done."""
    venv, requirements = remote
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
