"""Exploratory data analysis of a PCAM directory: the program behind `hpcjob submit eda`.

    python workloads/eda.py --data-dir DIR --output-dir . [--splits train,valid,test]

Per split: counts and class balance, pixel statistics, NaN / Inf / out-of-range / all-black /
all-white counts with example indices, an intensity histogram per class, a grid of samples per
class and a grid of the outliers (PNG), and every number in eda.json. The file is streamed in
blocks of --block-size images, so memory stays bounded on the 17 GB course copy.

Splits that are not there are skipped, named in the log and in eda.json's `missing_splits`;
train is required (exit 1 without it, before anything is read), valid and test are optional —
the course's copy has no test split.

"out of range" counts finite pixels outside [0, 255]; "black"/"white" are images whose pixels
are all 0 / all 255 after sanitising (NaN/Inf → 0, clip to [0, 255]), as `filter_data` drops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pcam
import provenance
from report import Report, clean

KINDS = ("nan", "inf", "out_of_range", "black", "white")
EXAMPLES = 20  # example indices kept per fault kind
GRID = 8  # images per row of the PNG grids
OUTLIERS_PER_KIND = 2


@dataclass
class SplitScan:
    """Running totals of one split while its blocks stream past."""

    labels: np.ndarray
    dtype: str
    pixels: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    channel_total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    raw_min: float = float("inf")
    raw_max: float = float("-inf")
    histogram: np.ndarray = field(default_factory=lambda: np.zeros((2, 256), dtype=np.int64))
    fault_images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    fault_pixels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    samples: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=lambda: {0: [], 1: []})
    outliers: list[tuple[str, int, np.ndarray]] = field(default_factory=list)

    def add_block(self, start: int, raw: np.ndarray) -> None:
        n = len(raw)
        flat = raw.reshape(n, -1)
        clean = flat if raw.dtype == np.uint8 else pcam.sanitise(flat)
        per_image = self._faults(flat, clean)
        for kind, pixel_counts in per_image.items():
            hit = np.flatnonzero(pixel_counts)
            self.fault_images[kind] += len(hit)
            self.fault_pixels[kind] += int(pixel_counts.sum())
            room = EXAMPLES - len(self.examples[kind])
            self.examples[kind] += [start + int(i) for i in hit[:room]]
            shown = sum(1 for k, _, _ in self.outliers if k == kind)
            picked = hit[: max(0, OUTLIERS_PER_KIND - shown)]
            self.outliers += [(kind, start + int(i), clean[i].copy()) for i in picked]
        self._pixel_stats(flat, clean, self.labels[start : start + n])
        self._keep_samples(start, clean, per_image)

    def _faults(self, flat: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
        """Per image, how many pixels show each fault (black/white: the whole image, or 0)."""
        width = flat.shape[1]
        counts = {
            "black": np.where(clean.max(axis=1) == 0, width, 0),
            "white": np.where(clean.min(axis=1) == 255, width, 0),
        }
        if flat.dtype == np.uint8:
            zeros = np.zeros(len(flat), dtype=np.int64)
            return {"nan": zeros, "inf": zeros, "out_of_range": zeros, **counts}
        inf = np.isinf(flat)
        counts["nan"] = np.isnan(flat).sum(axis=1)
        counts["inf"] = inf.sum(axis=1)
        # Comparisons with NaN are False, and every Inf is outside [0, 255]: subtract those.
        counts["out_of_range"] = ((flat < 0) | (flat > 255)).sum(axis=1) - counts["inf"]
        finite = np.where(inf, np.nan, flat)
        if not np.all(np.isnan(finite)):
            self.raw_min = min(self.raw_min, float(np.nanmin(finite)))
            self.raw_max = max(self.raw_max, float(np.nanmax(finite)))
        return {k: counts[k] for k in KINDS}

    def _pixel_stats(self, flat: np.ndarray, clean: np.ndarray, labels: np.ndarray) -> None:
        self.pixels += clean.size
        self.total += float(clean.sum(dtype=np.float64))
        self.total_sq += float(np.einsum("ij,ij->", clean, clean, dtype=np.float64))
        self.channel_total += clean.reshape(len(clean), -1, 3).sum(axis=(0, 1), dtype=np.float64)
        if flat.dtype == np.uint8:
            self.raw_min = min(self.raw_min, float(flat.min()))
            self.raw_max = max(self.raw_max, float(flat.max()))
        levels = clean.astype(np.uint8)  # [0, 255] after sanitising: truncation bins by level
        for label in (0, 1):
            self.histogram[label] += np.bincount(levels[labels == label].ravel(), minlength=256)

    def _keep_samples(self, start: int, clean: np.ndarray, faults: dict[str, np.ndarray]) -> None:
        """The first GRID fault-free images of each class, for the sample grid."""
        faulty = np.any([faults[k] > 0 for k in KINDS], axis=0)
        for label in (0, 1):
            room = GRID - len(self.samples[label])
            if room <= 0:
                continue
            chosen = np.flatnonzero((self.labels[start : start + len(clean)] == label) & ~faulty)
            self.samples[label] += [(start + int(i), clean[i].copy()) for i in chosen[:room]]

    def summary(self) -> dict[str, Any]:
        n, positives = len(self.labels), int(self.labels.sum())
        mean = self.total / max(self.pixels, 1)
        return {
            "images": n,
            "positives": positives,
            "negatives": n - positives,
            "positive_fraction": positives / n if n else None,
            "x_dtype": self.dtype,
            "pixel_mean": mean,
            "pixel_std": max(self.total_sq / max(self.pixels, 1) - mean**2, 0.0) ** 0.5,
            "channel_mean": (self.channel_total / max(self.pixels / 3, 1)).tolist(),
            "raw_min": self.raw_min,
            "raw_max": self.raw_max,
            "faults": {
                k: {
                    "images": self.fault_images[k],
                    "pixels": self.fault_pixels[k],
                    "examples": self.examples[k],
                }
                for k in KINDS
            },
            "histogram": {
                "bins": "pixel level 0..255 after sanitising",
                "class_0": self.histogram[0].tolist(),
                "class_1": self.histogram[1].tolist(),
            },
        }


def scan_split(x_path: Path, y_path: Path, block_size: int) -> SplitScan:
    """Stream one split's x file block by block."""
    labels = pcam.read_labels(y_path)
    with h5py.File(x_path, "r") as fx:
        x = fx["x"]
        scan = SplitScan(labels=labels, dtype=str(x.dtype))
        for start in range(0, len(x), block_size):
            scan.add_block(start, x[start : start + block_size])
    return scan


