"""Each task of a plain `--array` of the built-in train gets its own seed (the task id) unless
--seed is given; the effective seed is what train's facts, provenance and the task's spec say.
A sweep keeps one seed for all its tasks, and a sweep over seed keeps its values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hpcjob.spec import JobSpec, Resources, SpecRequest, build_spec

Invoke = Any
TRAIN_LINE = re.compile(r"^.*workload/train\.py .*$", re.M)


def train_line(cli: Invoke, *args: str) -> str:
    rendered = cli("render", "train", *args)
    assert rendered.exit_code == 0, rendered.stderr
    found = TRAIN_LINE.search(rendered.stdout)
    assert found, rendered.stdout
    return found.group(0)


@pytest.mark.slow
def test_each_array_task_trains_with_its_own_seed(cli: Invoke, pcam_dir: Path) -> None:
    parent = cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--epochs", "1", "--hidden-units", "16",
        "--batch-size", "64", "--array", "0-1", "--wait", "--json",
    )  # fmt: skip
    assert parent.exit_code == 0, parent.stderr
    job_id = parent.json()["job_id"]
    losses = []
    for task in (0, 1):
        shown = cli("show", f"{job_id}_{task}", "--json").json()
        assert shown["state"] == "COMPLETED"
        assert shown["facts"]["seed"] == task  # what train.py used
        assert shown["provenance"]["job"]["seed"] == task
        assert shown["spec"]["args"]["seed"] == task  # rerun and compare see it too
        log = cli("logs", f"{job_id}_{task}").stdout
        assert f"seed:       {task} (array task {task}; --seed not given)" in log
        losses.append([m["value"] for m in shown["metrics"] if m["key"] == "train_loss"])
    assert losses[0] != losses[1]  # two different trainings, not one twice


def test_the_job_script_seeds_a_plain_array_by_task_id_only(cli: Invoke) -> None:
    per_task = train_line(cli, "--array", "0-3")
    assert '--seed "$SLURM_ARRAY_TASK_ID"' in per_task
    assert "--seed 0" not in per_task
    assert "--seed 7" in train_line(cli, "--array", "0-3", "--seed", "7")
    assert "SLURM_ARRAY_TASK_ID" not in train_line(cli, "--array", "0-3", "--seed", "7")
    assert "--seed" not in train_line(cli) or "--seed 0" in train_line(cli)
    # A sweep's tasks differ by what is swept, not by seed; a sweep over seed keeps its values.
    assert "SLURM_ARRAY_TASK_ID" not in train_line(cli, "--sweep", "lr=0.1,0.2")
    swept = cli("render", "train", "--sweep", "seed=3,4").stdout
    assert (
        "0) hpcjob_task_args=(--seed 3) ;;" in swept
        and "1) hpcjob_task_args=(--seed 4) ;;" in swept
    )
    assert '--seed "$SLURM_ARRAY_TASK_ID"' not in swept


def test_array_task_seeds_in_the_ledger() -> None:
    from hpcjob.spec import array_task_seeds

    plain = build_spec(SpecRequest(workload="train", data_dir="/d", array="0-2"))
    assert plain.args["seed"] is None  # not given: each task its own
    assert array_task_seeds(plain.to_dict(), [0, 2]) == {0: 0, 2: 2}
    given = build_spec(SpecRequest(workload="train", data_dir="/d", array="0-2", args={"seed": 7}))
    assert array_task_seeds(given.to_dict(), [0, 2]) == {}
    eda = JobSpec("eda", Resources(array="0-1"), {"block_size": 8}, data_dir="/d")
    assert array_task_seeds(eda.to_dict(), [0, 1]) == {}


def test_each_task_spec_records_its_seed() -> None:
    from hpcjob.sweep import task_specs

    plain = build_spec(SpecRequest(workload="train", data_dir="/d", array="0-1")).to_dict()
    assert [s["args"]["seed"] for s in task_specs(plain, [0, 1]).values()] == [0, 1]
    sweep = {"sweep_id": "r1", "max_parallel": 2}
    by_lr = {**plain, "sweep": {**sweep, "params": [{"name": "lr", "values": [0.1, 0.2]}]}}
    assert [s["args"]["seed"] for s in task_specs(by_lr, [0, 1]).values()] == [0, 0]
    by_seed = {**plain, "sweep": {**sweep, "params": [{"name": "seed", "values": [3, 4]}]}}
    assert [s["args"]["seed"] for s in task_specs(by_seed, [0, 1]).values()] == [3, 4]
