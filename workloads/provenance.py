"""What a job ran on and with: node, GPUs, driver/CUDA, Python, torch, packages, data, seed.

    python workloads/provenance.py --output-dir DIR [--data-dir DIR] [--seed N]

`write()` puts it into `<output-dir>/provenance.json`, which hpcjob reads into its ledger when the
run ends; train.py, eda.py and check_gpu.py call it first thing, and a template of your own can
run this file. Everything here is cheap (no torch import of its own, no `pip` subprocess) and a
failure to learn one thing never stops the job. `GpuSampler` samples GPU utilisation while
training runs on CUDA. Standard library only: workloads never import hpcjob.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

FILE_NAME = "provenance.json"
_MIB = 1024 * 1024
_MAX_DATA_FILES = 64


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _run(argv: list[str], timeout: float = 10) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpus() -> list[dict[str, Any]]:
    """The GPUs nvidia-smi lists (none without nvidia-smi)."""
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,memory.total,driver_version,uuid",
            "--format=csv,noheader",
        ]
    )
    found = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            index, name, memory, driver, uuid = parts
            found.append(
                {"index": index, "name": name, "memory": memory, "driver": driver, "uuid": uuid}
            )
    return found


def cuda_versions() -> dict[str, Any]:
    """The driver's CUDA version (nvidia-smi's header) and torch's, if torch is already loaded."""
    header = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([\d.]+)", header)
    torch = sys.modules.get("torch")
    info: dict[str, Any] = {
        "driver_cuda": match.group(1) if match else None,
        "torch_cuda": getattr(getattr(torch, "version", None), "cuda", None),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["torch_devices"] = [
                    torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
                ]
        except Exception as exc:  # a broken driver must not stop the job
            info["torch_error"] = str(exc)[:200]
    return info


def packages() -> list[str]:
    """`pip freeze` of the running interpreter's environment (the job's venv), from the installed
    distributions' metadata: the same name==version lines, without running pip."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return sorted(seen.values(), key=str.lower)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and the sha256 of the first and last MiB: cheap for a 17 GB HDF5 file."""
    stat = path.stat()
    head_tail = hashlib.sha256()
    with open(path, "rb") as handle:
        head_tail.update(handle.read(_MIB))
        if stat.st_size > _MIB:
            handle.seek(max(_MIB, stat.st_size - _MIB))
            head_tail.update(handle.read(_MIB))
    mtime = datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
    sha = head_tail.hexdigest()
    combined = hashlib.sha256(f"{stat.st_size}\0{int(stat.st_mtime)}\0{sha}".encode())
    return {
        "name": path.name,
        "size": stat.st_size,
        "mtime": mtime.replace("+00:00", "Z"),
        "head_tail_sha256": sha,
        "fingerprint": combined.hexdigest()[:16],
    }


def data_files(data_dir: Path | None) -> list[dict[str, Any]]:
    if data_dir is None or not data_dir.is_dir():
        return []
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    found = []
    for path in files[:_MAX_DATA_FILES]:
        try:
            found.append(file_fingerprint(path))
        except OSError as exc:
            found.append({"name": path.name, "error": exc.strerror})
    return found


def collect(data_dir: Path | None = None, seed: int | None = None) -> dict[str, Any]:
    """Everything provenance.json holds."""
    torch = sys.modules.get("torch")
    return {
        "recorded_at": _now(),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),  # Slurm's name
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "cpus_on_node": os.environ.get("SLURM_CPUS_ON_NODE"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "venv": os.environ.get("VIRTUAL_ENV"),
        "torch": getattr(torch, "__version__", None) or package_version("torch"),
        "numpy": package_version("numpy"),
        "gpus": gpus(),
        "cuda": cuda_versions(),
        "pip_freeze": packages(),
        "data_dir": str(data_dir) if data_dir else None,
        "data_files": data_files(data_dir),
        "seed": seed,
    }


def write(
    output_dir: str | Path, data_dir: str | Path | None = None, seed: int | None = None
) -> Path:
    """Write provenance.json into `output_dir` (atomically); never raises for a missing fact."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = collect(Path(data_dir) if data_dir else None, seed)
    except Exception as exc:  # provenance must never fail the job
        data = {"error": f"{type(exc).__name__}: {exc}"[:300], "recorded_at": _now()}
    path = out / FILE_NAME
    tmp = out / f".{FILE_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


class GpuSampler:
    """Samples one CUDA device's utilisation (percent busy) every `interval` seconds in a daemon
    thread: torch.cuda.utilization (needs pynvml) or else nvidia-smi."""

    def __init__(self, torch: Any, index: int, interval: float = 2.0) -> None:
        self.torch, self.index, self.interval = torch, index, interval
        self.epoch_samples: list[float] = []
        self.all_samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    @classmethod
    def for_device(cls, device: Any, interval: float = 2.0) -> GpuSampler | None:
        """A running sampler for a CUDA device; None on CPU or where nothing can be read."""
        if getattr(device, "type", None) != "cuda":
            return None
        import torch

        sampler = cls(torch, device.index or 0, interval)
        if sampler.sample() is None:
            return None
        sampler._thread.start()
        return sampler

    def sample(self) -> float | None:
        value: float | None = None
        try:
            value = float(self.torch.cuda.utilization(self.index))
        except Exception:  # no pynvml: ask nvidia-smi
            out = _run(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    f"--id={self._physical_index()}",
                ]
            )
            try:
                value = float((out or "").split()[0])
            except (IndexError, ValueError):
                value = None
        if value is not None:
            with self._lock:
                self.epoch_samples.append(value)
                self.all_samples.append(value)
        return value

    def _physical_index(self) -> str:
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        return visible[self.index] if self.index < len(visible) and visible[0] else str(self.index)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def epoch_numbers(self) -> dict[str, float]:
        """The epoch's mean utilisation (a metric), and a fresh start for the next epoch."""
        with self._lock:
            samples, self.epoch_samples = self.epoch_samples, []
        if not samples:
            value = self.sample()
            samples = [] if value is None else [value]
            with self._lock:
                self.epoch_samples = []
        return {"gpu_util_pct": sum(samples) / len(samples)} if samples else {}

    def summary(self) -> dict[str, Any]:
        """Facts for the whole run."""
        with self._lock:
            samples = list(self.all_samples)
        if not samples:
            return {}
        return {
            "gpu_util_mean_pct": round(sum(samples) / len(samples), 1),
            "gpu_util_max_pct": max(samples),
            "gpu_util_samples": len(samples),
        }

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write provenance.json for this job.")
    parser.add_argument("--output-dir", type=Path, default=Path("."))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    print(f"provenance: {write(args.output_dir, args.data_dir, args.seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
