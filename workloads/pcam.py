"""PCAM in HDF5: a dataset that streams the file in contiguous blocks, and the train/val loaders.

Reading one image per `__getitem__` (the course skeleton) costs an HDF5 selection per image and
makes a 17 GB file crawl. Here a batch is served from one contiguous slice of the file:

- `PCAMDataset.__getitems__` (the DataLoader calls it with a whole batch of indices) gathers the
  batch from the current block of a few thousand images, memory-mapped straight from the file
  when the dataset is stored contiguously (PCAM's is), else read with one slice read;
- `BlockBatchSampler` visits the blocks in random order and draws each batch inside one block,
  with weights that give the same distribution as a global `WeightedRandomSampler`.

Memory stays at about one block (default 128 MiB) per process, whatever the file size;
`preload=True` holds the whole array instead, for when memory allows. bench/loader.py measures
all of this against the per-image baseline.

Both flavours work: uint8 (official) and float32 with NaN/Inf, values far above 255 and blank
images (the course copy). Pixels are sanitised (non-finite → 0, clipped to [0, 255]) and scaled
to [0, 1]; images come out as float32 C×H×W, labels as int64.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

DEFAULT_BLOCK_BYTES = 128 * 2**20
Transform = Callable[[torch.Tensor], torch.Tensor]


def split_paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The x and y files of one split (train, valid, test) in a PCAM directory."""
    x, y = (Path(data_dir) / f"camelyonpatch_level_2_split_{split}_{xy}.h5" for xy in "xy")
    return x, y


def sanitise(raw: np.ndarray) -> np.ndarray:
    """Pixels as float32 with non-finite values → 0 and the rest clipped to [0, 255]."""
    out = np.array(raw, dtype=np.float32)
    if raw.dtype.kind == "f":
        out[~np.isfinite(out)] = 0.0
        np.clip(out, 0.0, 255.0, out=out)
    return out


def to_tensor_batch(raw: np.ndarray, threads: int | None = None) -> torch.Tensor:
    """(B, H, W, C) raw pixels → (B, C, H, W) float32 in [0, 1], sanitised.

    Float input is sanitised in place (callers pass a fresh copy). The transpose rides along
    with the one pass that scales (and casts) the pixels, into an array numpy allocates:
    measured, a fresh torch tensor per 28 MB batch page-faulted ~7,000 times, which cost more
    than the conversion itself, while numpy's allocations were reused without faults.

    The conversion is what limits a loader on PCAM, so a batch is cut into slices converted
    on `threads` threads at once (numpy releases the GIL): by default `torch.get_num_threads()`,
    which is the cores the job was given, and 1 inside a DataLoader worker (torch sets it so).
    """
    if raw.dtype.kind == "f":
        if raw.dtype != np.float32 or not raw.flags.writeable:
            raw = raw.astype(np.float32)  # e.g. big-endian or float64 files
        torch.from_numpy(raw).nan_to_num_(0.0, 0.0, 0.0).clamp_(0.0, 255.0)  # torch's threads
    out = np.empty((raw.shape[0], raw.shape[3], raw.shape[1], raw.shape[2]), dtype=np.float32)
    parts = _slices(len(raw), torch.get_num_threads() if threads is None else threads)
    if len(parts) == 1:
        _scale_into(raw, out)
    else:
        list(_pool(len(parts)).map(lambda s: _scale_into(raw[s], out[s]), parts))
    return torch.from_numpy(out)


def _scale_into(raw: np.ndarray, out: np.ndarray) -> None:
    """Transpose and scale by 1/255 in one pass; numpy only, so it runs beside other threads."""
    np.multiply(raw.transpose(0, 3, 1, 2), np.float32(1 / 255), out=out, casting="unsafe")


MIN_SLICE = 32  # images per thread: below this, starting the work costs more than it saves


