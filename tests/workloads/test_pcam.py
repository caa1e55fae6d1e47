"""The PCAM dataset and loaders: the course skeleton's interface, on messy data, block by block."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import pcam
import pytest
import torch
from torch.utils.data import DataLoader


def write_pair(
    directory: Path, split: str, x: np.ndarray, y: np.ndarray, **options: object
) -> None:
    """A PCAM x/y file pair with exactly these pixels and labels."""
    directory.mkdir(parents=True, exist_ok=True)
    x_path, y_path = pcam.split_paths(directory, split)
    with h5py.File(x_path, "w") as fx:
        fx.create_dataset("x", data=x, **options)
    with h5py.File(y_path, "w") as fy:
        fy.create_dataset("y", data=y.reshape(-1, 1, 1, 1))


def reference(x_path: Path, row: int) -> torch.Tensor:
    """What image `row` must come out as: read alone, sanitised, C×H×W in [0, 1]."""
    with h5py.File(x_path, "r") as fx:
        raw = fx["x"][row].astype(np.float64)
    raw[~np.isfinite(raw)] = 0
    return torch.from_numpy(np.clip(raw, 0, 255).transpose(2, 0, 1) / 255).float()


def test_item_is_float_chw_in_unit_range_and_scalar_long_label(official_dir: Path) -> None:
    ds = pcam.PCAMDataset(*pcam.split_paths(official_dir, "train"))
    image, label = ds[7]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert label.dtype == torch.long and label.ndim == 0 and label.item() in (0, 1)
    assert len(ds) == len(ds.indices) == 2048
    torch.testing.assert_close(image, reference(ds.x_path, 7))


def test_bad_pixels_become_finite_and_clipped(tmp_path: Path) -> None:
    x = np.full((4, 96, 96, 3), 100.0, dtype=np.float32)
    x[0, 0, 0] = [np.nan, np.inf, -np.inf]
    x[1, 0, 0] = [1e5, -5.0, 255.0]
    x[2] = 0.0
    x[3] = 255.0
    write_pair(tmp_path, "train", x, np.array([0, 1, 0, 1], dtype=np.float32))
    ds = pcam.PCAMDataset(*pcam.split_paths(tmp_path, "train"))
    images = torch.stack([ds[i][0] for i in range(4)])
    assert torch.isfinite(images).all()
    assert images[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]  # NaN, +Inf, -Inf → 0
    assert images[1, :, 0, 0].tolist() == [1.0, 0.0, 1.0]  # 1e5 → 255, -5 → 0, then / 255
    assert images[0, 0, 1, 1].item() == pytest.approx(100 / 255)
    assert images[2].max() == 0 and images[3].min() == 1
    assert [ds[i][1].item() for i in range(4)] == [0, 1, 0, 1]  # float labels → long


def test_course_faults_come_out_clean(course_dir: Path) -> None:
    faults = json.loads((course_dir / "synth.json").read_text())["splits"]["train"]["faults"]
    ds = pcam.PCAMDataset(*pcam.split_paths(course_dir, "train"))
    for kind, rows in faults.items():
        assert rows, f"the synthetic course data should hold {kind} images"
        x, _ = next(iter(DataLoader(ds, batch_sampler=[rows], collate_fn=pcam.collate_batch)))
        assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, kind
    black, white = ds[faults["black"][0]][0], ds[faults["white"][0]][0]
    assert black.max() == 0 and white.min() == 1


def test_filter_drops_exactly_the_black_and_white_images(course_dir: Path) -> None:
    faults = json.loads((course_dir / "synth.json").read_text())["splits"]["train"]["faults"]
    ds = pcam.PCAMDataset(*pcam.split_paths(course_dir, "train"), filter_data=True)
    blank = set(faults["black"]) | set(faults["white"])
    assert len(ds) == 2048 - len(blank)
    assert blank.isdisjoint(ds.indices.tolist())
    assert set(faults["nan"]) <= set(ds.indices.tolist())  # repaired, not dropped
    means = [ds[i][0].mean().item() for i in range(len(ds))]
    assert all(0 < m < 1 for m in means)


def imbalanced_dir(root: Path) -> Path:
    """An 80/20 data set to test the sampler."""
    rng = np.random.default_rng(5)
    for split, n in (("train", 2000), ("valid", 300)):
        x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = (rng.permutation(n) < n // 5).astype(np.uint8)
        write_pair(root, split, x, y)
    return root


def loaders(data_dir: Path, **options: object) -> tuple[DataLoader, DataLoader]:
    """Loaders in blocks of about 400 images, so sampling spans several blocks."""
    data = {"data_path": str(data_dir), "batch_size": 40, "num_workers": 0, "block_mb": 10.5}
    return pcam.get_dataloaders({"data": {**data, **options}})


def test_weighted_sampling_balances_an_80_20_split(tmp_path: Path) -> None:
    train, _ = loaders(imbalanced_dir(tmp_path))
    positives, batches = [], 0
    for x, y in train:
        assert y.dtype == torch.long and y.ndim == 1 and x.shape[1:] == (3, 96, 96)
        positives.append(int(y.sum()))
        batches += 1
    assert sum(positives) == pytest.approx(1000, abs=80)  # ~20 of 40, over 2000 draws
    assert 15 <= float(np.mean(positives)) <= 25
    assert batches == 50


def test_without_weighting_every_image_once_in_shuffled_order(tmp_path: Path) -> None:
    train, _ = loaders(imbalanced_dir(tmp_path), weighted_sampling=False)
    sampler = train.batch_sampler
    positions = np.concatenate(sampler.plan())
    assert sorted(positions.tolist()) == list(range(2000))
    assert positions.tolist() != sorted(positions.tolist())
    assert sum(int(y.sum()) for _, y in train) == 400


def test_validation_loader_covers_the_split_once_in_order(tmp_path: Path) -> None:
    _, val = loaders(imbalanced_dir(tmp_path))
    ys = torch.cat([y for _, y in val])
    assert torch.equal(ys, torch.from_numpy(val.dataset.labels))


def test_batches_match_per_image_reads_across_block_boundaries(course_dir: Path) -> None:
    x_path, y_path = pcam.split_paths(course_dir, "train")
    ds = pcam.PCAMDataset(x_path, y_path, block_bytes=300 * 96 * 96 * 3 * 4)
    sampler = pcam.BlockBatchSampler(ds, batch_size=32, seed=1)
    assert len(sampler.bounds) == 7  # 2048 images in blocks of 300
    for batch in sampler.plan()[::9]:
        x, y = pcam.collate_batch(ds.__getitems__(batch.tolist()))
        for row, pos in enumerate(batch[:4]):
            torch.testing.assert_close(x[row], reference(x_path, int(ds.indices[pos])))
            assert y[row] == ds.labels[pos]


def test_chunked_files_are_read_too(tmp_path: Path, official_dir: Path) -> None:
    with h5py.File(pcam.split_paths(official_dir, "train")[0], "r") as fx:
        x = fx["x"][:256]
    labels = np.arange(256) % 2
    write_pair(tmp_path, "train", x, labels, chunks=(16, 96, 96, 3), compression="gzip")
    ds = pcam.PCAMDataset(*pcam.split_paths(tmp_path, "train"), block_bytes=100 * 27648)
    sampler = pcam.BlockBatchSampler(ds, batch_size=64)
    batch = sampler.plan()[0]
    x_batch, _ = pcam.collate_batch(ds.__getitems__(batch.tolist()))
    expected = torch.from_numpy(x[batch].transpose(0, 3, 1, 2) / 255).float()
    torch.testing.assert_close(x_batch, expected)


def test_preload_gives_the_same_batches_as_streaming(official_dir: Path) -> None:
    data = {"data_path": str(official_dir), "batch_size": 64, "num_workers": 0}
    preloaded, _ = pcam.get_dataloaders({"data": {**data, "preload": True}})
    streamed, _ = pcam.get_dataloaders({"data": data})
    # One block either way (the file is 57 MB), so both draw the same batches.
    for (xa, ya), (xb, yb) in zip(streamed, preloaded, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sampler_is_deterministic_per_epoch_and_resumes_mid_epoch(official_dir: Path) -> None:
    ds = pcam.PCAMDataset(*pcam.split_paths(official_dir, "train"), block_bytes=500 * 27648)
    a, b = pcam.BlockBatchSampler(ds, 64, seed=4), pcam.BlockBatchSampler(ds, 64, seed=4)
    a.set_epoch(2)
    b.set_epoch(2, start_batch=5)
    assert list(b) == list(a)[5:] and len(b) == len(a) - 5
    a.set_epoch(3)
    assert list(a)[:5] != list(b)[:5]


def test_worker_lanes_keep_each_block_to_one_worker(official_dir: Path) -> None:
    ds = pcam.PCAMDataset(*pcam.split_paths(official_dir, "train"), block_bytes=300 * 27648)
    plan = pcam.BlockBatchSampler(ds, 64, seed=0, lanes=2).plan()
    blocks_of_worker = [
        {int(b) for batch in plan[w::2] for b in np.unique(ds.indices[batch] // ds.block_rows)}
        for w in (0, 1)
    ]
    assert len(blocks_of_worker[0] & blocks_of_worker[1]) <= 1  # only where the lanes meet
    assert sorted(np.concatenate(plan).tolist()) == sorted(
        np.concatenate(pcam.BlockBatchSampler(ds, 64, seed=0, lanes=1).plan()).tolist()
    )  # same draws


def test_plain_dataloader_with_default_collate_and_workers(official_dir: Path) -> None:
    """Students' own `DataLoader(ds, batch_size=…, shuffle=True)` keeps working."""
    ds = pcam.PCAMDataset(*pcam.split_paths(official_dir, "valid"))
    loader = DataLoader(ds, batch_size=50, shuffle=True, num_workers=2)
    seen = 0
    for x, y in loader:
        assert x.shape[1:] == (3, 96, 96) and y.dtype == torch.long and y.ndim == 1
        seen += len(y)
    assert seen == 512


