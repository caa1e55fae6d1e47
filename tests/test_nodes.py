"""`show` for a run over several nodes (issue 18): sacct per step read from real 2-node jobs of
the test cluster (tests/fixtures/slurm/sacct_steps_*.json, recorded by
tests/cluster/record_fixtures.py --only sacct_steps, Slurm 22.05.8), node lists expanded, each
node's CPU efficiency and peak memory, the busiest and idlest rank under srun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcjob import slurm
from hpcjob.config import Profile, Settings
from hpcjob.errors import HpcjobError
from hpcjob.insight.explain import run_detail
from hpcjob.insight.nodes import gpu_rows, launch_step, nodes_section, per_node, show_lines
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.scheduler.slurm import SlurmScheduler
from hpcjob.slurm import (
    StepUsage,
    TaskExtreme,
    expand_nodelist,
    parse_sacct_steps,
    parse_tres_usage,
)
from tests.helpers import ReplayShell, new_run
from tests.helpers import recorded as command_result

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
TORCHRUN = {"nodes": 2, "procs_per_node": 2, "launcher": "torchrun", "mem_mb": 500}
SRUN = {**TORCHRUN, "launcher": "srun"}


def recorded(name: str) -> tuple[list[StepUsage], str]:
    data: dict[str, Any] = json.loads((FIXTURES / f"sacct_steps_{name}.json").read_text())
    (job,) = data["jobs"].values()
    return parse_sacct_steps(data["stdout"]), job


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("tcn[1-2]", ["tcn1", "tcn2"]),
        ("tcn1", ["tcn1"]),
        ("gcn[01-03,7],int5", ["gcn01", "gcn02", "gcn03", "gcn7", "int5"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("a1,b[3-4]", ["a1", "b3", "b4"]),
        ("None assigned", []),
        ("", []),
        (None, []),
    ],
)
def test_node_lists_are_expanded(text: str | None, names: list[str]) -> None:
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text", ["tcn[1-", "tcn[a-b]", "tcn[3-1]", "tcn]1[", "x[1-999999999]"])
def test_a_node_list_hpcjob_cannot_read_is_an_error_not_a_guess(text: str) -> None:
    with pytest.raises(HpcjobError):
        expand_nodelist(text)


def test_tres_usage_strings_are_read_by_key() -> None:
    assert parse_tres_usage("cpu=00:00:08,energy=0,mem=224436K") == {
        "cpu": "00:00:08",
        "energy": "0",
        "mem": "224436K",
    }
    assert parse_tres_usage("cpu=tcn2,mem=tcn1") == {"cpu": "tcn2", "mem": "tcn1"}
    assert parse_tres_usage("") == {}


def test_the_steps_of_a_torchrun_job_over_two_nodes() -> None:
    steps, job = recorded("torchrun")
    by_step = {s.step: s for s in steps}
    assert set(by_step) >= {"batch", "0"}
    launch = launch_step(steps)
    assert launch is by_step["0"] and launch.step_id == f"{job}.0"
    assert launch.nodes == ("tcn1", "tcn2") and launch.tasks == 2 and launch.alloc_cpus == 4
    assert launch.state == "COMPLETED" and launch.elapsed_s
    # Node 1's ranks burn twice node 0's CPU and hold more memory (record_fixtures.RANK_WORK).
    assert launch.cpu_max and launch.cpu_min and launch.mem_max and launch.mem_min
    assert (launch.cpu_max.node, launch.cpu_min.node) == ("tcn2", "tcn1")
    assert (launch.mem_max.node, launch.mem_min.node) == ("tcn2", "tcn1")
    assert launch.cpu_max.value > launch.cpu_min.value > 0
    assert launch.mem_sum_bytes == launch.mem_max.value + launch.mem_min.value
    assert by_step["batch"].nodes == ("tcn1",)
    assert StepUsage.from_dict(json.loads(json.dumps(launch.to_dict()))) == launch


def test_each_nodes_cpu_efficiency_and_peak_memory_under_torchrun() -> None:
    steps, job = recorded("torchrun")
    launch = launch_step(steps)
    assert launch is not None and launch.elapsed_s
    section = nodes_section(TORCHRUN, "tcn[1-2]", steps)
    assert section is not None
    assert (section["nodes"], section["ranks"], section["step"]) == (
        ["tcn1", "tcn2"],
        4,
        f"{job}.0",
    )
    tcn1, tcn2 = section["per_node"]
    assert (tcn1["node"], tcn2["node"], tcn1["cores"], tcn1["ranks"]) == ("tcn1", "tcn2", 2, 2)
    assert tcn1["cpu_efficiency"] == round(tcn1["cpu_s"] / (2 * launch.elapsed_s), 4)
    assert 0 < tcn1["cpu_efficiency"] < tcn2["cpu_efficiency"] <= 1.0
    assert 0 < tcn1["max_rss_bytes"] < tcn2["max_rss_bytes"]
    assert section["per_rank"] is None
    text = "\n".join(show_lines(section))
    assert "  nodes     tcn1, tcn2" in text
    assert "  ranks     4 (2 nodes × 2 per node, torchrun)" in text
    assert (
        f"  CPU       per node: tcn1 {tcn1['cpu_efficiency']:.0%}, "
        f"tcn2 {tcn2['cpu_efficiency']:.0%} (of 2 cores each; step {job}.0)"
    ) in text
    assert "  memory    peak per node: tcn1 " in text and "(of 500 MiB requested per node)" in text


def test_under_srun_a_task_is_a_rank_so_the_busiest_and_idlest_ranks_are_named() -> None:
    steps, job = recorded("srun")
    launch = launch_step(steps)
    assert launch is not None and launch.tasks == 4 and launch.nodes == ("tcn1", "tcn2")
    section = nodes_section(SRUN, "tcn[1-2]", steps)
    assert section is not None and section["per_node"] == []
    ranked = section["per_rank"]
    assert ranked["cores"] == 1
    most, least = ranked["cpu_most"], ranked["cpu_least"]
    assert most["node"] == "tcn2" and least["node"] == "tcn1"
    assert most["rank"] in (2, 3) and least["rank"] in (0, 1)  # srun: ranks 0-1 on the first node
    assert least["cpu_efficiency"] < most["cpu_efficiency"]
    text = "\n".join(show_lines(section))
    assert f"  CPU       per rank: least rank {least['rank']} (tcn1) " in text
    assert f"most rank {most['rank']} (tcn2)" in text and f"(step {job}.0)" in text


def test_a_single_node_left_unnamed_gets_what_the_sum_leaves() -> None:
    nodes = ["n1", "n2", "n3"]
    most, least = TaskExtreme(9.0, "n3", 2), TaskExtreme(2.0, "n1", 0)
    assert per_node(nodes, most, least, 16.0) == {"n3": 9.0, "n1": 2.0, "n2": 5.0}
    # Two nodes of equal use: sacct names the same node for both; the other is the rest.
    same = TaskExtreme(4.0, "n1", 0)
    assert per_node(["n1", "n2"], same, same, 8.0) == {"n1": 4.0, "n2": 4.0}
    # Four nodes: only the two named are known.
    assert per_node([*nodes, "n4"], most, least, 20.0) == {"n3": 9.0, "n1": 2.0}


def test_one_process_on_one_node_has_no_nodes_section() -> None:
    assert nodes_section({"nodes": 1, "procs_per_node": 1, "launcher": "none"}, "tcn1", []) is None
    # --procs-per-node 4 with --launcher none runs one process.
    assert nodes_section({"procs_per_node": 4, "launcher": "none"}, "tcn1", []) is None


def test_before_sacct_has_the_steps_the_nodes_come_from_the_run_and_a_note_says_why() -> None:
    section = nodes_section(TORCHRUN, "tcn[1-2]", [], note="per-node numbers come once it ended")
    assert section is not None and section["nodes"] == ["tcn1", "tcn2"]
    assert section["per_node"] == [] and section["per_rank"] is None
    lines = show_lines(section)
    assert lines[-1] == "  (per-node numbers come once it ended)"
    assert not [line for line in lines if line.startswith("  CPU")]


def test_each_gpu_is_listed_with_its_rank_node_and_mean_over_the_epochs() -> None:
    # What train writes under DDP on GPUs (tests/workloads/test_gpu_ranks.py): its ranks' places
    # as the fact gpu_ranks, each rank's epoch mean as gpu_util_r<rank>.
    placement = [
        {"rank": 0, "node": "gcn1", "local_rank": 0},
        {"rank": 1, "node": "gcn1", "local_rank": 1},
        {"rank": 2, "node": "gcn2", "local_rank": 0},
    ]
    metrics = [
        {"step": 1, "key": "gpu_util_r0", "value": 80.0},
        {"step": 2, "key": "gpu_util_r0", "value": 90.0},
        {"step": 1, "key": "gpu_util_r1", "value": 40.0},
        {"step": 1, "key": "gpu_util_pct", "value": 60.0},
        {"step": 1, "key": "gpu_util_rx", "value": 1.0},
    ]
    rows = gpu_rows(placement, metrics)
    assert rows == [
        {"rank": 0, "node": "gcn1", "local_rank": 0, "util_pct": 85.0},
        {"rank": 1, "node": "gcn1", "local_rank": 1, "util_pct": 40.0},
        {"rank": 2, "node": "gcn2", "local_rank": 0, "util_pct": None},
    ]
    gpu = {**TORCHRUN, "gpus": 2, "procs_per_node": 2}
    section = nodes_section(gpu, "gcn[1-2]", [], gpus=rows)
    assert section is not None and section["gpus"] == rows
    lines = show_lines(section)
    assert "  GPU       rank 0 (gcn1 GPU 0): 85% busy" in lines
    assert "  GPU       rank 1 (gcn1 GPU 1): 40% busy" in lines
    assert "  GPU       rank 2 (gcn2 GPU 0): not sampled" in lines
    assert gpu_rows(None, []) == [] and gpu_rows("junk", [{"key": "x", "value": 1}]) == []


# -- show asks sacct once, when the run has ended, and keeps the answer -----------------------


class FailingShell(ReplayShell):
    def run(self, argv, **kwargs):  # type: ignore[no-untyped-def, override]
        if argv[0] == "sacct":
            raise HpcjobError("Could not connect to the login node: timed out")
        return super().run(argv, **kwargs)


def ended_run(tmp_path: Path, shell: ReplayShell, job_id: str) -> tuple[Context, Run]:
    """A Slurm context on the replayed shell, with one ended 2-node × 2-rank torchrun run."""
    profile = Profile("slurm", {"scheduler": "slurm", "remote_root": "/runs"}, {})
    ctx = Context(Settings(tmp_path), profile)
    ctx._scheduler = SlurmScheduler(shell, "slurm:test")
    resources = {**TORCHRUN, "partition": "multi"}
    new = new_run(
        profile="slurm", cluster="slurm:test", scheduler="slurm", run_id="r1",
        spec={"workload": "train", "resources": resources},
    )  # fmt: skip
    run = ctx.ledger.create_run(new)
    run = ctx.ledger.complete_submission(run.run_id, job_id, f"/runs/r1/slurm-{job_id}.out")
    run = ctx.ledger.record_info(
        run, JobInfo(job_id, JobState.COMPLETED, exit_code=0, node="tcn[1-2]"), "sacct"
    )
    return ctx, run


def test_show_asks_sacct_for_the_steps_once_and_keeps_them(tmp_path: Path) -> None:
    _, job = recorded("torchrun")
    shell = ReplayShell({"sacct": [command_result("sacct_steps_torchrun")]})
    ctx, run = ended_run(tmp_path, shell, job)
    first = run_detail(ctx, run)["nodes"]
    assert [row["node"] for row in first["per_node"]] == ["tcn1", "tcn2"]
    assert first["note"] is None and first["step"] == f"{job}.0"
    assert shell.calls == [slurm.sacct_steps_argv(job)]
    again = run_detail(ctx, ctx.ledger.get_run(run.run_id))
    assert again["nodes"] == first and len(shell.calls) == 1  # from the ledger now
    assert "sacct_steps" not in again["facts"]


def test_show_without_the_login_node_still_shows_the_run_and_says_why(tmp_path: Path) -> None:
    _, job = recorded("torchrun")
    ctx, run = ended_run(tmp_path, FailingShell({}), job)
    section = run_detail(ctx, run)["nodes"]
    assert section["nodes"] == ["tcn1", "tcn2"] and section["per_node"] == []
    assert section["note"] == (
        "sacct could not be asked: Could not connect to the login node: timed out"
    )
    assert "sacct_steps" not in ctx.ledger.facts(run.run_id)  # asked again next time
