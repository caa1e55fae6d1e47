"""A non-editable install of the wheel, in a fresh venv, finds its templates and workloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (found,) = dist.glob("hpcjob-*.whl")
    return found


def test_wheel_carries_templates_and_workloads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("base", "gpu-check", "eda", "train", "setup-env"):
        assert f"hpcjob/_templates/{template}.sbatch.j2" in names
    for program in ("check_gpu.py", "eda.py", "train.py", "pcam.py", "requirements.txt"):
        assert f"hpcjob/_workloads/{program}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_renders_and_runs_a_job(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    target = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", target, str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    # The dependencies (typer, rich, jinja2, torch…) come from the test's own environment; hpcjob
    # itself only from the wheel.
    (Path(target) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "HPCJOB_HOME": str(tmp_path / "home"), "HPCJOB_PROFILE": "local"}
    python = str(venv / "bin" / "python")

    def hpcjob(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, "-m", "hpcjob", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    where = subprocess.run(
        [python, "-c", "import hpcjob; print(hpcjob.__file__)"], env=env, capture_output=True,
        text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(target), where
    rendered = hpcjob("render", "train", "--partition", "gpu_a100", "--epochs", "3")
    assert rendered.returncode == 0, rendered.stderr
    assert "#SBATCH --partition=gpu_a100" in rendered.stdout
    done = hpcjob("submit", "gpu-check", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    snapshot = Path(run["run_dir"]) / "workload" / "check_gpu.py"
    assert snapshot.is_file()
