"""`ResumableSampler`: the one batch sampler of every package, resumable and shard-aware, framework-free.

The epoch's sample order is a pure function of (seed, epoch): `epoch_permutation` by default, or the
package's own `order(epoch)` (dtgcnn's label-balanced P x K batches). A run resumed mid-epoch asks for the
same order and starts at a batch index, replaying nothing.

Sharding across W processes: global batch i is positions [i*W*B, (i+1)*W*B) of the epoch order, and process
r takes the contiguous slice [(i*W + r)*B, (i*W + r + 1)*B) of it. The W processes' batch i together hold
exactly the samples of a single process's batch i with batch size W*B, so a data-parallel step averages the
same samples as one process would, and an order made of B-sized groups (P x K) keeps each group whole.

Use it wherever a list of indices per batch is wanted, including as a torch DataLoader's `batch_sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from common.errors import ConfigError, DataError
from common.seeding import epoch_permutation

__all__ = ["ResumableSampler"]


class ResumableSampler:
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        order: Callable[[int], np.ndarray] | None = None,
        max_batches: int | None = None,
    ) -> None:
        """`order(epoch)` replaces the shuffled order: an int array of sample indices (it may repeat or
        leave out samples; its length, the same for every epoch, sets the epoch's). `max_batches` caps the batches per epoch.
        `drop_last=False` keeps a short last batch; with several processes it pads the last global batch by
        wrapping around instead, so every process gets whole batches."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside a world of {world_size} processes.")
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.order_fn, self.max_batches = order, max_batches
        self.epoch, self.start_batch = 0, 0
        self._order_length: int | None = None

    # -- the epoch -------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch (its order) and the first batch index the next iteration yields."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        if self.order_fn is not None:
            return np.asarray(self.order_fn(epoch), dtype=np.int64)
        if self.shuffle:
            return epoch_permutation(self.num_samples, self.seed, epoch)
        return np.arange(self.num_samples, dtype=np.int64)

    def _length(self) -> int:
        """Samples in an epoch's order: the same in every epoch (a custom order is built once to learn it)."""
        if self._order_length is None:
            self._order_length = self.num_samples if self.order_fn is None else len(self.order(0))
        return self._order_length

    def batches_per_epoch(self) -> int:
        """Batches per process per epoch (the same on every process)."""
        global_batch = self.batch_size * self.world_size
        n = self._length()
        count = n // global_batch if self.drop_last else math.ceil(n / global_batch)
        return count if self.max_batches is None else min(count, self.max_batches)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        n, b, w = len(order), self.batch_size, self.world_size
        if n == 0:
            raise DataError("The sampler has no samples to draw from: the dataset is empty.")
        pad = w > 1  # several processes need the same number of whole batches: wrap around (as torch does)
        for i in range(self.start_batch, self.batches_per_epoch()):
            first = (i * w + self.rank) * b
            positions = range(first, first + b) if pad else range(first, min(first + b, n))
            yield [int(order[p % n]) for p in positions]
