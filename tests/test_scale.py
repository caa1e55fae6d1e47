"""Several processes and nodes: --nodes, --gpus-per-node, --procs-per-node, --launcher, checked
against the recorded partitions of the test cluster (each of its partitions in sinfo_idle has one
node of 2 cores) and the cost of the whole allocation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpcjob import cost
from hpcjob.errors import HpcjobError
from hpcjob.slurm import parse_sinfo
from hpcjob.spec import SpecRequest, build_spec
from tests.helpers import ALLREDUCE_PROGRAM, recorded

PARTITIONS = parse_sinfo(recorded("sinfo_idle").stdout)


def _spec(**values: object):  # type: ignore[no-untyped-def]
    values.setdefault("time", "10:00")
    return build_spec(SpecRequest(workload="train", data_dir="/d", **values))  # type: ignore[arg-type]


def test_more_than_one_process_defaults_to_torchrun() -> None:
    res = _spec(partition="gpu_a100", gpus_per_node=4).resources
    assert (res.nodes, res.gpus, res.procs_per_node, res.launcher) == (1, 4, 4, "torchrun")
    res = _spec(partition="rome", nodes=2, procs_per_node=4).resources
    assert (res.nodes, res.gpus, res.procs_per_node, res.launcher) == (2, 0, 4, "torchrun")
    res = _spec(partition="rome", nodes=2).resources
    assert (res.procs_per_node, res.launcher) == (1, "torchrun")
    res = _spec(partition="rome", nodes=2, procs_per_node=2, launcher="srun").resources
    assert res.launcher == "srun"


def test_one_process_and_plain_gpus_run_as_before() -> None:
    assert _spec(partition="rome").resources.launcher == "none"
    res = _spec(partition="gpu_a100", gpus=2).resources  # --gpus alone: no launcher
    assert (res.gpus, res.procs_per_node, res.launcher) == (2, 1, "none")
    assert _spec(partition="gpu_a100", gpus_per_node=1).resources.launcher == "none"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"launcher": "mpirun"}, "--launcher 'mpirun' is not one of: torchrun, srun, none"),
        ({"nodes": 2, "launcher": "none"}, "--launcher none runs one process on one node"),
        ({"nodes": 2, "gpus": 4}, "--gpus 4 with --nodes 2 is ambiguous: use --gpus-per-node"),
        ({"gpus": 2, "gpus_per_node": 4}, "--gpus 2 and --gpus-per-node 4 disagree"),
        ({"procs_per_node": 0}, "--procs-per-node must be at least 1, got 0"),
        ({"gpus_per_node": -1}, "--gpus-per-node must be at least 0, got -1"),
    ],
)
def test_bad_scale_options_are_refused_with_exit_2(values: dict, expected: str) -> None:
    with pytest.raises(HpcjobError) as caught:
        _spec(partition="rome", **values)
    assert expected in caught.value.message and caught.value.exit_code == 2


def test_what_the_partition_cannot_give_is_refused_with_the_numbers() -> None:
    request = SpecRequest(
        workload="train", data_dir="/d", partition="gpu_a100", nodes=3, gpus_per_node=4
    )
    with pytest.raises(HpcjobError) as caught:
        build_spec(request, PARTITIONS)
    message = caught.value.message
    assert "--nodes 3 is more than gpu_a100 has (1 node)" in message
    assert "4 GPUs were asked for, but a gpu_a100 node has 2" in message
    assert caught.value.exit_code == 2
    request = SpecRequest(workload="train", data_dir="/d", procs_per_node=2, cpus_per_task=2)
    with pytest.raises(HpcjobError, match=r"--procs-per-node 2 × 2 cores is 4 cores, more than a "
                       r"rome node has \(2\)"):  # fmt: skip
        build_spec(request, PARTITIONS)
    fits = SpecRequest(workload="train", data_dir="/d", procs_per_node=2)
    assert build_spec(fits, PARTITIONS).resources.procs_per_node == 2


def test_the_estimate_covers_every_node_and_every_process() -> None:
    rates = {"rome": cost.Rate("rome", 1.0)}
    res = _spec(partition="rome", nodes=2, procs_per_node=4, cpus_per_task=2).to_dict()
    request = cost.request_from_spec(res["resources"])
    assert (request.nodes, request.cores) == (2, 8)
    assert cost.cost(rates, request, 3600).sbu == pytest.approx(16.0)


def test_the_embedded_scheduler_refuses_several_nodes_before_recording(cli: Any) -> None:
    result = cli("submit", "gpu-check", "--nodes", "2", "--launcher", "srun")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "--nodes 2: the embedded scheduler runs jobs on this one machine" in result.stderr
    assert "Give --nodes 1" in result.stderr and "launcher srun (--launcher" in result.stderr
    assert cli("runs", "--json").json() == []  # nothing half-recorded


def test_the_embedded_scheduler_runs_one_node_of_ranks_with_torchrun(
    cli: Any, tmp_path: Path
) -> None:
    program = tmp_path / "allreduce.py"
    program.write_text(ALLREDUCE_PROGRAM)
    result = cli(
        "submit", "--procs-per-node", "2", "--time", "5", "--wait", "--json",
        "--", "python", str(program),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    assert run["state"] == "COMPLETED"
    logs = cli("logs", run["run_id"]).stdout
    assert "allreduce sum=3 world=2" in logs  # ranks 0 and 1 add 1 + 2
    assert "launcher:   torchrun, 1 node(s) x 2 processes" in logs
    # The job's output is rank 0's; each rank has its own.
    assert "rank 0 on" in logs and "rank 1 on" not in logs
    rank_1 = cli("logs", run["run_id"], "--rank", "1")
    assert rank_1.exit_code == 0 and rank_1.stdout.startswith("rank 1 on"), rank_1.stderr
    assert "rank 1 on" in cli("logs", run["run_id"], "--rank", "1", "--tail", "1").stdout
    refused = cli("logs", run["run_id"], "--rank", "2")
    assert refused.exit_code == 2 and "had 2 ranks (0 to 1); there is no rank 2" in refused.stderr
    status = Path(run["run_dir"], "exit-status").read_text().split()
    assert status[0] == "0" and len(status) == 2  # nothing to add when all went well
    assert not any(
        a["name"].startswith("ranks/") for a in cli("show", "last", "--json").json()["artifacts"]
    )  # hpcjob's own files, not the workload's


# Rank 1 fails; rank 0 waits on nothing rank 1 could break, so torchrun stops it (TERM) only
# after rank 1's end was recorded: who failed first is an order of events, not of timing.
RANK_1_FAILS = """import os, sys, time
rank = int(os.environ["RANK"])
print(f"rank {rank} starting", flush=True)
if rank == 1:
    sys.exit("ValueError: shard 7 of rank 1 is damaged")