def _slices(n: int, threads: int) -> list[slice]:
    """`n` rows cut into at most `threads` slices of at least MIN_SLICE rows."""
    count = max(1, min(threads, n // MIN_SLICE))
    edges = np.linspace(0, n, count + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(threads: int) -> ThreadPoolExecutor:
    """One conversion thread pool per process (a forked worker must not reuse the parent's)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)  # outgrown: its threads end once idle
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, "pcam-convert"))
    return _POOL[2]


def read_labels(y_path: str | Path) -> np.ndarray:
    """All labels of a y file as int64 0/1 (they are small: one number per image)."""
    with h5py.File(y_path, "r") as fy:
        raw = np.asarray(_first_dataset(fy, "y")[:])
    flat = raw.reshape(len(raw), -1)[:, 0] if raw.ndim > 1 else raw
    if not np.all(np.isfinite(flat)) or not np.all((flat == 0) | (flat == 1)):
        bad = np.unique(flat[~((flat == 0) | (flat == 1))])[:5]
        raise ValueError(f"{y_path}: labels must be 0 or 1; found values such as {bad.tolist()}")
    return flat.astype(np.int64)


def _first_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """Dataset `name`, or the file's only dataset (some copies use other names)."""
    if name in f:
        return f[name]
    names = [k for k in f if isinstance(f[k], h5py.Dataset)]
    if len(names) != 1:
        raise ValueError(f"{f.filename}: no dataset {name!r} (found {names})")
    return f[names[0]]


def blank_mask(x: h5py.Dataset | np.ndarray, block_rows: int) -> np.ndarray:
    """True for all-black or all-white images (after sanitising), scanned block by block."""
    blank = np.zeros(len(x), dtype=bool)
    for start in range(0, len(x), block_rows):
        block = sanitise(x[start : start + block_rows]).reshape(-1, int(np.prod(x.shape[1:])))
        blank[start : start + len(block)] = (block.max(axis=1) == 0) | (block.min(axis=1) == 255)
    return blank


def fingerprint(x_path: str | Path, y_path: str | Path) -> str:
    """A cheap content fingerprint: shape, dtype, all labels and three sampled images."""
    digest = hashlib.sha256()
    with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
        x, y = _first_dataset(fx, "x"), _first_dataset(fy, "y")
        digest.update(f"{x.shape}{x.dtype}".encode())
        digest.update(np.ascontiguousarray(y[:]).tobytes())
        for i in sorted({0, len(x) // 2, len(x) - 1}) if len(x) else []:
            digest.update(np.ascontiguousarray(x[i]).tobytes())
    return digest.hexdigest()[:16]


class _Batch(list):  # type: ignore[type-arg]
    """A batch from `__getitems__`: per-item (image, label) views, so `default_collate` works,
    plus the already stacked tensors, so `collate_batch` can skip the stacking copy."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(zip(x, y, strict=True))
        self.x, self.y = x, y


def collate_batch(items: list[Any]) -> Any:
    """Collate that passes through batches already stacked by `PCAMDataset.__getitems__`."""
    if isinstance(items, _Batch):
        return items.x, items.y
    return default_collate(items)


class PCAMDataset(Dataset):
    """PCAM images and labels from an HDF5 pair, drop-in for the course skeleton's dataset.

    `ds[i]` is `(image, label)`: float32 (C, H, W) in [0, 1] and an int64 scalar. `indices` maps
    positions to rows of the file (all rows, or only the non-blank ones with `filter_data`).
    With `preload`, the whole array stays in memory (mapped from the page cache when the file
    is contiguous, so forked DataLoader workers share it); otherwise one block at a time.
    """

    def __init__(
        self,
        x_path: str | Path,
        y_path: str | Path,
        transform: Transform | None = None,
        filter_data: bool = False,
        preload: bool = False,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.x_path, self.y_path = Path(x_path), Path(y_path)
        for path in (self.x_path, self.y_path):
            if not path.is_file():
                raise FileNotFoundError(f"PCAM file not found: {path}")
        self.transform, self.preload = transform, preload
        labels = read_labels(self.y_path)
        with h5py.File(self.x_path, "r") as fx:
            x = _first_dataset(fx, "x")
            self.shape, self.dtype = tuple(x.shape), x.dtype
            if len(x) != len(labels):
                raise ValueError(f"{x_path} has {len(x)} images but {y_path} {len(labels)} labels")
            self._offset = contiguous_offset(x)
            row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
            self.block_rows = max(1, len(x) if preload else block_bytes // row_bytes)
            self._cache_id, self._cache = -1, None
            if preload:
                self._cache_id, self._cache = 0, self._map(0, len(x))
                if self._cache is None:
                    self._cache = x[:]
            source = x if self._cache is None else self._cache
            blank = blank_mask(source, self.block_rows) if filter_data else None
        self.indices = np.flatnonzero(~blank) if blank is not None else np.arange(len(labels))
        self.labels = labels[self.indices]
        # Set by BlockBatchSampler: batches then come block by block, so whole blocks are read.
        self.read_blocks = False
        self._pid: int | None = None
        self._x: h5py.Dataset | None = None
        self._buffer: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} images")
        image = to_tensor_batch(self._rows(self.indices[[idx]]))[0]
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(self.labels[idx], dtype=torch.long)

    def __getitems__(self, positions: Sequence[int]) -> list[Any]:
        """A whole batch in one go (torch's DataLoader calls this when it exists)."""
        pos = np.asarray(positions, dtype=np.int64)
        x = to_tensor_batch(self._rows(self.indices[pos]))
        if self.transform is not None:
            x = torch.stack([self.transform(image) for image in x])
        return _Batch(x, torch.from_numpy(self.labels[pos]))

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Raw pixels of file rows (a fresh array), block by block, in the order asked."""
        blocks = rows // self.block_rows
        if len(rows) and blocks[0] == blocks[-1] and np.all(blocks == blocks[0]):
            return self._rows_in_block(int(blocks[0]), rows)  # the usual case: no extra copy
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        # The cached block first: a batch straddling two blocks then moves the cache forward
        # once, instead of evicting it and coming back for it.
        for block in sorted(np.unique(blocks).tolist(), key=lambda b: b != self._cache_id):
            where = np.flatnonzero(blocks == block)
            out[where] = self._rows_in_block(int(block), rows[where])
        return out

    def _rows_in_block(self, block: int, rows: np.ndarray) -> np.ndarray:
        start = block * self.block_rows
        if block == self._cache_id or self.read_blocks:
            return self._load_block(block)[rows - start]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows):  # near-contiguous (a sequential reader): one slice read
            return self._h5()[lo:hi][rows - lo]
        return np.stack([self._h5()[int(r)] for r in rows])  # scattered: as cheap as it gets

    def _load_block(self, block: int) -> np.ndarray:
        """The cached block: memory-mapped when the file allows, else read with one slice read."""
        if block != self._cache_id or self._cache is None:
            start = block * self.block_rows
            stop = min(start + self.block_rows, self.shape[0])
            self._cache = None  # drop the previous block (and its mapping) first
            self._cache = self._map(start, stop)
            if self._cache is None:
                if self._buffer is None:
                    self._buffer = np.empty((self.block_rows, *self.shape[1:]), self.dtype)
                self._h5().read_direct(self._buffer, np.s_[start:stop], np.s_[0 : stop - start])
                self._cache = self._buffer[: stop - start]
            self._cache_id = block
        return self._cache

    def _map(self, start: int, stop: int) -> np.ndarray | None:
        """Rows start:stop mapped straight from the page cache (None unless the dataset is
        contiguous and uncompressed): no copy through HDF5. MAP_POPULATE maps the block in
        one call, one big sequential read when cold, instead of tens of thousands of faults."""
        if self._offset is None:
            return None
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        begin, end = self._offset + start * row_bytes, self._offset + stop * row_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with open(self.x_path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), end - aligned, flags, mmap.PROT_READ, offset=aligned)
        count = (stop - start) * row_bytes // self.dtype.itemsize
        rows = np.frombuffer(mapped, self.dtype, count, begin - aligned)
        return rows.reshape(stop - start, *self.shape[1:])

    def _h5(self) -> h5py.Dataset:
        """The x dataset, opened once per process: HDF5 handles must not cross a fork."""
        if self._pid != os.getpid() or self._x is None:
            self._x = _first_dataset(h5py.File(self.x_path, "r"), "x")
            self._pid = os.getpid()
        return self._x

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get a copy without the HDF5 handle, the read buffer or a mapping
        # (they map again on first use); only an array preloaded by reading travels along.
        state = self.__dict__.copy()
        state.update(_x=None, _pid=None, _buffer=None)
        if not self.preload or self._offset is not None:
            state.update(_cache=None, _cache_id=-1)
        return state


def contiguous_offset(x: h5py.Dataset) -> int | None:
    """Where x's bytes start in its file, if they lie there plainly (contiguous, uncompressed)."""
    if x.chunks is not None or x.compression is not None or x.external:
        return None
    offset = x.id.get_offset()
    return None if offset is None else int(offset)


class BlockBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions drawn block by block, deterministic per (seed, epoch).

    Blocks are visited in random order; with `weighted`, each block gets a multinomial share of
    the epoch's samples by its total weight (1/class frequency) and draws them with replacement
    inside the block, which is exactly the distribution of a global `WeightedRandomSampler`.
    Without it, each block's positions are shuffled. With `lanes` > 1 (one per DataLoader
    worker), the epoch is cut into `lanes` contiguous shares interleaved round-robin, matching
    the order in which the DataLoader hands batches to workers: each worker reads its own blocks.
    The batches depend on (seed, epoch, batch_size, lanes), so the same settings and the same
    number of workers give the same run.
    `set_epoch(epoch, start_batch)` selects the epoch and skips batches already trained on.
    `shard(rank, world)` makes it yield only rank `rank`'s contiguous slice of each batch (DDP:
    every rank computes the same plan, so the ranks together see the single process's batches).
    """

    def __init__(
        self,
        dataset: PCAMDataset,
        batch_size: int,
        weighted: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        lanes: int = 1,
    ) -> None:
        if batch_size < 1 or lanes < 1:
            raise ValueError(f"batch_size and lanes must be ≥ 1, not {batch_size}, {lanes}")
        self.batch_size, self.weighted, self.shuffle = batch_size, weighted, shuffle
        self.seed, self.lanes = seed, lanes
        self.epoch, self.start_batch = 0, 0
        self.rank, self.world = 0, 1
        self.labels = dataset.labels
        counts = np.bincount(self.labels, minlength=2).astype(np.float64)
        self.weights = 1.0 / np.maximum(counts, 1.0)[self.labels]
        # Positions of each block: `indices` is sorted, so each block is a contiguous range.
        starts = np.arange(0, dataset.shape[0], dataset.block_rows)
        edges = np.searchsorted(dataset.indices, np.append(starts, dataset.shape[0]))
        self.bounds = [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]
        dataset.read_blocks = True
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def shard(self, rank: int, world: int) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of {world} processes?")
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.plan()[self.start_batch :]:
            mine = np.array_split(batch, self.world)[self.rank] if self.world > 1 else batch
            yield mine.tolist()

    def __len__(self) -> int:
        return max(0, len(self.plan()) - self.start_batch)

    def plan(self) -> list[np.ndarray]:
        """All batches of the current epoch (cached per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (
                self.epoch,
                self._make_plan(np.random.default_rng([self.seed, self.epoch])),
            )
        return self._plan[1]

    def _make_plan(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(len(self.bounds)) if self.shuffle else np.arange(len(self.bounds))
        samples = self._block_samples(rng, order)
        batches = self._chunk(np.concatenate(samples) if samples else np.empty(0, np.int64))
        # Lane k is the k-th contiguous share of the batches; interleaving them hands lane k to
        # worker k (the DataLoader deals batches round-robin), so each worker reads its own
        # blocks and at most lanes − 1 blocks, where lanes meet, are read twice.
        lanes = np.array_split(np.arange(len(batches)), self.lanes)
        rounds = itertools.zip_longest(*lanes, fillvalue=-1)
        return [batches[i] for r in rounds for i in r if i >= 0]

    def _block_samples(self, rng: np.random.Generator, order: np.ndarray) -> list[np.ndarray]:
        """The positions each block contributes this epoch, blocks in visiting order."""
        if not self.weighted:
            return [
                lo + (rng.permutation(hi - lo) if self.shuffle else np.arange(hi - lo))
                for lo, hi in (self.bounds[b] for b in order)
            ]
        totals = np.array([self.weights[lo:hi].sum() for lo, hi in self.bounds])
        counts = rng.multinomial(len(self.labels), totals / totals.sum())
        samples = []
        for b in order:
            lo, hi = self.bounds[b]
            p = self.weights[lo:hi] / totals[b]
            samples.append(lo + rng.choice(hi - lo, size=counts[b], p=p))
        return samples

    def _chunk(self, positions: np.ndarray) -> list[np.ndarray]:
        # Sorted within a batch: the gather from the block then walks memory forwards.
        return [
            np.sort(positions[i : i + self.batch_size])
            for i in range(0, len(positions), self.batch_size)
        ]


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """Leave SIGUSR1/SIGTERM to the main process, which checkpoints and stops the workers.

    Slurm may signal every process of the job; a worker killed by SIGUSR1's default action
    would turn a clean checkpoint into a "DataLoader worker exited unexpectedly" crash.
    """
    import signal

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: PCAMDataset, sampler: BlockBatchSampler, config: dict) -> DataLoader:
    """A DataLoader over `dataset` batched by `sampler`, with the data config's worker settings."""
    workers = int(config.get("num_workers", 0))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=bool(config.get("pin_memory", torch.cuda.is_available())),
        persistent_workers=workers > 0,
        worker_init_fn=_worker_ignores_stop_signals if workers > 0 else None,
        # Its own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would see different dropout masks than an uninterrupted one.
        generator=torch.Generator().manual_seed(int(config.get("seed", 0))),
    )


def get_dataloaders(config: dict) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders from `config["data"]`.

    Required keys: `data_path` (directory with the camelyonpatch_level_2_split_* files),
    `batch_size`, `num_workers`. Optional: `weighted_sampling` (True), `preload` (False),
    `filter_data` (False), `seed` (else `config["seed"]`, else 0), `block_mb` (128),
    `pin_memory` (True when CUDA is available).
    """
    data = dict(config["data"])
    data.setdefault("seed", config.get("seed", 0))
    filter_data, preload = bool(data.get("filter_data", False)), bool(data.get("preload", False))
    block_bytes = int(float(data.get("block_mb", DEFAULT_BLOCK_BYTES / 2**20)) * 2**20)
    train, val = (
        PCAMDataset(*split_paths(data["data_path"], split), None, filter_data, preload, block_bytes)
        for split in ("train", "valid")
    )
    batch_size, lanes = int(data["batch_size"]), max(1, int(data.get("num_workers", 0)))
    weighted = bool(data.get("weighted_sampling", True))
    train_sampler = BlockBatchSampler(train, batch_size, weighted, True, int(data["seed"]), lanes)
    val_sampler = BlockBatchSampler(val, batch_size, weighted=False, shuffle=False, lanes=lanes)
    return make_loader(train, train_sampler, data), make_loader(val, val_sampler, data)
