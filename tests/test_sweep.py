"""Sweeps as one job array: parsing and validation, the rendered `case`, the embedded scheduler's
arrays and throttle, `sweep status`, `sweep resubmit`, and `rerun` (same code snapshot)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.render import RenderContext, render_script, template_dirs
from hpcjob.scheduler.local import LocalScheduler
from hpcjob.spec import JobSpec, Resources
from hpcjob.sweep import Sweep, compress_indices, failed_tasks, parse_sweeps
from tests.helpers import wait_until

Invoke = Any


# -- parsing ----------------------------------------------------------------------------------


def test_cartesian_product_in_the_order_given() -> None:
    sweep = parse_sweeps("train", ["lr=1e-3,1e-4", "hidden=256,512"])
    assert sweep.names == ["lr", "hidden_units"]  # `hidden` is a unique prefix
    assert sweep.combinations() == [
        {"lr": 1e-3, "hidden_units": "256"},
        {"lr": 1e-3, "hidden_units": "512"},
        {"lr": 1e-4, "hidden_units": "256"},
        {"lr": 1e-4, "hidden_units": "512"},
    ]
    assert sweep.array_spec() == "0-3%4"
    assert parse_sweeps("train", ["lr=1e-3,1e-4"], max_parallel=1).array_spec() == "0-1%1"
    layers = parse_sweeps("train", ["--hidden-units=512,256;256,128", "weighted=true,no"])
    assert layers.combinations()[0] == {"hidden_units": "512,256", "weighted_sampling": True}
    assert layers.combinations()[-1] == {"hidden_units": "256,128", "weighted_sampling": False}


def test_every_bad_value_is_reported_with_the_workloads_own_rules() -> None:
    with pytest.raises(HpcjobError) as caught:
        parse_sweeps(
            "train",
            ["lr=1e-3,-1,abc", "epochs=0,2.5", "nope=1", "hidden=64,x", "dropout", "lr=1"],
            max_parallel=0,
        )
    text = caught.value.message
    assert caught.value.exit_code == 2
    assert "--sweep lr='-1': --lr must be greater than 0, got -1.0" in text
    assert "--sweep lr='abc': must be a number" in text
    assert "--epochs must be at least 1, got 0" in text
    assert "--sweep epochs='2.5': must be a whole number" in text
    assert "train has no argument 'nope'" in text
    assert "--sweep hidden_units='x'" in text
    assert "'dropout': write NAME=VALUE1,VALUE2" in text
    assert "--sweep lr is given twice" in text
    assert "--max-parallel must be at least 1" in text


def test_too_many_tasks_and_workloads_without_arguments() -> None:
    with pytest.raises(HpcjobError, match="at most 1000 fit one array"):
        parse_sweeps("train", [f"seed={','.join(map(str, range(40)))}", "epochs=" + ",".join(
            map(str, range(1, 30))
        )])  # fmt: skip
    with pytest.raises(HpcjobError, match="gpu-check has no argument 'lr'"):
        parse_sweeps("gpu-check", ["lr=1,2"])


def test_indices_compress_to_slurm_ranges() -> None:
    assert compress_indices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert compress_indices([3]) == "3"
    sweep = Sweep((("lr", (0.1, 0.2, 0.3)),), max_parallel=4, indices=(0, 2))
    assert sweep.array_spec() == "0,2%2"
    rows = [
        {"task": 0, "state": "COMPLETED"},
        {"task": 1, "state": "FAILED"},
        {"task": 2, "state": "TIMEOUT"},
        {"task": 3, "state": "RUNNING"},
        {"task": 4, "state": "CANCELLED"},
    ]
    assert failed_tasks(rows) == [1, 2, 4]


def test_each_task_picks_its_quoted_arguments_by_array_task_id(tmp_path: Path) -> None:
    """The rendered `case` gives task i combination i; hostile values stay inert words."""
    hostile = "$(touch pwned); rm -rf ~ 'x\n"
    sweep = Sweep((("hidden_units", ("8", hostile)), ("lr", (0.5,))))
    spec = sweep.apply(JobSpec("train", Resources(array=sweep.array_spec()), {"epochs": 1}))
    ctx = RenderContext("r1", "tok", str(tmp_path), task_args=sweep.task_argv("train"))
    script = render_script(spec, ctx, template_dirs([]))
    assert "#SBATCH --array=0-1%2" in script
    case = script[script.index("case ") : script.index("esac") + 4]
    probe = case + '\nprintf "%s|" "${hpcjob_task_args[@]}"'
    for task, expected in ((0, ["--hidden-units", "8", "--lr", "0.5"]),
                           (1, ["--hidden-units", hostile, "--lr", "0.5"])):  # fmt: skip
        done = subprocess.run(
            ["bash", "-c", probe], env={"SLURM_ARRAY_TASK_ID": str(task)}, cwd=tmp_path,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert done.stdout.split("|")[:-1] == expected
    assert not (tmp_path / "pwned").exists()
    unknown = subprocess.run(["bash", "-c", probe], env={"SLURM_ARRAY_TASK_ID": "7"},
                             capture_output=True, text=True)  # fmt: skip
    assert unknown.returncode == 2 and "not part of this sweep" in unknown.stderr


# -- the embedded scheduler runs arrays ---------------------------------------------------------


def test_embedded_array_runs_each_task_and_keeps_the_throttle(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "local", max_jobs=4, kill_wait_s=1)
    folder = tmp_path / "run"
    folder.mkdir()
    log = folder / "spans.log"
    script = folder / "job.sh"
    # Tasks 0/1 and 2/3 are pairs: each task says it has started (a file) and waits until its
    # partner has started too, so each pair is sure to overlap (two at once, proven, not hoped
    # for); a partner that never comes fails the task after two minutes (a hang).
    script.write_text(
        "#!/bin/bash\n#SBATCH --job-name=arr\n#SBATCH --time=05:00\n#SBATCH --array=0-3%2\n"
        f"#SBATCH --output={folder}/slurm-%A_%a.out\n\n"
        "me=$SLURM_ARRAY_TASK_ID; partner=$((me ^ 1))\n"
        f'echo "start $me $(date +%s.%N)" >> {log}\n'
        f"touch {folder}/started-$me\n"
        f"for _ in $(seq 1200); do [ -e {folder}/started-$partner ] && break; sleep 0.1; done\n"
        f'[ -e {folder}/started-$partner ] || {{ echo "task $partner never started"; exit 1; }}\n'
        f'echo "end $me $(date +%s.%N)" >> {log}\n'
        'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID count $SLURM_ARRAY_TASK_COUNT"\n'
    )
    job_id = sched.submit(str(script), token="tok-arr", workdir=str(folder))
    tasks = [f"{job_id}_{i}" for i in range(4)]
    wait_until(
        lambda: all(i.state.is_final for i in sched.poll(tasks).values()), "every task to end"
    )
    assert {i.state for i in sched.poll(tasks).values()} == {JobState.COMPLETED}
    assert sched.find_by_token("tok-arr") == job_id
    out = (folder / f"slurm-{job_id}_2.out").read_text()
    assert out.strip() == f"task 2 of {job_id} count 4"
    spans = [line.split() for line in log.read_text().splitlines()]
    events = sorted((float(stamp), kind) for kind, _, stamp in spans)
    running, peak = 0, 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2  # %2: never more than two at once, though four slots were free


def test_cancelling_the_array_id_cancels_every_task(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "local", max_jobs=1, kill_wait_s=1)
    folder = tmp_path / "run"
    folder.mkdir()
    script = folder / "job.sh"
    # Longer than any wait here: only the cancel can end the tasks in time.
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=05:00\n#SBATCH --array=0-2\n"
        f"#SBATCH --output={folder}/slurm-%A_%a.out\n\nsleep 200\n"
    )
    job_id = sched.submit(str(script), token="tok-c", workdir=str(folder))
    tasks = [f"{job_id}_{i}" for i in range(3)]
    wait_until(
        lambda: sched.poll(tasks)[tasks[0]].state == JobState.RUNNING, "the first task to run"
    )
    sched.cancel([job_id])
    wait_until(
        lambda: all(i.state.is_final for i in sched.poll(tasks).values()), "every task to end"
    )
    assert {i.state for i in sched.poll(tasks).values()} == {JobState.CANCELLED}


# -- end to end through the CLI -------------------------------------------------------------


def sweep_template(home: Path, flag: Path) -> None:
    """A train template that runs in no time: it prints its arguments and one epoch whose
    val_loss is 0.<task>5, and fails for lr=0.1 until `flag` exists."""
    folder = home / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}\n'
        'echo "ARGS ${hpcjob_task_args[*]:-}"\n'
        f'case " ${{hpcjob_task_args[*]:-}} " in *" --lr 0.1 "*) [ -e {flag} ] || exit 4 ;; esac\n'
        'echo "Epoch 1: Train_Loss = 0.9, Val_Loss = 0.${SLURM_ARRAY_TASK_ID:-0}5"\n'
        'echo "Epoch 2: Train_Loss = 0.8, Val_Loss = 0.${SLURM_ARRAY_TASK_ID:-0}4"\n'
        'echo plot > "$HPCJOB_RUN_DIR/loss.png"\n'
        'mkdir -p "$HPCJOB_RUN_DIR/checkpoints"\n'
        'echo weights > "$HPCJOB_RUN_DIR/checkpoints/epoch-2.pt"\n'
        "{% endblock %}"
    )


def test_sweep_status_resubmit_compare_plot_and_fetch(
    cli: Invoke, isolated_home: Path, pcam_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    flag = tmp_path / "second-time-lucky"
    sweep_template(isolated_home, flag)
    submitted = cli("submit", "train", "--data-dir", str(pcam_dir), "--sweep", "lr=0.01,0.1",
                    "--sweep", "hidden=16,32", "--max-parallel", "2", "--wait",
                    "--json")  # fmt: skip
    assert submitted.exit_code == 3, submitted.stderr  # two tasks fail: the array is not COMPLETED
    parent = submitted.json()
    job = parent["job_id"]
    shown = cli("show", parent["run_id"], "--json").json()
    assert "#SBATCH --array=0-3%2" in shown["script"]
    assert shown["spec"]["sweep"]["params"] == [
        {"name": "lr", "values": [0.01, 0.1]},
        {"name": "hidden_units", "values": ["16", "32"]},
    ]
    assert shown["spec"]["args"]["lr"] is None  # the tasks have their own

    rows = cli("sweep", "status", parent["run_id"], "--json").json()
    assert [(r["task"], r["params"], r["state"]) for r in rows] == [
        (0, {"lr": 0.01, "hidden_units": "16"}, "COMPLETED"),
        (1, {"lr": 0.01, "hidden_units": "32"}, "COMPLETED"),
        (2, {"lr": 0.1, "hidden_units": "16"}, "FAILED"),
        (3, {"lr": 0.1, "hidden_units": "32"}, "FAILED"),
    ]
    assert [r["best"] for r in rows[:2]] == [0.04, 0.14] and rows[0]["is_best"]
    for row in rows:  # each task really ran with the parameters the ledger gives it
        log = cli("logs", row["job_id"]).stdout
        assert (
            f"ARGS --lr {row['params']['lr']} --hidden-units {row['params']['hidden_units']}" in log
        )
    table = cli("sweep", "status", f"{job}_1")
    assert table.exit_code == 0 and "0.04 ★" in table.stdout and "FAILED" in table.stdout

    flag.touch()
    again = cli("sweep", "resubmit", "last", "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json()["tasks"] == [2, 3]
    resub = cli("show", again.json()["run_id"], "--json").json()
    assert "#SBATCH --array=2-3%2" in resub["script"]
    assert resub["spec"]["sweep"]["sweep_id"] == parent["run_id"]
    assert cli("wait", again.json()["run_id"], "--json").exit_code == 0
    rows = cli("sweep", "status", parent["run_id"], "--json").json()
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    assert [r["attempts"] for r in rows] == [1, 1, 2, 2]
    nothing = cli("sweep", "resubmit", parent["run_id"])
    assert nothing.exit_code == 1 and "no failed, cancelled or timed-out task" in nothing.stderr

    task0, task3 = rows[0]["run_id"], rows[3]["run_id"]
    text = cli("show", task0, "--no-script").stdout
    assert f"Sweep task: 0 of sweep {parent['run_id']}: " in text and "Loss curves:" in text
    assert "train_loss" in text and "val_loss" in text

    compared = cli("compare", task0, task3, "--json").json()
    settings = {row["setting"]: row["values"] for row in compared["settings"]}
    assert settings["lr"] == {task0: 0.01, task3: 0.1}
    assert settings["hidden_units"] == {task0: "16", task3: "32"}
    assert "epochs" not in settings  # the same in both
    val = next(m for m in compared["metrics"] if m["metric"] == "val_loss")
    assert val["final"] == {task0: 0.04, task3: 0.34} and val["best"] == {task0: 0.04, task3: 0.34}
    assert "hidden_units" in cli("compare", task0, task3).stdout

    monkeypatch.chdir(tmp_path)
    plotted = cli("plot", task0, task3, "--json")
    assert plotted.exit_code == 0, plotted.stderr
    png = Path(plotted.json()["path"])
    assert png == tmp_path / f"plot-{task0}-{task3}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    custom = cli("plot", task0, "--metric", "val_loss", "--out", str(tmp_path / "v.png"))
    assert custom.exit_code == 0 and (tmp_path / "v.png").stat().st_size > 1000

    fetched = cli("fetch", task3, "--json").json()
    names = {f["name"] for f in fetched["files"]}
    dest = tmp_path / "hpcjob-runs" / task3
    assert Path(fetched["dest"]) == dest
    assert names == {"loss.png", f"slurm-{rows[3]['job_id']}.out", "run.json"}
    assert (dest / "loss.png").read_text() == "plot\n"
    assert not list(dest.glob(".*part*"))
    with_ckpt = cli("fetch", task3, "--checkpoints", "--dest", str(tmp_path / "all"), "--json")
    assert "checkpoints/epoch-2.pt" in {f["name"] for f in with_ckpt.json()["files"]}
    assert "Copied 3 files" in cli("fetch", task3).stderr


def test_sweep_refusals(cli: Invoke, pcam_dir: Path) -> None:
    both = cli("submit", "train", "--data-dir", str(pcam_dir), "--sweep", "lr=0.1,0.2",
               "--array", "0-1")  # fmt: skip
    assert both.exit_code == 2 and "leave out --array" in both.stderr
    clash = cli("submit", "train", "--data-dir", str(pcam_dir), "--sweep", "lr=0.1,0.2",
                "--lr", "0.3")  # fmt: skip
    assert clash.exit_code == 2 and "--lr is swept and given as a plain option too" in clash.stderr
    lone = cli("submit", "train", "--max-parallel", "2")
    assert lone.exit_code == 2 and "--max-parallel applies to a sweep" in lone.stderr
    bad = cli("submit", "train", "--data-dir", str(pcam_dir), "--sweep", "lr=0,1e-3")
    assert bad.exit_code == 2 and "--lr must be greater than 0" in bad.stderr
    assert cli("runs", "--json").json() == []  # nothing recorded
    plain = cli("submit", "gpu-check", "--wait", "--json").json()
    assert "is not a sweep" in cli("sweep", "status", plain["run_id"]).stderr
    no_curve = cli("plot", plain["run_id"])
    assert no_curve.exit_code == 1 and "has no train_loss/val_loss metrics" in no_curve.stderr


def test_rerun_uses_the_runs_code_snapshot_and_links_back(cli: Invoke) -> None:
    first = cli("submit", "gpu-check", "--wait", "--json").json()
    snapshot = Path(first["run_dir"]) / "workload" / "check_gpu.py"
    code = snapshot.read_text()
    assert 'print("no GPU requested, CPU only")' in code
    snapshot.write_text(
        code.replace('print("no GPU requested, CPU only")', 'print("from the snapshot")')
    )
    again = cli("rerun", first["run_id"], "--wait", "--json")
    assert again.exit_code == 0, again.stderr
    rerun = again.json()
    assert rerun["rerun_of"] == first["run_id"] and rerun["run_id"] != first["run_id"]
    assert "from the snapshot" in cli("logs", rerun["run_id"]).stdout
    shown = cli("show", rerun["run_id"], "--json").json()
    assert shown["spec"]["rerun_of"] == first["run_id"]
    assert f"Rerun of:   {first['run_id']}" in cli("show", rerun["run_id"]).stdout
    current = cli("rerun", first["run_id"], "--current-code", "--wait", "--json").json()
    assert "from the snapshot" not in cli("logs", current["run_id"]).stdout
    bad = cli("rerun", first["run_id"], "--epochs", "2")
    assert bad.exit_code == 2 and "--epochs does not apply to the gpu-check workload" in bad.stderr


def test_rerun_changes_only_what_is_given(cli: Invoke, isolated_home: Path, pcam_dir: Path,
                                          tmp_path: Path) -> None:  # fmt: skip
    sweep_template(isolated_home, tmp_path / "flag")
    first = cli("submit", "train", "--data-dir", str(pcam_dir), "--lr", "0.01", "--epochs", "2",
                "--time", "30", "--wait", "--json").json()  # fmt: skip
    again = cli("rerun", first["run_id"], "--epochs", "5", "--wait", "--json")
    assert again.exit_code == 0, again.stderr
    spec = cli("show", again.json()["run_id"], "--json").json()["spec"]
    assert spec["args"]["epochs"] == 5 and spec["args"]["lr"] == 0.01
    assert spec["resources"]["time_s"] == 1800 and spec["data_dir"] == str(pcam_dir)
    refused = cli("rerun", first["run_id"], "--lr", "-1")
    assert refused.exit_code == 2 and "--lr must be greater than 0" in refused.stderr


class BrokenShell:
    """A cluster connection that drops in the middle of a file."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self.data, self.fail_after = data, fail_after

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        if offset >= self.fail_after:
            raise OSError("connection lost")
        end = len(self.data) if limit is None else offset + min(limit, self.fail_after - offset)
        return self.data[offset:end]


