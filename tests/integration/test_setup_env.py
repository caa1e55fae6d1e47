"""`hpcjob setup-env` over SSH against the test sshd and Slurm: create, no-op, update, repair,
and the same script as a batch job. The venvs go under hpctest's home and are removed after."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Result, invoke

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
