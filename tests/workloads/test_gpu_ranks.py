"""GPU utilisation per rank under DDP (issue 18): each rank's sampled epoch mean reaches rank 0
as `gpu_util_r<rank>`, with their mean as `gpu_util_pct`, and where each rank's GPU is. Run on
the CPU by 2 gloo processes under torchrun, with the sampled values injected (no GPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ddp
from jobrun import WORKLOADS, no_gpu_env

# Each rank "sampled" 10 × (rank + 1) percent, except rank 1 in the second epoch: nothing.
PROGRAM = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import ddp

dist = ddp.Dist.from_env()
dist.start(__import__("torch").device("cpu"))
first = dist.gpu_numbers({"gpu_util_pct": 10.0 * (dist.rank + 1)}, on_gpu=True)
second = dist.gpu_numbers({} if dist.rank == 1 else {"gpu_util_pct": 30.0}, on_gpu=True)
cpu = dist.gpu_numbers({"x": 1.0}, on_gpu=False)
placement = dist.gpu_placement(on_gpu=True)
with open(f"{sys.argv[2]}/rank{dist.rank}.json", "w") as out:  # ranks share one stdout
    json.dump([dist.rank, first, second, cpu, placement], out)
dist.stop()
"""


def test_each_ranks_epoch_mean_is_gathered_to_every_rank_for_rank_0_to_write(
    tmp_path: Path,
) -> None:
    program = tmp_path / "gather.py"
    program.write_text(PROGRAM)
    env = {**no_gpu_env(), "OMP_NUM_THREADS": "1", "SLURMD_NODENAME": "gcn7"}
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(program), str(WORKLOADS), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    results = sorted(json.loads(path.read_text()) for path in tmp_path.glob("rank*.json"))
    assert [r[0] for r in results] == [0, 1]
    for _, first, second, cpu, placement in results:
        assert first == {"gpu_util_pct": 15.0, "gpu_util_r0": 10.0, "gpu_util_r1": 20.0}
        assert second == {"gpu_util_pct": 30.0, "gpu_util_r0": 30.0}  # rank 1 sampled nothing
        assert cpu == {"x": 1.0}  # ranks on the CPU: no collective, their own numbers
        assert placement == [
            {"rank": 0, "node": "gcn7", "local_rank": 0},
            {"rank": 1, "node": "gcn7", "local_rank": 1},
        ]


def test_a_single_process_keeps_its_numbers_as_before() -> None:
    single = ddp.Dist()
    assert single.gpu_numbers({"gpu_util_pct": 42.0}, on_gpu=True) == {"gpu_util_pct": 42.0}
    assert single.gpu_numbers({}, on_gpu=True) == {}
    assert single.gpu_placement(on_gpu=True) == []
    assert os.environ.get("WORLD_SIZE") in (None, "1")
