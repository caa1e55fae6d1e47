"""Running train.py under `torchrun`: one process per rank, DistributedDataParallel.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/PORT); without them, or with
WORLD_SIZE 1, `Dist` is a single process and every helper here does nothing, so a plain run
behaves exactly as before.

How a DDP run stays equal to a single-process run of the same seed and global batch:
- every rank draws the same global plan of batches from the seed (BlockBatchSampler) and takes
  its contiguous slice of each global batch (`BlockBatchSampler.shard`): together the ranks
  see exactly the single process's batches;
- each rank's loss is its slice's summed loss × world / global batch size, so DDP's average of
  the ranks' gradients is the gradient of the global batch's mean loss, also for a last batch
  that does not split evenly;
- every rank seeds the same RNGs, so the model starts equal (DDP also broadcasts rank 0's
  weights) and the ranks' RNG streams stay equal, which is why rank 0's RNG state in a
  checkpoint is every rank's. Dropout masks therefore repeat across ranks (row i of each slice
  gets the same mask) and differ from the single process's: with dropout > 0 a DDP run is
  statistically, not numerically, equal to a single-process one;
- the ranks agree before every batch, in one all_reduce, on the global batch size and on
  whether a stop signal arrived on any rank, so all ranks stop at the same batch.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

# Order of the values agreed on before each batch.
_ROWS, _USR1, _TERM = 0, 1, 2
# The epoch metric of GPU utilisation (percent busy), and each rank's under DDP on GPUs.
GPU_UTIL, GPU_UTIL_RANK = "gpu_util_pct", "gpu_util_r"


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, local rank (GPU index on its node), world size."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> Dist:
        """The rank torchrun gave this process; a plain run is rank 0 of 1."""
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise ValueError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers: {exc}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"bad torchrun variables: RANK={rank} WORLD_SIZE={world}")
        return cls(rank, local, world)

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (nccl on CUDA, gloo on CPU); the device this rank uses."""
        if not self.active:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def stop(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ValueError(
                f"--batch-size {batch_size} is the global batch and must divide evenly over the "
                f"{self.world} processes: use a multiple of {self.world}"
            )

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """`values` summed over the ranks (float64)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def agree(
        self, rows: int, signal_name: str | None, device: torch.device
    ) -> tuple[int, str | None]:
        """Before a batch: the global batch size and the stop signal of any rank (USR1 wins)."""
        if not self.active:
            return rows, signal_name
        values = [0.0, 0.0, 0.0]
        values[_ROWS] = rows
        values[_USR1] = float(signal_name == "SIGUSR1")
        values[_TERM] = float(signal_name == "SIGTERM")
        total = self.sum(values, device)
        name = "SIGUSR1" if total[_USR1] else "SIGTERM" if total[_TERM] else None
        return int(total[_ROWS]), name

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.active:
            return [obj]
        found: list[Any] = [None] * self.world
        torch_dist.all_gather_object(found, obj)
        return found

    def gpu_numbers(self, numbers: dict[str, float], on_gpu: bool) -> dict[str, float]:
        """An epoch's GPU numbers for rank 0 to write. Under DDP on GPUs each rank samples its
        own GPU: every rank's epoch mean, as `gpu_util_r<rank>`, and `gpu_util_pct` their
        mean. A single process, or ranks on the CPU, keep their own (every rank calls this
        alike: it is a collective)."""
        if not (self.active and on_gpu):
            return numbers
        found = self.gather(numbers.get(GPU_UTIL))
        per_rank = {f"{GPU_UTIL_RANK}{rank}": v for rank, v in enumerate(found) if v is not None}
        if not per_rank:
            return {}
        return {GPU_UTIL: sum(per_rank.values()) / len(per_rank), **per_rank}

    def gpu_placement(self, on_gpu: bool) -> list[dict[str, Any]]:
        """Where each rank's GPU is (rank 0 writes it as the fact `gpu_ranks`): its node
        (Slurm's name, else the host's) and local rank, the GPU's index on that node. A
        collective under DDP on GPUs; empty otherwise."""
        if not (self.active and on_gpu):
            return []
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        found = self.gather({"rank": self.rank, "node": node, "local_rank": self.local_rank})
        return sorted(found, key=lambda place: int(place["rank"]))

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model DDP-wrapped (gradients averaged over the ranks), or as is."""
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
