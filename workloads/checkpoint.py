"""Training checkpoints on disk: atomic writes, `last.pt` plus one file per epoch.

A job killed at its time limit, or a node that dies, must never leave a half-written file
where the next run looks, so every write goes to a temporary file that is renamed into place.
Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`, which cannot run code from a file of unknown origin.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"


class Checkpoints:
    """The checkpoint directory of one run."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(self, state: dict[str, Any], tag: str | None = None) -> Path:
        """Write `state` as last.pt (atomically); with `tag`, also keep it as <tag>.pt."""
        self.directory.mkdir(parents=True, exist_ok=True)
        last = self.directory / LAST
        tmp = self.directory / f".{LAST}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, last)
        if tag is not None:
            self._keep(last, self.directory / f"{tag}.pt")
        return last

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
