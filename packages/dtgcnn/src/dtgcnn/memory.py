"""Memory tools of the triplet-text mode: automatic batch-size halving when an allocation fails, periodic
cache clearing, and the peak-memory measurement the README's checkpointing figures come from.

Batch-size halving. A micro-batch that fails to allocate (MLX raises MemoryError, or a RuntimeError naming
the allocation, e.g. Metal's "Insufficient Memory") is retried in two halves, each a micro-batch of its own
whose gradients are added with half the weight: the loop's batch, the optimizer step it belongs to and the
global batch stay as they were, only the per-forward batch shrinks (accumulation doubles inside the step).
The split holds from then on (`splits` doubles again if a half fails too) and is part of the task's state,
so a resumed run continues with it. Before a retry, the step's pending gradients and the random states are
put back as they were before the failed attempt, so the retry consumes the same randomness.

What the split does change: triplets are mined, and BatchNorm statistics taken, within each half, as with
`gradient_accumulation_steps`. A P x K batch of labelled sentences is split by whole labels (each half keeps
K texts of each of its labels); a batch of bare triplets by triplets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import mlx.core as mx
import numpy as np

from common.callbacks import Callback
from common.errors import TrainyardError
from common.seeding import capture_rng_state, restore_rng_state
from dtgcnn.text_data import TextBatch, in_batch_classes

log = logging.getLogger("trainyard.dtgcnn")
# what MLX's allocators say when they cannot allocate (CPU raises MemoryError from std::bad_alloc)
OOM_MESSAGES = ("unable to allocate", "out of memory", "insufficient memory", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (and not some other error to let through)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def split_batch(batch: TextBatch, parts: int) -> list[TextBatch] | None:
    """`batch` as `parts` smaller batches (whole labels, or whole triplets), or None when it cannot be split
    that far (a part needs 2 labels to mine triplets from, or 1 triplet)."""
    if parts == 1:
        return [batch]
    if batch.triplets is None:
        classes = list(dict.fromkeys(batch.labels.tolist()))  # labels in order of first appearance
        if len(classes) < 2 * parts:
            return None
        groups = np.array_split(np.array(classes), parts)
        out = []
        for group in groups:
            rows = np.flatnonzero(np.isin(batch.labels, group))
            out.append(
                TextBatch(batch.index, batch.vectors[rows], batch.labels[rows], None, batch.text_ids[rows])
            )
        return out
    if len(batch.triplets) < parts:
        return None
    out = []
    for rows in np.array_split(batch.triplets, parts):
        ids, local = np.unique(rows, return_inverse=True)  # the part's distinct texts
        local = local.reshape(-1, 3).astype(np.int32)
        classes = in_batch_classes(local[:, :2], len(ids))
        out.append(TextBatch(batch.index, batch.vectors[ids], classes, local, batch.text_ids[ids]))
    return out


class BatchHalving:
    """Runs a micro-batch as `splits` parts, doubling `splits` whenever a part fails to allocate."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.splits = 1

    def run(
        self, stepper, batch: TextBatch, scale: float, step: Callable[[TextBatch, float], Mapping[str, float]]
    ) -> dict[str, float]:
        """`step(part, part_scale)` over the parts of `batch`; the metrics are the parts' means."""
        while True:
            parts = split_batch(batch, self.splits)
            if parts is None:
                raise TrainyardError(
                    f"Out of memory with batches split into {self.splits // 2} parts, and a batch cannot be "
                    f"split into {self.splits}. Lower batch_size or graph_bank_size, set "
                    "gradient_checkpointing=true, or free memory on the device."
                )
            pending, count = stepper.pending, stepper.pending_count
            rng = capture_rng_state()
            try:
                outs = [step(part, scale / len(parts)) for part in parts]
            except Exception as exc:
                if not (self.enabled and is_out_of_memory(exc)):
                    raise
                stepper.pending, stepper.pending_count = pending, count  # drop the failed parts' gradients
                restore_rng_state(rng)  # the retry draws the dropout masks the failed attempt drew
                mx.clear_cache()
                self.splits *= 2
                log.warning(
                    "out of memory at optimizer step %d (%s); running every batch as %d micro-batches from "
                    "now on (global batch unchanged)",
                    stepper.next_step,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    self.splits,
                )
                continue
            return {k: float(np.mean([o[k] for o in outs])) for k in outs[0]}


class ClearCacheEverySteps(Callback):
    """`mx.clear_cache()` every `every` optimizer steps (0: never): gives MLX's cached buffers back, e.g.
    when batch shapes vary and the cache would keep a buffer of every size seen."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_end(self, loop, outputs) -> None:
        if self.every and loop.pos.step % self.every == 0:
            mx.clear_cache()


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """MLX's peak memory (MiB) above what was in use before, while `fn()` runs and its result is evaluated."""
    mx.eval(mx.array(0.0))
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(fn())
    return (mx.get_peak_memory() - before) / 2**20
