"""The synthetic PCAM generator: the real layout, both flavours, faults where it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pcam
from jobrun import WORKLOADS


def test_official_layout_is_uint8_and_balanced(official_dir: Path) -> None:
    for split, n in (("train", 2048), ("valid", 512), ("test", 128)):
        x_path, y_path = pcam.split_paths(official_dir, split)
        with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
            assert fx["x"].shape == (n, 96, 96, 3) and fx["x"].dtype == np.uint8
            assert fy["y"].shape == (n, 1, 1, 1)
            assert fy["y"][:].mean() == 0.5


def test_course_flavour_has_its_faults_at_the_recorded_places(course_dir: Path) -> None:
    manifest = json.loads((course_dir / "synth.json").read_text())
    train = manifest["splits"]["train"]
    assert manifest["flavour"] == "course" and train["n"] == 2048
    with h5py.File(pcam.split_paths(course_dir, "train")[0], "r") as fx:
        x = fx["x"][:]
    labels = pcam.read_labels(pcam.split_paths(course_dir, "train")[1])
    assert x.dtype == np.float32
    assert abs(labels.mean() - 0.17) < 0.01
    faults = train["faults"]
    flagged = {
        "nan": np.isnan(x).any(axis=(1, 2, 3)),
        "inf": np.isinf(x).any(axis=(1, 2, 3)),
        "big": (x > 255).any(axis=(1, 2, 3)) & ~np.isinf(x).any(axis=(1, 2, 3)),
        "black": (x == 0).all(axis=(1, 2, 3)),
        "white": (x == 255).all(axis=(1, 2, 3)),
    }
    for kind, mask in flagged.items():
        assert np.flatnonzero(mask).tolist() == faults[kind], kind
    assert np.nanmax(np.where(np.isinf(x), np.nan, x)) > 1e4  # "far above 255"


def test_cli_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    for name in ("a", "b"):
        argv = [
            sys.executable,
            str(WORKLOADS / "synth.py"),
            str(tmp_path / name),
            "--flavour",
            "course",
            "--train",
            "600",
            "--valid",
            "0",
            "--test",
            "0",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
        assert "train 600" in done.stdout
    files = [pcam.split_paths(tmp_path / name, "train")[0] for name in ("a", "b")]
    with h5py.File(files[0], "r") as a, h5py.File(files[1], "r") as b:
        np.testing.assert_array_equal(a["x"][:], b["x"][:])
    assert not pcam.split_paths(tmp_path / "a", "valid")[0].exists()
