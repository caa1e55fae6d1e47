"""A user's own project launched with torchrun on the real Slurm (issue 18): the project's
workload `train` declares `launcher = "torchrun"` in hpcjob.toml and runs `python ddp_sum.py`; with
`--nodes 2 --procs-per-node 2` on the two-node partition `multi` (tcn1, tcn2) its four ranks
all-reduce with gloo and rank 0 writes the sum to $HPCJOB_METRICS."""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from typing import Any

import pytest

from tests.helpers import ddp_project
from tests.integration.support import MULTI, UserSession, require_multi_partition


@pytest.fixture
def project(user: UserSession) -> UserSession:
    """The DDP project in the test user's folder (theirs, .git included), hpcjob run inside it."""
    root = ddp_project(user.home / "ddp")
    subprocess.run(["chown", "-R", user.cluster["HPCJOB_TEST_USER"], str(root)], check=True)
    require_multi_partition()
    return dataclasses.replace(user, workdir=root)


def metric(detail: dict[str, Any], key: str) -> dict[int, float]:
    return {m["step"]: m["value"] for m in detail["metrics"] if m["key"] == key}


@pytest.mark.slurm
def test_a_project_workload_declaring_torchrun_runs_four_ranks_on_two_nodes(
    project: UserSession,
) -> None:
    user = project
    name = f"ddp-{uuid.uuid4().hex[:8]}"
    # No --launcher: the workload's `launcher = "torchrun"` is the default with 2 x 2 ranks.
    result = user.hpcjob(
        "submit", "train", "--partition", MULTI, "--nodes", "2", "--procs-per-node", "2",
        "--job-name", name, "--time", "5", "--wait", "--json", timeout=400,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    logs = user.hpcjob("logs", run["run_id"]).stdout
    assert run["state"] == "COMPLETED", logs
    detail = user.hpcjob("show", run["run_id"], "--json").json()
    resources = detail["spec"]["resources"]
    assert (resources["nodes"], resources["procs_per_node"]) == (2, 2)
    assert resources["launcher"] == "torchrun"
    assert detail["spec"]["program"]["launcher"] == "torchrun"  # as hpcjob.toml declares
    # Rank 0's metrics: 1 + 2 + 3 + 4 from ranks 0-3, a world of 4 ranks.
    assert metric(detail, "sum") == {1: 10.0}, logs
    assert metric(detail, "world_size") == {1: 4.0}, logs
    assert "ddp_sum sum=10 world=4" in logs  # rank 0's own line