def test_missing_file_and_bad_labels_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"camelyonpatch_level_2_split_train_x\.h5"):
        pcam.PCAMDataset(*pcam.split_paths(tmp_path, "train"))
    write_pair(tmp_path, "train", np.zeros((3, 96, 96, 3), np.uint8), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        pcam.PCAMDataset(*pcam.split_paths(tmp_path, "train"))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("n", [1, 31, 64, 257])
def test_threaded_conversion_is_bitwise_the_single_thread_one(dtype: type, n: int) -> None:
    rng = np.random.default_rng(n)
    raw = (rng.random((n, 96, 96, 3)) * (400 if dtype == np.float32 else 255)).astype(dtype)
    if dtype == np.float32:
        raw[0, 0, 0] = [np.nan, np.inf, -np.inf]
    one = pcam.to_tensor_batch(raw.copy(), threads=1)
    for threads in (2, 3, 8):
        many = pcam.to_tensor_batch(raw.copy(), threads=threads)
        assert many.shape == (n, 3, 96, 96) and many.is_contiguous()
        assert torch.equal(one, many), threads
    torch.testing.assert_close(one[0], reference_raw(raw[0]))


def reference_raw(image: np.ndarray) -> torch.Tensor:
    raw = image.astype(np.float64)
    raw[~np.isfinite(raw)] = 0
    return torch.from_numpy(np.clip(raw, 0, 255).transpose(2, 0, 1) / 255).float()


def test_batches_are_cut_into_slices_of_at_least_min_slice_rows() -> None:
    for n in (0, 1, 63, 64, 65, 256, 1000):
        for threads in (1, 2, 4, 16):
            parts = pcam._slices(n, threads)
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
            assert len(parts) <= max(1, threads)
            assert len(parts) == 1 or min(p.stop - p.start for p in parts) >= pcam.MIN_SLICE


def test_conversion_uses_torchs_thread_count(
    official_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = pcam._slices
    monkeypatch.setattr(pcam, "_slices", lambda n, t: seen.append(t) or original(n, t))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        config = {"data_path": str(official_dir), "batch_size": 128, "num_workers": 0}
        train, _ = pcam.get_dataloaders({"data": config})
        next(iter(train))
        assert seen == [2]
    finally:
        torch.set_num_threads(previous)
