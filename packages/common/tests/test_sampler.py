"""ResumableSampler: order a pure function of (seed, epoch), resume by batch index, shards that add up."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.sampler import ResumableSampler


def batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_the_order_depends_only_on_seed_and_epoch():
    a, b = ResumableSampler(20, 4, seed=3), ResumableSampler(20, 4, seed=3)
    assert batches(a, 1) == batches(b, 1)
    assert batches(a, 1) != batches(a, 2)
    assert sorted(i for batch in batches(a, 0) for i in batch) == list(range(20))


def test_a_resumed_epoch_starts_at_the_saved_batch_without_replaying():
    sampler = ResumableSampler(23, 4, seed=0)
    full = batches(sampler, 5)
    assert len(full) == 5 and sampler.batches_per_epoch() == 5  # 23 // 4, the short tail dropped
    assert batches(sampler, 5, start=3) == full[3:]
    assert len(sampler) == 2


@pytest.mark.parametrize("world", [2, 3])
def test_the_shards_of_a_global_batch_hold_exactly_the_single_process_batch(world):
    single = batches(ResumableSampler(60, 4 * world, seed=1), 2)
    shards = [batches(ResumableSampler(60, 4, seed=1, rank=r, world_size=world), 2) for r in range(world)]
    assert all(len(s) == len(single) for s in shards)
    for i, global_batch in enumerate(single):
        assert (
            sum((shards[r][i] for r in range(world)), []) == global_batch
        )  # contiguous slices, in rank order


def test_validation_keeps_a_short_last_batch_and_pads_only_across_processes():
    assert [len(b) for b in batches(ResumableSampler(10, 4, shuffle=False, drop_last=False), 0)] == [4, 4, 2]
    padded = [
        batches(ResumableSampler(10, 4, shuffle=False, drop_last=False, rank=r, world_size=2), 0)
        for r in (0, 1)
    ]
    assert padded[0] == [[0, 1, 2, 3], [8, 9, 0, 1]] and padded[1] == [[4, 5, 6, 7], [2, 3, 4, 5]]


def test_a_custom_order_keeps_its_groups_whole_on_every_process():
    def order(epoch):  # groups of 3 equal labels, as a P x K order would be
        return np.repeat(np.arange(8) + 10 * epoch, 3)

    sampler = ResumableSampler(0, 3, order=order, rank=1, world_size=2, max_batches=2)
    assert batches(sampler, 1) == [[11, 11, 11], [13, 13, 13]]


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        ResumableSampler(10, 0)
    with pytest.raises(ConfigError, match="rank 2"):
        ResumableSampler(10, 2, rank=2, world_size=2)
