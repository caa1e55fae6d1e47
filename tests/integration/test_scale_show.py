"""`show` for a job over several nodes on the real Slurm (issue 18): the nodes, the ranks, and
what each node used, from sacct's record of the launch step (torchrun: one task per node)."""

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
def test_show_lists_both_nodes_four_ranks_and_each_nodes_use(user: UserSession) -> None:
    program = user.home / "allreduce.py"
    program.write_text(ALLREDUCE_PROGRAM)
    shutil.chown(program, user.cluster["HPCJOB_TEST_USER"])
    result = user.hpcjob(
        "submit", "-p", MULTI, "--nodes", "2", "--procs-per-node", "2", "--mem", "1G",
        "--job-name", f"show-{uuid.uuid4().hex[:8]}", "--time", "5", "--wait", "--json", "--",
        "python", str(program),
        timeout=400,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    run = result.json()
    assert run["state"] == "COMPLETED", user.hpcjob("logs", run["run_id"]).stdout

    shown = user.hpcjob("show", run["run_id"], "--json")
    assert shown.exit_code == 0, shown.stderr
    section = shown.json()["nodes"]
    assert section["nodes"] == ["tcn1", "tcn2"]
    assert (section["ranks"], section["procs_per_node"], section["launcher"]) == (4, 2, "torchrun")
    assert section["step"] == f"{run['job_id']}.0", section
    rows = section["per_node"]
    assert [r["node"] for r in rows] == ["tcn1", "tcn2"], section
    for row in rows:
        assert row["ranks"] == 2 and row["cores"] == 2, row
        assert row["cpu_s"] is not None and row["cpu_s"] > 0, row  # torch's import alone
        assert row["cpu_efficiency"] is not None and row["cpu_efficiency"] > 0, row
        assert row["max_rss_bytes"] is not None and row["max_rss_bytes"] > 50 * 1024**2, row
    assert section["mem_requested_bytes"] == 1024**3
    assert "sacct_steps" not in shown.json()["facts"]  # kept, but shown only as this section

    # The same numbers in words; asked of sacct once, then read from the ledger.
    text = user.hpcjob("show", run["run_id"], "--no-script")
    assert text.exit_code == 0, text.stderr
    assert "Nodes and ranks:" in text.stdout
    assert "  nodes     tcn1, tcn2" in text.stdout
    assert "  ranks     4 (2 nodes × 2 per node, torchrun)" in text.stdout
    tcn1, tcn2 = (f"{r['cpu_efficiency']:.0%}" for r in rows)
    assert f"  CPU       per node: tcn1 {tcn1}, tcn2 {tcn2} (of 2 cores each; step " in text.stdout
    assert "  memory    peak per node: tcn1 " in text.stdout
