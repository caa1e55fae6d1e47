"""Check what a job can see: host, Python, torch, CUDA, GPUs, and how fast each GPU multiplies.

    python workloads/check_gpu.py --expect-gpus 1 --output-dir .

The job template passes --expect-gpus with the number of GPUs the job asked for; without it the
number is read from Slurm's variables. Exit status: 0 when every GPU asked for is visible (or
none was asked for: "no GPU requested, CPU only"); 1 when GPUs were asked for but torch sees
fewer, or torch is missing, with the likely reason. Facts go through the report channel.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import provenance
from report import Report

SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE",
    "SLURM_GPUS",
    "SLURM_GPUS_ON_NODE",
    "SLURM_GPUS_PER_NODE",
    "SLURM_GPUS_PER_TASK",
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "SLURM_TRES_PER_TASK",
    "SLURM_TRES_PER_NODE",
)


def _count(spec: str) -> int:
    """GPUs in a Slurm GPU spec: "2", "a100:2", "gpu:a100:2", "gres/gpu:1", "gres:gpu:a100:1"."""
    total = 0
    for item in spec.split(","):
        if "gpu" not in item and not re.fullmatch(r"\s*(\w+:)?\d+\s*", item):
            continue  # e.g. "cpu=4" in SLURM_TRES_PER_TASK
        found = re.search(r"(?:[:=]|^)(\d+)\s*$", item.strip())
        total += int(found.group(1)) if found else 1
    return total


def requested_gpus(env: Mapping[str, str]) -> int:
    """The number of GPUs a Slurm job asked for, from its environment (0 outside Slurm)."""
    for name in (
        "SLURM_GPUS_ON_NODE",
        "SLURM_GPUS",
        "SLURM_GPUS_PER_NODE",
        "SLURM_GPUS_PER_TASK",
        "SLURM_TRES_PER_TASK",
        "SLURM_TRES_PER_NODE",
    ):
        value = env.get(name, "").strip()
        if value and (count := _count(value)):
            return count
    ids = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or ""
    return len([i for i in ids.split(",") if i.strip()])


def gpu_facts(torch: Any, size: int) -> list[dict[str, Any]]:
    """Name, memory and measured matmul TFLOP/s of each visible GPU."""
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "tflops_fp32": matmul_tflops(torch, index, torch.float32, size),
                "tflops_bf16": matmul_tflops(torch, index, torch.bfloat16, size),
            }
        )
    return gpus


def matmul_tflops(torch: Any, index: int, dtype: Any, size: int, repeats: int = 10) -> float | None:
    """TFLOP/s of a size×size matmul on GPU `index` after a warm-up; None if the GPU cannot
    (e.g. no bf16 on old cards, or too little memory on a small MIG slice)."""
    try:
        return _time_matmul(torch, torch.device("cuda", index), dtype, size, repeats)
    except RuntimeError as exc:
        print(f"  matmul probe ({dtype}) failed on GPU {index}: {exc}")
        return None


def _time_matmul(torch: Any, device: Any, dtype: Any, size: int, repeats: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return round(2 * size**3 * repeats / seconds / 1e12, 2)


def explain_missing(torch: Any, wanted: int, seen: int, env: Mapping[str, str]) -> str:
    """Why fewer GPUs are visible than the job asked for, in the user's words."""
    plural = "GPU" if wanted == 1 else "GPUs"
    head = f"this job asked for {wanted} {plural} but " + (
        "none is visible" if seen == 0 else f"only {seen} visible"
    )
    return head + ": " + "; ".join(missing_reasons(torch, env))


def missing_reasons(torch: Any, env: Mapping[str, str]) -> list[str]:
    """The likely reasons torch sees fewer GPUs than were asked for (train.py says them too)."""
    reasons = []
    if torch.version.cuda is None:
        reasons.append(
            f"torch {torch.__version__} is a CPU-only build: install a CUDA build "
            "of torch in the job's environment"
        )
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        reasons.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    elif visible is None:
        reasons.append(
            "CUDA_VISIBLE_DEVICES is not set: Slurm gave this job no GPU "
            "(was --gpus or --gres=gpu:N passed to sbatch, on a GPU partition?)"
        )
    if not reasons:
        reasons.append(
            "torch.cuda.is_available() is False: check the NVIDIA driver "
            "(nvidia-smi) and the CUDA version torch was built for "
            f"({torch.version.cuda})"
        )
    return reasons


def base_facts(env: Mapping[str, str]) -> dict[str, Any]:
    """Host, Python, CPUs this process may use, and the job's Slurm variables (lower-cased)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "cpus_available": cpus,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        **{k.lower(): env[k] for k in SLURM_VARIABLES if k in env},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Report the GPUs (and software) a job can see.")
    p.add_argument(
        "--expect-gpus",
        type=int,
        default=None,
        help="GPUs the job asked for (default: read from Slurm's variables)",
    )
    p.add_argument("--output-dir", default=".")
    p.add_argument("--matmul-size", type=int, default=4096, help="matrix size of the probe")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # batch jobs buffer stdout otherwise
    env = os.environ if env is None else env
    report = Report(args.output_dir)
    facts = base_facts(env)
    wanted = args.expect_gpus if args.expect_gpus is not None else requested_gpus(env)
    facts["gpus_requested"] = wanted
    print(f"host {facts['hostname']}, Python {facts['python']} ({sys.executable})")
    try:
        import torch
    except ImportError as exc:
        provenance.write(args.output_dir)
        report.facts(**facts, torch=None)
        print(
            f"Error: torch cannot be imported in this Python ({exc}); install the workload "
            "requirements (workloads/requirements.txt) into the job's environment",
            file=sys.stderr,
        )
        return 1
    provenance.write(args.output_dir)  # after importing torch, so its CUDA build is known
    return check_torch(torch, args, env, facts, report, wanted)


def check_torch(
    torch: Any,
    args: argparse.Namespace,
    env: Mapping[str, str],
    facts: dict[str, Any],
    report: Report,
    wanted: int,
) -> int:
    available = torch.cuda.is_available()
    seen = torch.cuda.device_count() if available else 0
    facts.update(
        torch=str(torch.__version__),
        cuda_build=torch.version.cuda,
        cuda_available=available,
        gpu_count=seen,
    )
    print(
        f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
        f"cuda available: {available}, GPUs visible: {seen}, "
        f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}"
    )
    for key in SLURM_VARIABLES:
        if key in env:
            print(f"  {key}={env[key]}")
    if seen:
        gpus = gpu_facts(torch, args.matmul_size)
        for g in gpus:
            print(
                f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, matmul "
                f"{g['tflops_fp32']} TFLOP/s fp32, {g['tflops_bf16']} TFLOP/s bf16"
            )
        facts.update(
            gpu_names=[g["name"] for g in gpus],
            gpu_memory_gib=[g["memory_gib"] for g in gpus],
            tflops_fp32=[g["tflops_fp32"] for g in gpus],
            tflops_bf16=[g["tflops_bf16"] for g in gpus],
        )
    report.facts(**facts)
    if wanted > seen:
        print(f"Error: {explain_missing(torch, wanted, seen, env)}", file=sys.stderr)
        return 1
    if wanted == 0 and seen == 0:
        print("no GPU requested, CPU only")
    else:
        print(f"OK: {seen} GPU(s) visible, {wanted} requested")
    return 0


if __name__ == "__main__":
    sys.exit(main())