def test_an_interrupted_copy_leaves_no_file_that_looks_whole(tmp_path: Path) -> None:
    from hpcjob.run.fetch import copy_file, wanted

    target = tmp_path / "dest" / "metrics.jsonl"
    with pytest.raises(OSError, match="connection lost"):
        copy_file(BrokenShell(b"x" * 1000, fail_after=600), "/remote/metrics.jsonl", target)  # type: ignore[arg-type]
    assert not target.exists() and list((tmp_path / "dest").iterdir()) == []
    assert copy_file(BrokenShell(b"y" * 1000, fail_after=10**6), "/r/m", target) == 1000  # type: ignore[arg-type]
    assert target.read_bytes() == b"y" * 1000
    assert wanted("loss.png", False) and wanted("eda.json", False)
    assert not wanted("checkpoints/last.pt", False) and wanted("checkpoints/last.pt", True)
    assert not wanted("workload/train.py", True) and not wanted("exit-status.3", True)


def test_sweep_status_shows_every_parameter_whole_at_80_columns(
    cli: Invoke, isolated_home: Path, pcam_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from hpcjob.cli import app

    sweep_template(isolated_home, tmp_path / "unused")
    submitted = cli("submit", "train", "--data-dir", str(pcam_dir), "--sweep", "lr=0.001,0.0001",
                    "--sweep", "hidden=512,256;256,128", "--sweep", "dropout=0.1,0.25",
                    "--max-parallel", "4", "--wait", "--json")  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    rows = cli("sweep", "status", "last", "--json").json()
    table = CliRunner().invoke(app, ["sweep", "status", "last"], env={"COLUMNS": "80"})
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in table.stdout, table.stdout
    for row in rows:
        for name, value in row["params"].items():
            assert f"{name}={value}" in table.stdout, (name, value, table.stdout)
    assert "★" in table.stdout and "best val_loss" in table.stdout
