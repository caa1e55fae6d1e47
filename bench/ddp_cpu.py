"""Throughput of the built-in train at 1 and 2 CPU processes (issue 18).

    .venv/bin/python bench/ddp_cpu.py [--repeats 3] [--train 4096]

Generates synthetic PCAM (official flavour) under bench/out/ddp/ (gitignored), then trains the
default MLP for 2 epochs at global batch 256 in three ways, interleaved over the repeats:
1 process with torch's default threads; 1 process with OMP_NUM_THREADS=1; `torchrun
--nproc-per-node 2` (gloo, OMP_NUM_THREADS=1 per rank, as torchrun sets it). A fourth way runs the
two ranks as a job does, each under workloads/rank.py. Reports the
median images/s of epoch 2 (the first epoch pays imports and first reads) from metrics.jsonl,
and the scaling efficiency of 2 processes against 1 single-threaded one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "workloads" / "train.py"
RANK = ROOT / "workloads" / "rank.py"
OUT = ROOT / "bench" / "out" / "ddp"
ARGS = ["--epochs", "2", "--batch-size", "256", "--seed", "0"]
TORCHRUN = ("--nproc-per-node", "2")
MODES = {
    "1 process, default threads": ([sys.executable, str(TRAIN)], {}),
    "1 process, 1 thread": ([sys.executable, str(TRAIN)], {"OMP_NUM_THREADS": "1"}),
    "2 processes (torchrun, gloo), 1 thread each": (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", *TORCHRUN, str(TRAIN)],
        {"OMP_NUM_THREADS": "1"},
    ),
    # What a job runs: each rank under workloads/rank.py (its own log; rank 0's also echoed).
    "2 processes, each under rank.py (as in a job)": (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            *TORCHRUN,
            "--no-python",
            sys.executable,
            str(RANK),
            "run",
            "--dir",
            str(OUT / "ranks"),
            "--",
            sys.executable,
            str(TRAIN),
        ],
        {"OMP_NUM_THREADS": "1"},
    ),
}


def images_per_s(argv: list[str], env: dict[str, str], data: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    cmd = [*argv, "--data-dir", str(data), *ARGS, "--output-dir", str(out)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r.get("epoch") == 2]
    return float(epochs[-1]["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", type=int, default=4096)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "workloads"))
    import synth

    data = OUT / "data"
    if not (data / "synth.json").is_file():
        synth.generate(data, "official", {"train": a.train, "valid": 512, "test": 8}, seed=0)
    found: dict[str, list[float]] = {name: [] for name in MODES}
    for _ in range(a.repeats):
        for name, (argv, env) in MODES.items():
            found[name].append(images_per_s(argv, env, data, OUT / "run"))
    medians = {name: statistics.median(v) for name, v in found.items()}
    base = medians["1 process, 1 thread"]
    print(f"{a.train} train images, batch 256, default MLP, epoch 2; medians of {a.repeats}")
    print("| mode | images/s | runs | × 1 process, 1 thread | scaling efficiency |")
    print("|---|---:|---|---:|---:|")
    for name, value in medians.items():
        procs = 2 if name.startswith("2") else 1
        runs = ", ".join(f"{v:.0f}" for v in found[name])
        ratio = value / base
        print(f"| {name} | {value:.0f} | {runs} | {ratio:.2f} | {ratio / procs:.2f} |")


if __name__ == "__main__":
    main()
