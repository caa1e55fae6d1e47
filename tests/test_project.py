"""The user's own project on the embedded scheduler: a course-skeleton repository's trainer, its
config with overrides and sweeps, a Python file, a batch script, any command, the code snapshot
(dedup, size limit, rerun) and the errors a user meets on the way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import COURSE_PROJECT_FILE, course_project

Invoke = Any


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = course_project(tmp_path / "course")
    (root / "hpcjob.toml").write_text(COURSE_PROJECT_FILE)
    monkeypatch.chdir(root)
    return root


def submit(cli: Invoke, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli("submit", *args, "--json")
    assert result.exit_code == code, result.stderr + result.stdout
    data: dict[str, Any] = result.json()
    return data


def shown(cli: Invoke, ref: str) -> dict[str, Any]:
    result = cli("show", ref, "--json")
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = result.json()
    return data


def metric(detail: dict[str, Any], key: str) -> dict[int, float]:
    return {m["step"]: m["value"] for m in detail["metrics"] if m["key"] == key}


def runs_dir(home: Path) -> Path:
    return home / "runs"


def test_the_projects_train_runs_its_own_trainer_with_epochs_in_its_config(
    cli: Invoke, project: Path, isolated_home: Path
) -> None:
    run = submit(cli, "train", "--epochs", "2", "--wait")
    assert run["state"] == "COMPLETED"
    detail = shown(cli, run["run_id"])
    assert set(metric(detail, "train_loss")) == {1, 2}
    assert set(metric(detail, "val_loss")) == {1, 2}
    assert set(metric(detail, "val_accuracy")) == {1, 2}  # from metrics.csv alone
    program = detail["spec"]["program"]
    assert program["kind"] == "project" and program["source"] == "hpcjob.toml"
    assert detail["spec"]["args"] == {"training.epochs": 2}
    run_dir = Path(detail["run_dir"])
    used = yaml.safe_load((run_dir / "config" / "train_config.yaml").read_text())
    assert used["training"]["epochs"] == 2 and used["training"]["learning_rate"] == 0.001
    names = {a["name"] for a in detail["artifacts"]}
    assert "code/experiments/results/mlp_baseline/best_model.pt" in names
    assert "code/experiments/results/mlp_baseline/metrics.csv" in names
    assert not any(n.startswith("code/src/") for n in names)  # the code is not an artifact
    text = cli("show", run["run_id"]).stdout
    assert "your project's workload, hpcjob.toml" in text
    assert "training.epochs=2" in text
    assert f"snapshot {program['snapshot'][:12]}" in text
    provenance = detail["facts"].get("provenance_submit") or {}
    assert provenance.get("workload_sha256", program["snapshot"]) == program["snapshot"]


def test_set_overrides_config_keys_and_an_unknown_key_is_refused(
    cli: Invoke, project: Path
) -> None:
    run = submit(
        cli,
        "train",
        "--set",
        "training.learning_rate=3e-4",
        "--set",
        "model.hidden_units=[128,64]",
        "--epochs",
        "1",
        "--wait",
    )
    run_dir = Path(shown(cli, run["run_id"])["run_dir"])
    used = yaml.safe_load((run_dir / "config" / "train_config.yaml").read_text())
    assert used["training"]["learning_rate"] == 3e-4
    assert used["model"]["hidden_units"] == [128, 64]
    result = cli("submit", "train", "--set", "training.learning_rat=1e-3")
    assert result.exit_code == 2
    assert "training.learning_rate" in result.stderr
    listed = cli("runs", "--json").json()
    assert len(listed) == 1  # nothing recorded for the refused one


def test_a_sweep_over_config_keys_gives_each_task_its_own_config_and_folder(
    cli: Invoke, project: Path, isolated_home: Path
) -> None:
    result = cli(
        "submit",
        "train",
        "--epochs",
        "1",
        "--sweep",
        "training.learning_rate=1e-3,1e-2",
        "--sweep",
        "seed=1,2",
        "--max-parallel",
        "2",
        "--wait",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    parent = result.json()
    detail = shown(cli, parent["run_id"])
    run_dir = Path(detail["run_dir"])
    seen = []
    for task in range(4):
        used = run_dir / f"task-{task}" / "code/experiments/results/mlp_baseline/config_used.yaml"
        config = yaml.safe_load(used.read_text())
        seen.append((config["training"]["learning_rate"], config["seed"]))
    assert seen == [(1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    snapshots = list((runs_dir(isolated_home) / ".snapshots").iterdir())
    assert len(snapshots) == 1  # one upload for the four tasks
    tasks = cli("sweep", "status", parent["run_id"], "--json").json()
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 4
    assert tasks[0]["params"] == {"training.learning_rate": 1e-3, "seed": 1}
    assert tasks[0]["best"] is not None  # val_loss of each task, from its own output


def test_a_python_file_of_the_project_gets_the_words_after_dashes(
    cli: Invoke, project: Path
) -> None:
    result = cli(
        "submit", "experiments/evaluate.py", "--wait", "--json", "--", "--checkpoint", "last.pt"
    )
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["state"] == "COMPLETED"
    log = cli("logs", run["run_id"]).stdout
    assert "evaluate args: --checkpoint last.pt" in log
    detail = shown(cli, run["run_id"])
    assert detail["spec"]["program"]["command"] == [
        "python",
        "experiments/evaluate.py",
        "--checkpoint",
        "last.pt",
    ]
    assert metric(detail, "test_loss") == {1: 0.5}


def test_a_batch_script_keeps_its_sbatch_lines_and_command_line_flags_win(
    cli: Invoke, project: Path
) -> None:
    run = submit(cli, "job.sh", "--time", "5", "--wait")
    assert run["state"] == "COMPLETED"
    detail = shown(cli, run["run_id"])
    resources = detail["spec"]["resources"]
    assert resources["time_s"] == 300  # --time wins over the script's 00:20:00
    assert resources["cpus_per_task"] == 2 and resources["job_name"] == "course-train"
    log = cli("logs", run["run_id"]).stdout
    assert "course job.sh on" in log and "Epoch 5: Train_Loss" in log


def test_any_command_after_dashes(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "no-project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    result = cli("submit", "--time", "10", "--wait", "--json", "--", "echo", "hello", "world")
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert "hello world" in cli("logs", run["run_id"]).stdout
    assert "no code travels" in result.stderr
    assert shown(cli, run["run_id"])["spec"]["program"]["snapshot"] is None


def test_a_command_missing_on_the_node_fails_with_a_plain_reason(
    cli: Invoke, project: Path
) -> None:
    result = cli("submit", "--wait", "--json", "--", "no-such-command-hpcjob")
    assert result.exit_code == 3
    detail = shown(cli, result.json()["run_id"])
    assert detail["state"] == "FAILED"
    assert "command not found" in json.dumps(detail["facts"])


def test_identical_code_is_uploaded_once_and_a_rerun_reuses_its_snapshot(
    cli: Invoke, project: Path, isolated_home: Path
) -> None:
    first = submit(cli, "train", "--epochs", "1", "--wait")
    snapshots = runs_dir(isolated_home) / ".snapshots"
    (only,) = list(snapshots.iterdir())
    stamp = (only / "experiments" / "train.py").stat().st_mtime_ns
    submit(cli, "train", "--epochs", "1", "--wait")
    assert (only / "experiments" / "train.py").stat().st_mtime_ns == stamp  # not written again
    trainer = project / "experiments" / "train.py"
    trainer.write_text(trainer.read_text().replace("def main", 'print("CHANGED")\n\n\ndef main'))
    rerun = cli("rerun", first["run_id"], "--wait", "--json")
    assert rerun.exit_code == 0, rerun.stderr
    assert "CHANGED" not in cli("logs", rerun.json()["run_id"]).stdout
    assert shown(cli, rerun.json()["run_id"])["spec"]["program"]["snapshot"] == only.name
    current = cli("rerun", first["run_id"], "--current-code", "--wait", "--json")
    assert current.exit_code == 0, current.stderr
    assert "CHANGED" in cli("logs", current.json()["run_id"]).stdout
    assert len(list(snapshots.iterdir())) == 2


def test_a_snapshot_above_the_limit_is_refused_naming_the_largest_file(
    cli: Invoke, project: Path
) -> None:
    (project / "hpcjob.toml").write_text(
        COURSE_PROJECT_FILE.replace('name = "course"', 'name = "course"\nmax_snapshot_mb = 1')
    )
    (project / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    result = cli("submit", "train")
    assert result.exit_code == 2
    assert "weights.bin" in result.stderr and "exclude" in result.stderr
    assert cli("runs", "--json").json() == []


def test_the_project_file_errors_name_the_line_and_the_key(cli: Invoke, project: Path) -> None:
    (project / "hpcjob.toml").write_text(
        COURSE_PROJECT_FILE.replace('time = "00:30:00"', "gpus = 'x'")
    )
    result = cli("submit", "train")
    assert result.exit_code == 2
    assert "line 9: gpus must be a whole number" in result.stderr
    (project / "hpcjob.toml").write_text(COURSE_PROJECT_FILE + "[workloads.bad\n")
    result = cli("submit", "train")
    assert result.exit_code == 2 and "line 16" in result.stderr
    (project / "hpcjob.toml").write_text(COURSE_PROJECT_FILE.replace("{config}", "{confg}"))
    result = cli("submit", "train")
    assert result.exit_code == 2 and "{confg} does not exist" in result.stderr


def test_an_unknown_workload_lists_the_projects_and_the_built_in_ones(
    cli: Invoke, project: Path
) -> None:
    result = cli("submit", "trian")
    assert result.exit_code == 2
    assert "your project's: train" in result.stderr
    assert "built-in: eda, gpu-check, setup-env, train" in result.stderr


def test_options_that_the_project_does_not_map_are_refused(cli: Invoke, project: Path) -> None:
    result = cli("submit", "train", "--dropout", "0.5")
    assert result.exit_code == 2
    assert "--dropout does not apply to the project's workload train" in result.stderr
    result = cli("submit", "experiments/evaluate.py", "--set", "a=1")
    assert result.exit_code == 2 and "no config file" in result.stderr


def test_a_project_outside_git_travels_as_a_folder_with_a_note(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = course_project(tmp_path / "plain", git=False)
    (root / "hpcjob.toml").write_text(COURSE_PROJECT_FILE)
    monkeypatch.chdir(root)
    result = cli("submit", "train", "--epochs", "1", "--wait", "--json")
    assert result.exit_code == 0, result.stderr
    assert "is not in git" in result.stderr
    provenance = shown(cli, result.json()["run_id"])
    assert provenance["state"] == "COMPLETED"


def test_a_built_in_workload_still_runs_inside_a_project_and_show_says_so(
    cli: Invoke, project: Path
) -> None:
    run = submit(cli, "gpu-check", "--wait")
    assert run["state"] == "COMPLETED"
    assert "program" not in shown(cli, run["run_id"])["spec"]
    assert "gpu-check (built-in" in cli("show", run["run_id"]).stdout


def test_right_after_init_the_course_trainer_runs_for_the_epochs_asked(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = course_project(tmp_path / "fresh")
    monkeypatch.chdir(root)
    assert cli("init").exit_code == 0
    run = submit(cli, "train", "--epochs", "3", "--wait")
    assert run["state"] == "COMPLETED"
    detail = shown(cli, run["run_id"])
    assert set(metric(detail, "val_loss")) == {1, 2, 3}
    assert detail["spec"]["args"] == {"training.epochs": 3}


def test_a_data_dir_option_sets_the_config_key_the_project_maps_it_to(
    cli: Invoke, project: Path, tmp_path: Path
) -> None:
    (project / "hpcjob.toml").write_text(COURSE_PROJECT_FILE + 'data_dir = "data.data_path"\n')
    data = tmp_path / "pcam"
    data.mkdir()
    run = submit(cli, "train", "--epochs", "1", "--data-dir", str(data), "--wait")
    run_dir = Path(shown(cli, run["run_id"])["run_dir"])
    used = yaml.safe_load((run_dir / "config" / "train_config.yaml").read_text())
    assert used["data"]["data_path"] == str(data)
    result = cli("submit", "train", "--data-dir", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_compare_shows_the_config_values_each_run_used(cli: Invoke, project: Path) -> None:
    plain = submit(cli, "train", "--epochs", "1", "--wait")
    faster = submit(cli, "train", "--epochs", "1", "--lr", "3e-3", "--wait")
    result = cli("compare", plain["run_id"], faster["run_id"], "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["setting"]: row["values"] for row in result.json()["settings"]}
    assert rows["training.learning_rate"] == {plain["run_id"]: 0.001, faster["run_id"]: 3e-3}
    assert "training.epochs" not in rows  # the same in both


def test_without_a_project_file_an_unknown_workload_points_at_init(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(course_project(tmp_path / "bare"))
    result = cli("submit", "trainer")
    assert result.exit_code == 2
    assert "built-in: eda, gpu-check, setup-env, train" in result.stderr
    assert "hpcjob init" in result.stderr


def test_an_array_of_the_projects_workload_gives_each_task_its_own_working_copy(
    cli: Invoke, project: Path
) -> None:
    parent = submit(cli, "train", "--epochs", "1", "--array", "0-1", "--wait")
    assert parent["state"] == "COMPLETED"
    run_dir = Path(shown(cli, parent["run_id"])["run_dir"])
    for task in (0, 1):
        result = run_dir / f"task-{task}" / "code/experiments/results/mlp_baseline/metrics.csv"
        assert result.read_text().startswith("epoch,train_loss")


def test_fetch_copies_what_the_globs_name_and_not_the_code(
    cli: Invoke, project: Path, tmp_path: Path
) -> None:
    submit(cli, "train", "--epochs", "1", "--wait")
    dest = tmp_path / "fetched"
    result = cli("fetch", "last", "--dest", str(dest), "--checkpoints")
    assert result.exit_code == 0, result.stderr
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert "code/experiments/results/mlp_baseline/metrics.csv" in got
    assert "code/experiments/results/mlp_baseline/best_model.pt" in got
    assert "config/train_config.yaml" in got
    assert not any(name.startswith(("code/src/", "code/experiments/train.py")) for name in got)


def test_a_bad_value_in_a_batch_script_is_refused_naming_the_script(
    cli: Invoke, project: Path
) -> None:
    (project / "bad.sh").write_text("#!/bin/bash\n#SBATCH --time=1h\n#SBATCH -c 2\necho hi\n")
    result = cli("submit", "bad.sh")
    assert result.exit_code == 2
    assert "'1h' is not a Slurm time" in result.stderr
    assert "came from the #SBATCH lines of bad.sh" in result.stderr
    assert cli("submit", "bad.sh", "--time", "5", "--dry-run").exit_code == 0
