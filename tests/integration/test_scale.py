"""Several nodes on the real Slurm (issue 18): torchrun under srun across the two slurmd nodes of
the `multi` partition (tcn1, tcn2), ranks all-reducing with gloo; a request for more nodes than
the partition has is refused before sbatch, with the numbers."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.helpers import ALLREDUCE_PROGRAM
from tests.integration.support import MULTI, UserSession, require_multi_partition


@pytest.fixture(autouse=True)
def multi_node_cluster(cluster: dict[str, str]) -> None:
    require_multi_partition()


@pytest.mark.slurm
def test_torchrun_across_two_nodes_all_reduces_over_four_ranks(user: UserSession) -> None:
    program = user.home / "allreduce.py"
    program.write_text(ALLREDUCE_PROGRAM)
    shutil.chown(program, user.cluster["HPCJOB_TEST_USER"])
    name = f"scale-{uuid.uuid4().hex[:8]}"

    # More nodes than the partition has: refused before anything reaches Slurm.
    refused = user.hpcjob(
        "submit", "-p", MULTI, "--nodes", "3", "--procs-per-node", "2", "--job-name", name,
        "--time", "5", "--", "python", str(program),
    )  # fmt: skip
    assert refused.exit_code == 2, refused.stderr
    assert f"--nodes 3 is more than {MULTI} has (2 nodes)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert user.hpcjob("runs", "--json").json() == []
    assert name not in user.as_user("squeue", "--me", "-h", "-o", "%j").stdout.split()

    result = user.hpcjob(
        "submit", "-p", MULTI, "--nodes", "2", "--procs-per-node", "2", "--launcher", "torchrun",
        "--job-name", name, "--time", "5", "--wait", "--json", "--", "python", str(program),
        timeout=400,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    logs = user.hpcjob("logs", run["run_id"]).stdout
    assert run["state"] == "COMPLETED", logs
    assert "allreduce sum=10 world=4" in logs  # 1 + 2 + 3 + 4 from ranks 0-3
    assert "launcher:   torchrun, 2 node(s) x 2 processes, rendezvous tcn1:" in logs
    # One torchrun on each node: ranks ran on both (SLURM_NODEID 0 and 1; torchrun's rendezvous
    # decides which node gets rank 0). The job's output is rank 0's, each rank's is in its file.
    assert "rank 0 on" in logs and "rank 3 on" not in logs, logs
    ranks = [user.hpcjob("logs", run["run_id"], "--rank", str(r)).stdout for r in range(4)]
    assert all(f"rank {r} on" in text for r, text in enumerate(ranks)), ranks
    assert any("node 0" in t for t in ranks) and any("node 1" in t for t in ranks), ranks


@pytest.mark.slurm
def test_srun_starts_every_rank_with_what_torch_needs(user: UserSession) -> None:
    program = user.home / "allreduce.py"
    program.write_text(ALLREDUCE_PROGRAM)  # init_process_group("gloo"): torch's env:// variables
    shutil.chown(program, user.cluster["HPCJOB_TEST_USER"])
    result = user.hpcjob(
        "submit", "-p", MULTI, "--nodes", "2", "--procs-per-node", "2", "--launcher", "srun",
        "--time", "5", "--wait", "--json", "--", "python", str(program), timeout=400,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    logs = user.hpcjob("logs", run["run_id"]).stdout
    assert run["state"] == "COMPLETED", logs
    assert "allreduce sum=10 world=4" in logs and "launcher:   srun, 2 node(s) x 2 tasks" in logs
    # srun's ranks go in node order: 0 and 1 on the first node, 2 and 3 on the second.
    assert "node 1" in user.hpcjob("logs", run["run_id"], "--rank", "2").stdout
