"""`hpcjob doctor` against the real test cluster: over SSH from 'a laptop' (the test sshd, as
hpctest) and on the login node itself (the test user's `slurm` profile): each check gives a
finding, an unknown host key fails with its fix, a damaged data folder fails naming its files,
a venv never set up warns with `hpcjob setup-env`."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcjob.insight.doctor import PCAM_FILES
from tests.integration.support import (
    SSHLogin,
    UserSession,
    ssh_hpcjob,
    ssh_profile,
    write_config,
)

pytestmark = pytest.mark.ssh

CHECKS = ["python", "profile", "host key", "connection", "partitions", "accounts", "modules",
          "cluster python", "venv", "data", "quota", "purge"]  # fmt: skip


def doctor(
    cluster: dict[str, str],
    ssh_login: SSHLogin,
    user_python: str,
    home: Path,
    **settings: Any,
) -> tuple[int, list[dict[str, Any]], str]:
    """`hpcjob doctor --json` from 'a laptop' for the SSH profile `cluster` with `settings`."""
    runner = ssh_hpcjob(cluster, ssh_login, user_python, home)
    remote_root = f"~/hpcjob/runs-doctor-{uuid.uuid4().hex[:8]}"
    partitions = settings.pop("partitions", {})
    text = ssh_profile(cluster, python=user_python, remote_root=remote_root, **settings)
    if partitions:
        text += "[profiles.cluster.partitions]\n"
        text += "".join(f"{key} = {json.dumps(value)}\n" for key, value in partitions.items())
    write_config(home, text)
    code, out, err = runner.run("doctor", "--json")
    assert out.startswith("["), err
    return code, json.loads(out), err


def by_check(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for row in rows}


def test_a_healthy_enough_profile_gives_each_check_a_finding(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, user_pcam: Path, tmp_path: Path
) -> None:
    venv = str(Path(user_python).parent.parent)  # torch and h5py, never made by setup-env
    code, rows, err = doctor(
        cluster, ssh_login, user_python, tmp_path / "home",
        venv=venv, data_dir=str(user_pcam), partitions={"train": "gpu_a100"},
    )  # fmt: skip
    assert code == 0, err
    checks = by_check(rows)
    assert list(checks) == CHECKS
    assert checks["connection"]["status"] == "ok"
    assert checks["connection"]["found"].startswith(f"logged in as {cluster['HPCJOB_TEST_USER']}")
    assert checks["host key"]["status"] == "ok"
    assert (
        checks["partitions"]["status"] == "ok"
        and "train → gpu_a100" in checks["partitions"]["found"]
    )
    assert checks["accounts"]["status"] == "ok", checks["accounts"]
    assert f"{cluster['HPCJOB_TEST_ACCOUNT']} (default)" in checks["accounts"]["found"]
    assert checks["cluster python"]["status"] == "ok"
    assert checks["data"]["status"] == "ok", checks["data"]
    assert "train_x 512x96x96x3 uint8" in checks["data"]["found"]
    assert checks["quota"]["status"] in ("ok", "warn") and "GiB free" in checks["quota"]["found"]
    # A venv hpcjob did not set up: it runs, torch and h5py import, and the marker is missing.
    assert checks["venv"]["status"] == "warn", checks["venv"]
    assert "h5py" in checks["venv"]["found"] and "setup-env" in checks["venv"]["fix"]


def test_an_unknown_host_key_fails_with_its_fix(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    code, rows, err = doctor(
        cluster, ssh_login, user_python, tmp_path / "home",
        known_hosts=str(empty), venv="~/hpcjob/venv", data_dir="/data/pcam",
    )  # fmt: skip
    assert code == 1, err
    checks = by_check(rows)
    assert checks["host key"]["status"] == "fail"
    assert (
        "is not known" in checks["host key"]["found"] and "SHA256:" in checks["host key"]["found"]
    )
    assert "hpcjob connect cluster" in checks["host key"]["fix"]
    assert "ssh-keyscan" in checks["host key"]["fix"]
    for name in ("partitions", "accounts", "modules", "venv", "data", "quota"):
        assert checks[name]["status"] == "skip" and "no connection" in checks[name]["found"]


def test_a_damaged_data_folder_fails_naming_the_files(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, user_pcam: Path, tmp_path: Path
) -> None:
    scratch = Path(cluster["HPCJOB_TEST_SCRATCH"]) / f"doctor-data-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        for name in PCAM_FILES[:3]:  # valid_y left out
            shutil.copy(user_pcam / name, scratch / name)
        broken = scratch / PCAM_FILES[0]
        broken.write_bytes(broken.read_bytes()[:4096])  # train_x cut short
        subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)
        venv = str(Path(user_python).parent.parent)
        code, rows, err = doctor(
            cluster, ssh_login, user_python, tmp_path / "home", venv=venv, data_dir=str(scratch)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert code == 1, err
    data = by_check(rows)["data"]
    assert data["status"] == "fail"
    assert f"{PCAM_FILES[0]} error OSError" in data["found"]
    assert f"{PCAM_FILES[3]} missing" in data["found"]
    assert "data_dir" in data["fix"]


def test_a_venv_never_set_up_warns_with_setup_env(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, tmp_path: Path
) -> None:
    code, rows, err = doctor(
        cluster, ssh_login, user_python, tmp_path / "home",
        venv=f"~/hpcjob-doctor-never-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    assert code == 0, err
    venv = by_check(rows)["venv"]
    assert venv["status"] == "warn" and "does not exist" in venv["found"]
    assert venv["fix"] == "hpcjob setup-env --profile cluster"


def test_doctor_on_the_login_node_itself(user: UserSession, user_pcam: Path) -> None:
    """The built-in `slurm` profile, hpcjob run as the test user on the cluster's machine."""
    result = user.hpcjob("doctor", "--json", extra_env={"HPCJOB_DATA_DIR": str(user_pcam)})
    assert "Traceback" not in result.stderr
    checks = by_check(result.json())
    assert (
        checks["connection"]["status"] == "ok"
        and "Slurm on this machine" in checks["connection"]["found"]
    )
    assert checks["host key"]["status"] == "skip"
    assert checks["partitions"]["status"] == "ok"
    assert "on a login node" in checks["python"]["found"]
    assert checks["data"]["status"] in ("ok", "warn"), checks["data"]
    assert result.exit_code == 0, result.stderr