def image_of(flat: np.ndarray) -> np.ndarray:
    return flat.reshape(96, 96, 3).astype(np.uint8) if flat.size == 96 * 96 * 3 else flat


def save_grid(path: Path, rows: list[list[tuple[str, np.ndarray]]], title: str) -> None:
    """A grid of images with captions (empty rows allowed), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row] or [[("none", np.zeros(96 * 96 * 3, dtype=np.uint8))]]
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.8 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                caption, flat = row[c]
                ax.imshow(image_of(flat))
                ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_histogram(path: Path, histogram: np.ndarray, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in (0, 1):
        counts = histogram[label]
        ax.plot(np.arange(256), counts / max(counts.sum(), 1), label=f"class {label}")
    ax.set(
        xlabel="pixel level (after sanitising)",
        ylabel="fraction of pixels",
        title=f"PCAM {split}: intensity per class",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, split: str, scan: SplitScan) -> list[str]:
    names = [f"eda_{split}_histogram.png", f"eda_{split}_samples.png", f"eda_{split}_outliers.png"]
    save_histogram(out / names[0], scan.histogram, split)
    sample_rows = [
        [(f"#{i} class {label}", img) for i, img in scan.samples[label]] for label in (0, 1)
    ]
    save_grid(out / names[1], sample_rows, f"PCAM {split}: samples, class 0 (top), 1 (bottom)")
    outlier_rows = [[(f"#{i} {kind}", img) for kind, i, img in scan.outliers]]
    save_grid(out / names[2], outlier_rows, f"PCAM {split}: outliers (after sanitising)")
    return names


def facts_of(split: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Flat facts for the ledger, e.g. eda_train_images, eda_train_nan_images."""
    facts = {
        f"eda_{split}_{k}": summary[k]
        for k in ("images", "positive_fraction", "pixel_mean", "pixel_std", "raw_max")
    }
    facts.update({f"eda_{split}_{k}_images": v["images"] for k, v in summary["faults"].items()})
    return facts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Exploratory analysis of a PCAM directory.")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, default=Path("."))
    p.add_argument("--splits", default="train,valid,test", help="comma-separated")
    p.add_argument("--block-size", type=int, default=1024, help="images read at a time")
    return p.parse_args(argv)


def missing_files(data_dir: Path, split: str) -> list[str]:
    """The names of a split's x/y files that are not in `data_dir` (empty: the split is there)."""
    return [path.name for path in pcam.split_paths(data_dir, split) if not path.is_file()]


def check_splits(data_dir: Path, splits: list[str]) -> dict[str, list[str]]:
    """The splits asked for that are missing, with their missing files; ValueError when what is
    there is not enough: train, when asked for, is required (it is what the training job reads),
    valid and test are optional (the course's copy has no test split)."""
    missing = {s: names for s in splits if (names := missing_files(data_dir, s))}
    found = [s for s in splits if s not in missing]
    if "train" in missing:
        raise ValueError(
            f"split 'train' not found ({', '.join(missing['train'])} missing in {data_dir}): "
            "eda needs the train split (valid and test are optional); found: "
            + (", ".join(found) or "none")
        )
    if not found:
        raise ValueError(f"none of the splits asked for ({', '.join(splits)}) is in {data_dir}")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # batch jobs buffer stdout otherwise
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        missing = check_splits(args.data_dir, splits)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = Report(args.output_dir)
    provenance.write(args.output_dir, args.data_dir)
    result: dict[str, Any] = {"data_dir": str(args.data_dir), "splits": {}}
    for split, names in missing.items():
        print(f"Note: split {split!r} not found ({', '.join(names)} missing): skipped", flush=True)
    if missing:
        result["missing_splits"] = missing
        report.facts(eda_missing_splits=list(missing))
    for split in [s for s in splits if s not in missing]:
        x_path, y_path = pcam.split_paths(args.data_dir, split)
        started = time.perf_counter()
        scan = scan_split(x_path, y_path, max(1, args.block_size))
        summary = scan.summary()
        summary["plots"] = write_plots(args.output_dir, split, scan)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        result["splits"][split] = summary
        print_summary(split, summary)
        report.facts(**facts_of(split, summary))
    text = json.dumps(clean(result), indent=1, allow_nan=False)  # JSON has no Infinity
    (args.output_dir / "eda.json").write_text(text + "\n")
    print(f"Wrote {args.output_dir / 'eda.json'}")
    return 0


def print_summary(split: str, s: dict[str, Any]) -> None:
    faults = ", ".join(f"{k} {v['images']}" for k, v in s["faults"].items())
    print(
        f"{split}: {s['images']} images ({s['x_dtype']}), {s['positive_fraction']:.3f} positive, "
        f"pixel mean {s['pixel_mean']:.1f} std {s['pixel_std']:.1f}, raw range "
        f"[{s['raw_min']:g}, {s['raw_max']:g}]; images with faults: {faults} "
        f"({s['seconds']} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
