"""Training checkpoints on disk: atomic writes; `last.pt`, `best.pt` and the newest epochs.

After every epoch `last.pt` is written (what `--resume auto` continues from), `best.pt` when the
epoch's validation loss is the lowest so far, and `epoch-NNN.pt` for the `keep` newest epochs
(older ones are removed): a default MLP's checkpoint is 163.5 MiB, so keeping every epoch of a
long run would fill a home quota. The extra files are hard links to `last.pt` where the
filesystem allows, so they cost no second write.

A job killed at its time limit, or a node that dies, must never leave a half-written file
where the next run looks, so every write goes to a temporary file that is renamed into place.
Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`, which cannot run code from a file of unknown origin.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
BEST = "best.pt"
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


class Checkpoints:
    """The checkpoint directory of one run; `keep`: how many of the newest epochs' checkpoints
    are kept besides last.pt and best.pt."""

    def __init__(self, directory: str | Path, keep: int = 0) -> None:
        self.directory = Path(directory)
        self.keep = max(0, keep)

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` as last.pt, atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        last = self.directory / LAST
        tmp = self.directory / f".{LAST}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, last)
        return last

    def save_epoch(self, state: dict[str, Any], epoch: int, best: bool) -> Path:
        """The checkpoint after `epoch`: last.pt, best.pt when `best`, epoch-NNN.pt when epochs
        are kept; then the epochs beyond the newest `keep` are removed."""
        last = self.save(state)
        if best:
            self._keep(last, self.directory / BEST)
        if self.keep:
            self._keep(last, self.directory / f"epoch-{epoch:03d}.pt")
        self.prune()
        return last

    @staticmethod
    def is_best(val_loss: float, earlier: Sequence[float]) -> bool:
        """Whether `val_loss` is finite and lower than every finite one before it (a tie keeps
        the earlier epoch)."""
        if not math.isfinite(val_loss):
            return False
        return all(val_loss < loss for loss in earlier if math.isfinite(loss))

    def epoch_files(self) -> list[Path]:
        """The epoch-NNN.pt files, oldest epoch first."""
        if not self.directory.is_dir():
            return []
        found = [(m, p) for p in self.directory.iterdir() if (m := _EPOCH_FILE.match(p.name))]
        return [p for m, p in sorted(found, key=lambda item: int(item[0].group(1)))]

    def prune(self) -> int:
        """Remove the epoch checkpoints beyond the newest `keep`; how many were removed."""
        files = self.epoch_files()
        old = files[: max(0, len(files) - self.keep)]
        for path in old:
            path.unlink(missing_ok=True)
        return len(old)

    def policy(self) -> str:
        if not self.keep:
            return f"{LAST} and {BEST} (lowest val_loss) only (--keep-checkpoints 0)"
        return (
            f"{LAST}, {BEST} (lowest val_loss) and the {self.keep} newest epoch checkpoints "
            f"(--keep-checkpoints {self.keep})"
        )

    def summary(self, epochs_done: int, best_epoch: int | None) -> dict[str, Any]:
        """What is kept, for the run's facts: the files, how many epochs' checkpoints are not
        (every epoch made one), the best epoch and the policy."""
        return {
            "kept": sorted(p.name for p in self.directory.glob("*.pt")),
            "removed": max(0, epochs_done - len(self.epoch_files())),
            "best_epoch": best_epoch,
            "policy": self.policy(),
        }

    def _keep(self, last: Path, target: Path) -> None:
        """`target` as a hard link to `last` (no second write of a large file), else a copy."""
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:
            tmp.write_bytes(last.read_bytes())
        os.replace(tmp, target)

    def find(self, choice: str) -> Path | None:
        """The checkpoint `--resume` names: none → None, auto → last.pt if any, else a path."""
        if choice == "none":
            return None
        if choice == "auto":
            last = self.directory / LAST
            if last.is_file():
                return last
            print(f"No checkpoint in {self.directory}: starting from scratch", flush=True)
            return None
        path = Path(choice)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {choice}: no such checkpoint file")
        return path

    def load(self, path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain values (weights_only-loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
