"""Provenance: the project's git state (none, clean, dirty, a capped diff), what the job records
about itself (workloads/provenance.py), and both end to end through `submit`/`show` on the
embedded scheduler, with the cost and efficiency sections."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hpcjob import provenance
from hpcjob.run import origin
from tests.helpers import REPO

Invoke = Any


def load_workload_provenance() -> ModuleType:
    path = REPO / "workloads" / "provenance.py"
    spec = importlib.util.spec_from_file_location("workload_provenance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JOB_SIDE = load_workload_provenance()


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    git(folder, "init", "-q", "-b", "main")
    (folder / "model.py").write_text("LAYERS = 2\n")
    git(folder, "add", "model.py")
    git(folder, "commit", "-q", "-m", "first")
    return folder


def test_not_a_git_repo(tmp_path: Path) -> None:
    state, diff = origin.git_state(tmp_path)
    assert state == {"repo": "not a git repo", "folder": str(tmp_path)}
    assert diff is None
    assert "not a git repo" in provenance.show_lines({"git": state})[0]


def test_clean_repo(repo: Path) -> None:
    (repo / "notes.txt").write_text("untracked files do not make it dirty\n")
    state, diff = origin.git_state(repo)
    assert state["commit"] == git(repo, "rev-parse", "HEAD")
    assert state["branch"] == "main" and state["dirty"] is False
    assert state["untracked_files"] == 1
    assert diff is None


def test_dirty_repo_keeps_the_diff(repo: Path) -> None:
    (repo / "model.py").write_text("LAYERS = 3\n")
    state, diff = origin.git_state(repo)
    assert state["dirty"] is True and state["diff"] == "provenance/git.diff"
    assert diff is not None and b"-LAYERS = 2\n+LAYERS = 3" in diff
    assert state["diff_bytes"] == len(diff) and "diff_truncated" not in state


def test_the_diff_carries_no_untracked_and_no_ignored_file(repo: Path) -> None:
    """`git diff HEAD` has no untracked files (ignored or not), but a file added with
    `git add -f` despite .gitignore would go along: it is left out too."""
    (repo / ".gitignore").write_text("*.env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore env files")
    (repo / "model.py").write_text("LAYERS = 3\n")
    (repo / "draft.py").write_text("UNTRACKED = 1\n")
    (repo / "secret.env").write_text("PASSWORD=ignored-untracked\n")
    (repo / "token.env").write_text("TOKEN=ignored-but-added\n")
    git(repo, "add", "-f", "token.env")
    state, diff = origin.git_state(repo)
    assert diff is not None and b"+LAYERS = 3" in diff
    for secret in (b"UNTRACKED", b"ignored-untracked", b"ignored-but-added", b"token.env"):
        assert secret not in diff
    assert state["diff_files"] == 1
    assert origin.diff_note(state).startswith(
        "The uncommitted changes (1 file, 0.1 KB) go with the run as provenance/git.diff"
    )


def test_a_huge_diff_is_cut_with_a_note(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(origin, "DIFF_CAP", 200)
    (repo / "model.py").write_text("".join(f"LAYER_{i} = {i}\n" for i in range(500)))
    state, diff = origin.git_state(repo)
    assert state["diff_truncated"] is True and state["diff_bytes"] > 200
    assert diff is not None and diff.startswith(b"diff --git")
    assert b"# hpcjob: diff truncated at 200 of" in diff and len(diff) < 400


def test_detached_head_has_no_branch(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    state, _ = origin.git_state(repo)
    assert state["branch"] is None and state["commit"]


def test_job_side_fingerprint_is_cheap_and_sees_the_ends(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    big = data / "x.h5"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    first = JOB_SIDE.file_fingerprint(big)
    assert first["size"] == 3 * 1024 * 1024 and len(first["head_tail_sha256"]) == 64
    with open(big, "r+b") as handle:  # the middle MiB is not read: same head/tail hash
        handle.seek(int(1.5 * 1024 * 1024))
        handle.write(b"changed")
    assert JOB_SIDE.file_fingerprint(big)["head_tail_sha256"] == first["head_tail_sha256"]
    with open(big, "r+b") as handle:  # the last byte, flipped: always a change
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)[0]
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last ^ 0xFF]))
    assert JOB_SIDE.file_fingerprint(big)["head_tail_sha256"] != first["head_tail_sha256"]


def test_job_side_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "y.h5").write_bytes(b"labels")
    path = JOB_SIDE.write(tmp_path / "run", data, seed=7)
    record = json.loads(path.read_text())
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["seed"] == 7 and record["node"]
    assert [f["name"] for f in record["data_files"]] == ["y.h5"]
    assert any(line.startswith("pytest==") for line in record["pip_freeze"])
    assert provenance.job_facts(path.read_text()) == {"provenance_job": record}
    assert provenance.job_facts("{torn") == {}


def test_gpu_sampler_records_nothing_on_cpu() -> None:
    class Device:
        type = "cpu"

    assert JOB_SIDE.GpuSampler.for_device(Device()) is None


# -- end to end on the embedded scheduler -----------------------------------------------------


def test_submit_and_show_explain_a_run(cli: Invoke, repo: Path, isolated_home: Path) -> None:
    (repo / "model.py").write_text("LAYERS = 4\n")
    result = cli("submit", "gpu-check", "--wait", "--project", str(repo), "--json")
    assert result.exit_code == 0, result.stderr
    assert "The uncommitted changes (1 file, " in result.stderr  # said at submit
    assert "go with the run as provenance/git.diff" in result.stderr
    run = result.json()
    shown = cli("show", run["run_id"], "--json").json()
    prov = shown["provenance"]
    assert prov["git"]["commit"] == git(repo, "rev-parse", "HEAD") and prov["git"]["dirty"]
    assert prov["workload_sha256"] and prov["script_sha256"] == shown["script_sha256"]
    job = prov["job"]
    assert job["node"] == shown["node"] and job["python"] and job["torch"]
    assert any(line.lower().startswith("torch==") for line in job["pip_freeze"])
    assert not any(k.startswith("provenance_") for k in shown["facts"])  # in its own section
    diff = Path(shown["run_dir"]) / "provenance" / "git.diff"
    assert b"+LAYERS = 4" in diff.read_bytes()
    assert "provenance/git.diff" in {a["name"] for a in shown["artifacts"]}
    run_json = json.loads((Path(shown["run_dir"]) / "run.json").read_text())
    assert run_json["provenance"]["git"]["dirty"] is True
    eff = shown["efficiency"]
    assert eff["source"] == "embedded scheduler"
    assert eff["elapsed_s"] > 0 and eff["mem_peak_bytes"] > 10 * 1024**2
    assert eff["cpu_efficiency"] > 0 and eff["time_limit_s"] == 600
    assert shown["cost"]["actual"]["note"].startswith("none — the embedded scheduler")
    text = cli("show", run["run_id"], "--no-script").stdout
    assert "Provenance:" in text and "dirty: diff in provenance/git.diff" in text
    assert "Efficiency:" in text and "(from embedded scheduler)" in text


def test_outside_a_git_repo_and_a_bad_project(
    cli: Invoke, tmp_path: Path, isolated_home: Path
) -> None:
    bad = cli("submit", "gpu-check", "--project", str(tmp_path / "nope"))
    assert bad.exit_code == 2 and "is not a folder" in bad.stderr
    run = cli("submit", "gpu-check", "--wait", "--project", str(tmp_path), "--json").json()
    shown = cli("show", run["run_id"], "--json").json()
    assert shown["provenance"]["git"]["repo"] == "not a git repo"


RATES = """
[profiles.local]
scheduler = "local"
[profiles.local.sbu_rates]
gpu_a100 = { sbu_per_hour = 128, per = "gpu", cores_per_gpu = 18 }
"""


def test_estimate_actual_and_spend_with_profile_rates(cli: Invoke, isolated_home: Path) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(RATES)
    dry = cli("submit", "gpu-check", "-p", "gpu_a100", "--gpus", "0", "--time", "2:00:00",
              "--dry-run")  # fmt: skip
    assert dry.exit_code == 0, dry.stderr
    assert "cost: no SBU rate" not in dry.stderr
    assert "≈ 256 SBU (max, at the time limit: 2 h × 1 gpu × 128 SBU/h" in dry.stderr
    dry_json = cli("submit", "gpu-check", "-p", "rome", "--dry-run", "--json").json()
    assert dry_json["sbu_estimate"]["note"] == (
        "no SBU rate for partition rome (set sbu_rates in the profile)"
    )
    done = cli("submit", "gpu-check", "-p", "gpu_a100", "--gpus", "0", "--time", "10", "--wait")
    assert done.exit_code == 0, done.stderr
    assert "≈ 21.3 SBU (max, at the time limit" in done.stderr
    shown = cli("show", "last", "--json").json()
    actual = shown["cost"]["actual"]
    elapsed = shown["efficiency"]["elapsed_s"]
    assert actual["sbu"] == pytest.approx(128 * elapsed / 3600, abs=0.01)
    assert shown["cost"]["estimate"]["sbu"] == pytest.approx(21.33, abs=0.01)
    spend = cli("runs", "--since", "2020-01-01", "--json").json()
    assert spend["runs_counted"] == 1 and spend["total_sbu"] == actual["sbu"]
    assert spend["runs"][0]["sbu"] == actual["sbu"]
    table = cli("runs", "--since", "2020-01-01", "--until", "2100-01-01")
    assert "Total: ≈" in table.stdout and "for 1 runs" in table.stdout
    none = cli("runs", "--since", "2100-01-01", "--json").json()
    assert none["runs"] == [] and none["total_sbu"] == 0
    bad = cli("runs", "--since", "yesterday")
    assert bad.exit_code == 2 and "is not a date" in bad.stderr


def test_gpu_sampler_means_per_epoch_and_for_the_run() -> None:
    class Cuda:
        def __init__(self) -> None:
            self.values = iter([10.0, 30.0, 50.0, 70.0, 90.0])

        def utilization(self, index: int) -> float:
            return next(self.values)

    class FakeTorch:
        cuda = Cuda()

    sampler = JOB_SIDE.GpuSampler(FakeTorch(), 0, interval=3600)  # sampled by hand below
    sampler.sample()
    sampler.sample()
    assert sampler.epoch_numbers() == {"gpu_util_pct": 20.0}
    assert sampler.epoch_numbers() == {"gpu_util_pct": 50.0}  # none this epoch: one fresh sample
    sampler.sample()
    assert sampler.summary() == {
        "gpu_util_mean_pct": 40.0,
        "gpu_util_max_pct": 70.0,
        "gpu_util_samples": 4,
    }
