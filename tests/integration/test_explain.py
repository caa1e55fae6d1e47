"""Every run explains itself, on the real test cluster: provenance from the job, the SBU estimate
and the actual cost from sacct's elapsed time, efficiency from sacct's CPU time and MaxRSS."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import UserSession, wait_until, write_config

pytestmark = pytest.mark.slurm

# The test cluster's partitions are named like Snellius's; these are Snellius's rates.
RATES = """
[profiles.slurm.sbu_rates]
rome = { sbu_per_hour = 1.0, per = "core", min_units = 16, mem_gib_per_unit = 1.75 }
gpu_a100 = { sbu_per_hour = 128, per = "gpu", cores_per_gpu = 18, mem_gib_per_unit = 120 }
"""


def with_rates(user: UserSession) -> None:
    write_config(user.home, RATES, owner=user.cluster["HPCJOB_TEST_USER"])


def project_repo(user: UserSession) -> Path:
    """A git checkout of the test user's own, with an uncommitted change."""
    repo = user.home / "project"
    repo.mkdir()
    (repo / "train_notes.md").write_text("lr 1e-3\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "."], [*ident, "commit", "-q", "-m", "first"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    (repo / "train_notes.md").write_text("lr 1e-4\n")
    subprocess.run(["chown", "-R", user.cluster["HPCJOB_TEST_USER"], str(repo)], check=True)
    return repo


def shown_with_accounting(user: UserSession, ref: str) -> dict[str, Any]:
    """`show --json` once sacct's record (which lags the job's end by seconds) is in."""

    def shown() -> dict[str, Any] | None:
        run: dict[str, Any] = user.hpcjob("show", ref, "--json").json()
        return run if "sacct_elapsed_s" in run["facts"] else None

    return wait_until(shown, f"sacct's record of {ref}", tick_s=2)


def test_dry_run_and_submit_show_the_estimate(user: UserSession) -> None:
    with_rates(user)
    gpu = user.hpcjob("submit", "gpu-check", "-p", "gpu_a100", "--time", "30", "--dry-run")
    assert gpu.exit_code == 0, gpu.stderr
    assert "≈ 64.0 SBU (max, at the time limit: 0.5 h × 1 gpu × 128 SBU/h)" in gpu.stderr
    staging = user.hpcjob("submit", "gpu-check", "-p", "staging", "--dry-run", "--json")
    assert staging.json()["sbu_estimate"]["note"] == (
        "no SBU rate for partition staging (set sbu_rates in the profile)"
    )


def test_a_training_job_explains_itself(user: UserSession, user_pcam: Path) -> None:
    with_rates(user)
    repo = project_repo(user)
    result = user.hpcjob(
        "submit", "train", "--partition", "rome", "--epochs", "1", "--data-dir", str(user_pcam),
        "--hidden-units", "32", "--batch-size", "64", "--time", "10", "--seed", "5",
        "--project", str(repo), "--wait",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + user.hpcjob("logs", "last").stdout
    estimate = "≈ 2.7 SBU (max, at the time limit: 0.167 h × 16 cores × 1 SBU/h; billed for"
    assert f"{estimate} 16 cores per node (asked 1))" in result.stderr
    shown = shown_with_accounting(user, "last")
    facts = shown["facts"]
    # Slurm's own figure (whole seconds; a fast job may take 0), not a guess at its size.
    sacct = user.as_user("sacct", "-j", shown["job_id"], "-X", "-n", "-P", "-o", "ElapsedRaw")
    assert facts["sacct_elapsed_s"] == int(sacct.stdout.split()[0]), sacct.stdout

    prov = shown["provenance"]
    assert prov["git"]["dirty"] is True and prov["git"]["branch"]
    assert "provenance/git.diff" in {a["name"] for a in shown["artifacts"]}
    job = prov["job"]
    assert job["node"] == shown["node"] and job["slurm_job_id"] == shown["job_id"]
    assert job["partition"] == "rome" and job["seed"] == 5
    assert job["python"] and job["torch"].startswith("2.")
    assert any(p.lower().startswith("torch==") for p in job["pip_freeze"])
    assert {f["name"] for f in job["data_files"]} >= {"camelyonpatch_level_2_split_train_x.h5"}

    # On CPU the training job samples no GPU utilisation.
    assert not {m["key"] for m in shown["metrics"]} & {"gpu_util_pct"}
    assert "gpu_util_mean_pct" not in facts and shown["efficiency"]["gpus"] == 0

    actual = shown["cost"]["actual"]
    assert actual["partition"] == "rome" and actual["units"] == 16
    assert actual["sbu"] == pytest.approx(16 * facts["sacct_elapsed_s"] / 3600, abs=0.01)

    eff = shown["efficiency"]
    assert eff["source"] == "sacct" and eff["cores"] == facts["sacct_alloc_cpus"]
    assert eff["cpu_efficiency"] is not None and eff["cpu_efficiency"] > 0
    assert eff["mem_peak_bytes"] == facts["sacct_max_rss_bytes"] > 0
    assert eff["time_limit_s"] == 600
    assert eff["time_used"] == round(facts["sacct_elapsed_s"] / 600, 4)

    text = user.hpcjob("show", "last", "--no-script").stdout
    for phrase in ("Provenance:", "Cost:", "Efficiency:", "(from sacct)", "packages"):
        assert phrase in text

    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    spend = user.hpcjob("runs", "--since", today, "--json").json()
    assert spend["runs_counted"] == 1 and spend["total_sbu"] == actual["sbu"]
