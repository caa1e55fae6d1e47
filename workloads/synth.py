"""Synthetic PCAM: files in the exact layout of the real data, of any size, in either flavour.

`official` mirrors the published PCAM (uint8, 50/50); `course` mirrors the copy students get on
Snellius (float32, ~83/17, with NaNs, infinities, values far above 255, all-black and all-white
images). Class 1 carries a signal an MLP learns in an epoch or two (a brighter red, less blue
centre square, as tumour tissue sits in the centre 32×32 of a real positive patch), so a short run
shows falling loss and high AUC. Every injected fault is recorded in `synth.json` with its index.

    python workloads/synth.py OUT_DIR --flavour course --train 4096 --valid 512 --test 512 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FLAVOURS = ("official", "course")
SPLITS = ("train", "valid", "test")
IMAGE_SHAPE = (96, 96, 3)
FAULT_KINDS = ("nan", "inf", "big", "black", "white")
CHUNK = 512  # images generated and written at a time: bounded memory for any size
COURSE_POSITIVE_FRACTION = 0.17
MANIFEST = "synth.json"


def file_name(split: str, xy: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_{xy}.h5"


def make_labels(rng: np.random.Generator, n: int, flavour: str) -> np.ndarray:
    """Labels with an exact class ratio (50/50 or 17% positive), in random order."""
    fraction = 0.5 if flavour == "official" else COURSE_POSITIVE_FRACTION
    labels = np.zeros(n, dtype=np.uint8)
    labels[: round(n * fraction)] = 1
    return rng.permutation(labels)


def choose_faults(rng: np.random.Generator, n: int) -> dict[str, list[int]]:
    """Disjoint image indices for each fault kind: 0.5% each, at least one when n ≥ 20."""
    per_kind = max(1, n // 200) if n >= 20 else 0
    picked = rng.choice(n, size=per_kind * len(FAULT_KINDS), replace=False)
    return {
        kind: sorted(int(i) for i in picked[k * per_kind : (k + 1) * per_kind])
        for k, kind in enumerate(FAULT_KINDS)
    }


def make_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Noisy tinted images; positives get a brighter red, dimmer blue centre square."""
    n = len(labels)
    tint = rng.integers(90, 170, size=(n, 1, 1, 3), dtype=np.int16)
    images = rng.integers(-40, 41, size=(n, *IMAGE_SHAPE), dtype=np.int16)
    images += tint
    amplitude = (rng.uniform(6, 30, size=n) * labels).astype(np.int16)[:, None, None]
    images[:, 32:64, 32:64, 0] += amplitude
    images[:, 32:64, 32:64, 2] -= amplitude // 2
    return np.clip(images, 0, 255).astype(np.uint8)


def inject_faults(
    rng: np.random.Generator, chunk: np.ndarray, start: int, faults: dict[str, list[int]]
) -> None:
    """Write the faults whose indices fall in this chunk (float32, modified in place)."""
    stop = start + len(chunk)
    pixels = chunk.shape[1] * chunk.shape[2] * chunk.shape[3]
    for kind, indices in faults.items():
        for i in (i - start for i in indices if start <= i < stop):
            flat = chunk[i].reshape(-1)
            if kind == "black":
                flat[:] = 0.0
            elif kind == "white":
                flat[:] = 255.0
            else:
                where = rng.choice(pixels, size=pixels // 50, replace=False)
                if kind == "nan":
                    flat[where] = np.nan
                elif kind == "inf":
                    flat[where] = np.where(rng.random(len(where)) < 0.5, np.inf, -np.inf)
                else:  # "big": the course copy holds values far above 255
                    flat[where] = rng.uniform(1e3, 1e5, size=len(where))


def write_split(out_dir: Path, split: str, n: int, flavour: str, seed: int) -> dict[str, Any]:
    """Write one split's x and y files chunk by chunk; return its manifest entry."""
    split_rng = np.random.default_rng([seed, SPLITS.index(split)])
    labels = make_labels(split_rng, n, flavour)
    faults = choose_faults(split_rng, n) if flavour == "course" else {k: [] for k in FAULT_KINDS}
    x_dtype = np.uint8 if flavour == "official" else np.float32
    with h5py.File(out_dir / file_name(split, "x"), "w") as fx:
        x = fx.create_dataset("x", shape=(n, *IMAGE_SHAPE), dtype=x_dtype)
        for start in range(0, n, CHUNK):
            rng = np.random.default_rng([seed, SPLITS.index(split), start])
            chunk = make_images(rng, labels[start : start + CHUNK]).astype(x_dtype)
            if flavour == "course":
                inject_faults(rng, chunk, start, faults)
            x[start : start + len(chunk)] = chunk
    y_dtype = np.uint8 if flavour == "official" else np.float32
    with h5py.File(out_dir / file_name(split, "y"), "w") as fy:
        fy.create_dataset("y", data=labels.astype(y_dtype).reshape(n, 1, 1, 1))
    return {"n": n, "positives": int(labels.sum()), "faults": faults}


def generate(out_dir: str | Path, flavour: str, sizes: dict[str, int], seed: int = 0) -> dict:
    """Write the splits in `sizes` (split → image count) and synth.json; return the manifest."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "flavour": flavour,
        "seed": seed,
        "image_shape": list(IMAGE_SHAPE),
        "x_dtype": "uint8" if flavour == "official" else "float32",
        "splits": {s: write_split(out, s, n, flavour, seed) for s, n in sizes.items()},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Write a synthetic PCAM data set.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--flavour", choices=FLAVOURS, default="official")
    p.add_argument("--train", type=int, default=4096)
    p.add_argument("--valid", type=int, default=512)
    p.add_argument("--test", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = {s: getattr(args, s) for s in SPLITS if getattr(args, s) > 0}
    started = time.perf_counter()
    manifest = generate(args.out_dir, args.flavour, sizes, args.seed)
    counts = ", ".join(
        f"{s} {e['n']} ({e['positives']} positive)" for s, e in manifest["splits"].items()
    )
    seconds = time.perf_counter() - started
    print(f"Wrote {args.flavour} PCAM to {args.out_dir}: {counts} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
