"""The golden job scripts (tests/golden/*.sh: the renderer's committed output, compared with it in
tests/test_render.py) are valid input for the real Slurm: each one goes through
`sbatch --test-only` on the test cluster, as the test user.

Rules, so that no golden is ever skipped (in CI a skip fails the run):
- What a golden asks that this small test cluster cannot give (Snellius's project account,
  a gpu_a100 node's share of cores and memory, the scratch-node feature) is replaced ON THE
  COMMAND LINE, per golden, in STAND_INS. sbatch lets command-line options override #SBATCH
  lines but still parses every #SBATCH line, so a broken directive fails either way. Each
  stand-in must replace a directive the golden has.
- A golden for a partition the cluster lacks fails here until STAND_INS gives it a
  `--partition=` stand-in (the cluster has rome, staging, gpu_a100, gpu_h100, multi and
  gpu_multi).
- The goldens are rendered for the run directory /home/u/hpcjob/runs/r000001, and
  `sbatch --test-only` accepts an --output in a folder that does not exist (the real job would
  then fail, 0:53, with the reason only in slurmd's log). So each script is checked with that run
  directory replaced by a real one of the test user's, made beforehand as hpcjob makes it before
  sbatch, and its --output must lie inside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import REPO, UserSession

pytestmark = pytest.mark.slurm

GOLDEN = REPO / "tests" / "golden"
GOLDEN_RUN_DIR = "/home/u/hpcjob/runs/r000001"
STAND_INS = {
    # Snellius: project account ecf1234, 18 cores and 120 GiB per A100, --constraint=scratch-node
    # (an empty --constraint drops the feature request).
    "train-snellius": ["--account=hpctest_acct", "--cpus-per-task=1", "--mem=1G", "--constraint="],
    # Several ranks (issue 18): the test nodes have 2 cores and 2 GPUs; gpu_multi and multi span
    # two nodes each.
    "train-1x4-gpu": ["--cpus-per-task=2", "--gpus-per-node=2"],
    "train-2x4-gpu": ["--partition=gpu_multi", "--cpus-per-task=2", "--gpus-per-node=2"],
    "train-2x4-cpu": ["--partition=multi", "--cpus-per-task=2"],
}


def directives(script: str) -> dict[str, str]:
    """The script's `#SBATCH --key=value` lines (render.sbatch_line's form)."""
    found = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            found[key] = value.strip('"')
    return found


def test_every_stand_in_is_for_a_golden() -> None:
    assert set(STAND_INS) <= {p.stem for p in GOLDEN.glob("*.sh")}


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.sh")), ids=lambda p: p.stem)
def test_golden_script_passes_sbatch_test_only(
    golden: Path, user: UserSession, cluster: dict[str, str]
) -> None:
    script = golden.read_text()
    asked = directives(script)
    stand_ins = STAND_INS.get(golden.stem, [])
    for flag in stand_ins:
        key = flag[2:].partition("=")[0]
        assert key in asked, f"{golden.name}: the stand-in {flag} replaces nothing"
    options = {**asked, **dict(f[2:].partition("=")[::2] for f in stand_ins)}
    partition = options.get("partition", cluster["HPCJOB_TEST_DEFAULT_PARTITION"])
    assert partition in cluster["HPCJOB_TEST_PARTITIONS"].split(","), (
        f"{golden.name} asks for partition {partition}, which the test cluster lacks: give it a "
        "--partition stand-in in STAND_INS"
    )

    assert GOLDEN_RUN_DIR in script, f"{golden.name} is not rendered for {GOLDEN_RUN_DIR}"
    run_dir = user.home / "runs" / golden.stem
    made = user.as_user("mkdir", "-p", str(run_dir))
    assert made.returncode == 0, made.stderr
    output = Path(asked["output"].replace(GOLDEN_RUN_DIR, str(run_dir)))
    assert output.parent == run_dir, f"{golden.name}: --output is not in the run directory"
    writable = user.as_user("test", "-d", str(output.parent), "-a", "-w", str(output.parent))
    assert writable.returncode == 0, f"{output.parent} is not a folder the job can write"
    job_script = run_dir / "job.sh"
    job_script.write_text(script.replace(GOLDEN_RUN_DIR, str(run_dir)))
    subprocess.run(["chown", user.cluster["HPCJOB_TEST_USER"], str(job_script)], check=True)

    checked = user.as_user("sbatch", "--test-only", *stand_ins, str(job_script))
    assert checked.returncode == 0, checked.stderr
    # sbatch read the script's partition (a lost directive would land on the default one).
    started = (
        r"^sbatch: Job \d+ to start at \S+ using \d+ processors on nodes \S+ "
        rf"in partition {partition}$"
    )
    assert re.search(started, checked.stderr, re.MULTILINE), checked.stderr


def test_sbatch_test_only_refuses_a_broken_directive(user: UserSession) -> None:
    """The check above can fail: a directive sbatch cannot read is refused even by --test-only,
    and even where the command line gives the same option."""
    script = user.home / "broken.sh"
    script.write_text("#!/bin/bash\n#SBATCH --partition=rome\n#SBATCH --mem=12 0G\ntrue\n")
    subprocess.run(["chown", user.cluster["HPCJOB_TEST_USER"], str(script)], check=True)
    checked = user.as_user("sbatch", "--test-only", "--mem=1G", str(script))
    assert checked.returncode != 0
    assert "Invalid directive found in batch script" in checked.stderr, checked.stderr
