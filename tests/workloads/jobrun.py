"""Running a workload as a job would: a fresh Python, the script by path, its own output dir.

Kept out of conftest.py so tests can import it by a name no other conftest.py shadows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKLOADS = Path(__file__).resolve().parents[2] / "workloads"

# Small enough to train in about a second per epoch on two shared cores.
TRAIN_ARGS = ("--epochs", 2, "--batch-size", 64, "--hidden-units", 64, "--seed", 3)
EPOCH_LINE = re.compile(
    r"^Epoch (\d+): Train_Loss = (\S+), Val_Loss = (\S+), Val_Acc = (\S+), Val_AUC = (\S+)$", re.M
)


@dataclass(frozen=True)
class Run:
    """A finished workload process and what it wrote."""

    returncode: int
    stdout: str
    stderr: str
    output_dir: Path

    def records(self) -> list[dict[str, Any]]:
        path = self.output_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def metrics(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "step" in r]

    def epoch_lines(self) -> list[tuple[str, ...]]:
        return EPOCH_LINE.findall(self.stdout)

    def facts(self) -> dict[str, Any]:
        """Every `facts` object the job wrote, merged in order."""
        found: dict[str, Any] = {}
        for record in self.records():
            found.update(record.get("facts", {}))
        return found


def no_gpu_env(**slurm: str) -> dict[str, str]:
    """This environment as a job given no GPU sees it: no Slurm variables but `slurm`, every
    GPU hidden."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", **slurm}


def workload_argv(program: str, *args: object) -> list[str]:
    return [sys.executable, str(WORKLOADS / program), *map(str, args)]


def run_workload(
    program: str,
    output_dir: Path,
    *args: object,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Run:
    """Run a workload as a job would: a fresh Python, the script by path, its own output dir;
    `env` replaces the environment (default: this one)."""
    argv = workload_argv(program, *args, "--output-dir", output_dir)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    return Run(done.returncode, done.stdout, done.stderr, output_dir)


def run_torchrun(
    program: str, output_dir: Path, procs: int, *args: object, timeout: float = 180
) -> Run:
    """Run a workload under `torchrun --standalone --nproc-per-node procs` on the CPU (gloo),
    as the single-process runs it is compared with: no GPU visible, no Slurm variables."""
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(procs), str(WORKLOADS / program), *map(str, args),
        "--output-dir", str(output_dir),
    ]  # fmt: skip
    env = {**no_gpu_env(), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    return Run(done.returncode, done.stdout, done.stderr, output_dir)
