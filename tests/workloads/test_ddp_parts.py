"""The DDP pieces of the train workload, in-process: torchrun's variables, the global batch
check, and the sampler's per-rank slices of each global batch."""

from __future__ import annotations

from pathlib import Path

import ddp
import numpy as np
import pcam
import pytest


def test_a_plain_run_is_rank_0_of_1_and_torchrun_variables_are_read() -> None:
    plain = ddp.Dist.from_env({})
    assert (plain.rank, plain.world, plain.active, plain.main) == (0, 1, False, True)
    ranked = ddp.Dist.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ranked.rank, ranked.local_rank, ranked.world, ranked.active) == (3, 1, 4, True)
    assert not ranked.main
    with pytest.raises(ValueError, match="RANK=4 WORLD_SIZE=4"):
        ddp.Dist.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        ddp.Dist.from_env({"WORLD_SIZE": "two"})


def test_the_global_batch_must_split_evenly_over_the_ranks() -> None:
    ddp.Dist(0, 0, 4).check_batch_size(64)
    ddp.Dist().check_batch_size(63)
    with pytest.raises(ValueError, match=r"--batch-size 63 is the global batch .* multiple of 2"):
        ddp.Dist(1, 1, 2).check_batch_size(63)


def test_the_ranks_slices_together_are_the_single_process_batches(official_dir: Path) -> None:
    def batches(rank: int, world: int, batch_size: int) -> list[list[int]]:
        train = pcam.PCAMDataset(*pcam.split_paths(official_dir, "train"))
        sampler = pcam.BlockBatchSampler(train, batch_size, weighted=True, seed=5)
        sampler.shard(rank, world)
        sampler.set_epoch(2, start_batch=3)
        return list(sampler)

    # 2048 images in batches of 6: the last global batch has 2 rows, so rank 2 gets none.
    single = batches(0, 1, 6)
    ranks = [batches(rank, 3, 6) for rank in range(3)]
    assert [len(r) for r in ranks] == [len(single)] * 3
    for i, whole in enumerate(single):
        assert [row for r in ranks for row in r[i]] == whole
    assert [len(r[-1]) for r in ranks] == [1, 1, 0]
    with pytest.raises(ValueError, match="rank 2 of 2"):
        pcam.BlockBatchSampler(pcam.PCAMDataset(*pcam.split_paths(official_dir, "valid")), 4).shard(
            2, 2
        )


def test_an_empty_slice_reads_as_an_empty_batch(official_dir: Path) -> None:
    train = pcam.PCAMDataset(*pcam.split_paths(official_dir, "train"))
    x, y = pcam.collate_batch(train.__getitems__([]))
    assert tuple(x.shape) == (0, 3, 96, 96) and tuple(y.shape) == (0,)
    assert np.asarray(y).dtype == np.int64