while True:
    time.sleep(1)
"""


def test_a_failing_rank_ends_the_job_and_is_named(cli: Any, tmp_path: Path) -> None:
    program = tmp_path / "fails.py"
    program.write_text(RANK_1_FAILS)
    result = cli(
        "submit", "--procs-per-node", "2", "--time", "5", "--wait", "--json",
        "--", "python", str(program),
    )  # fmt: skip
    run = result.json()
    assert run["state"] == "FAILED", result.stderr
    status = Path(run["run_dir"], "exit-status").read_text().split()
    host = f"host={os.uname().nodename}"
    assert status[0] == "1" and status[2:] == ["rank=1", host, "rank_exit=1"]
    logs = cli("logs", run["run_id"]).stdout
    assert "[rank 1] ValueError: shard 7 of rank 1 is damaged" in logs  # any rank's errors
    assert "hpcjob: rank 1 on" in logs and "failed first (exit 1)" in logs
    shown = cli("show", run["run_id"], "--json").json()
    assert shown["facts"]["failed_rank"] == 1 and shown["facts"]["failed_rank_exit"] == 1
    assert "rank 1 on" in shown["facts"]["failure"]["line"]


def test_the_exit_status_files_rank_words_become_the_reason() -> None:
    from hpcjob.run.refresh import failed_rank

    assert failed_rank(["rank=3", "host=tcn2", "rank_exit=137"]) == (
        "rank 3 on tcn2 failed first (exit 137)"
    )
    assert failed_rank(["ranks=checkpointed"]) is None
    assert failed_rank([]) is None
    assert failed_rank(["rank=1"]) == "rank 1 failed first"


def _rerun(spec: Any, **overrides: object) -> Any:
    from hpcjob.run.rerun import request_from_spec

    return build_spec(request_from_spec(spec.to_dict(), overrides, keep_array=False)).resources


def test_a_rerun_keeps_the_scale_and_derives_what_a_change_implies() -> None:
    two_by_four = _spec(partition="gpu_a100", nodes=2, gpus_per_node=4)
    same = _rerun(two_by_four, epochs=3)
    assert (same.nodes, same.gpus, same.procs_per_node, same.launcher) == (2, 4, 4, "torchrun")
    one = _rerun(two_by_four, nodes=1)
    assert (one.nodes, one.gpus, one.procs_per_node, one.launcher) == (1, 4, 4, "torchrun")
    fewer = _rerun(two_by_four, gpus_per_node=2)
    assert (fewer.gpus, fewer.procs_per_node) == (2, 2)

    plain = _spec(partition="rome")
    spread = _rerun(plain, nodes=2)
    assert (spread.nodes, spread.procs_per_node, spread.launcher) == (2, 1, "torchrun")
    more = _rerun(plain, procs_per_node=2)
    assert (more.procs_per_node, more.launcher) == (2, "torchrun")
    assert _rerun(plain).launcher == "none"

    # --gpus alone stays one process, in a rerun as in a submit.
    two_gpus = _spec(partition="gpu_a100", gpus=2)
    again = _rerun(two_gpus, gpus=1)
    assert (again.gpus, again.procs_per_node, again.launcher) == (1, 1, "none")
    wide = _rerun(two_gpus, nodes=2)  # the recorded GPUs were one node's
    assert (wide.nodes, wide.gpus, wide.procs_per_node, wide.launcher) == (2, 2, 2, "torchrun")
