"""egnn_com's side of the shared training loop (`common.loop`): graphs in, MAE loss, regression metrics out.

`CentreOfMassTask` is all that is egnn_com's own in training: it yields the epoch's batches of graphs (from
the saved batch on a resume), runs the forward pass and backward of one micro-batch, and validates. The loop
owns the counters, gradient accumulation, the LR schedule, checkpoints, signals and exact resume.

`EpochSummary` logs what the loop does not know about: the share of step time spent waiting for batches and
peak memory (`system/...`), and one readable line per epoch. `cuda_warmup` compiles GPU kernels before the
first epoch and puts every state back afterwards.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from common.callbacks import Callback
from common.devices import peak_memory_mb
from common.errors import ConfigError
from common.seeding import capture_rng_state, restore_rng_state
from common.torch_support import OptimizerStepper, Precision, TorchTask, unwrap
from egnn_com.metrics import RegressionMetrics, mae_loss
from egnn_com.optim import LeanFusedAdam, LeanFusedAdamW

log = logging.getLogger("trainyard")


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or Adam (both with weight decay) over the model's parameters, at cfg.optim.lr.

    Fused where torch has the kernel (CPU and CUDA): one kernel updates every parameter, where the default
    takes some ten tensor ops per parameter, a fixed cost that was a tenth of a small-graph step; and stepped
    without torch's per-step walk over the parameters (`egnn_com.optim`). The state dict is the same either
    way, so checkpoints of either load into the other."""
    kinds = {"adamw": (torch.optim.AdamW, LeanFusedAdamW), "adam": (torch.optim.Adam, LeanFusedAdam)}
    if cfg.optim.optimizer not in kinds:
        raise ConfigError(f"optim.optimizer must be 'adamw' or 'adam', got {cfg.optim.optimizer!r}.")
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    plain, lean = kinds[cfg.optim.optimizer]  # lean: torch's fused kernel, reached the short way
    kind = lean if fused else plain
    return kind(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused or None)


class CentreOfMassTask(TorchTask):
    """Centre-of-mass regression of PyG graph batches for `common.loop.Loop`.

    `model` is the plain module (its weights go into checkpoints); `net` is what runs the batches, the same
    module or its `torch.compile` wrapper. The loaders' `batch_sampler`s are `common.sampler.ResumableSampler`s
    (see `egnn_com.data.make_loader`), so the batches of an epoch are a pure function of (seed, epoch).

    Data-parallel (one process per rank under torchrun): `net` is the DistributedDataParallel wrapper (or its
    compiled form) and `ddp` that wrapper; the loaders' samplers give each rank its slice of every global
    batch; the loop all-reduces the training metrics (`reduce_metrics`) and `validate` sums its errors over
    all ranks, so every rank logs the same exact values.
    """

    def __init__(
        self,
        cfg,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        device: torch.device,
        train_loader,
        val_loader,
        num_features: int,
        net: nn.Module | None = None,
        ddp: nn.parallel.DistributedDataParallel | None = None,
    ) -> None:
        self.config = cfg
        self.model = unwrap(model)
        self.net = net if net is not None else model
        # Data-parallel: the loop's no_sync() uses self.ddp (micro-batches that do not end a step skip the
        # gradient all-reduce). Validation runs the plain module: no collective inside its forward passes.
        self.ddp = ddp
        self.eval_net = self.model if ddp is not None else self.net
        self.optimizer = optimizer
        self.precision, self.device = precision, device
        self.stepper = OptimizerStepper(
            optimizer, precision=precision, clip_grad_norm=cfg.optim.gradient_clip_val or None
        )
        self.train_loader, self.val_loader = train_loader, val_loader
        self.train_sampler, self.val_sampler = train_loader.batch_sampler, val_loader.batch_sampler
        self.num_features = num_features
        self.debug = cfg.train.debug
        # Seconds of the epoch in progress spent waiting for batches and computing (micro and optimizer
        # steps); their ratio is the data-wait share. Reset when an epoch (or a resumed epoch) starts.
        self.wait_s = 0.0
        self.compute_s = 0.0
        self.first_step_done_at: float | None = None  # perf_counter() after the run's first optimizer step

    # -- data -----------------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return self.train_sampler.batches_per_epoch()

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        """The epoch's batches from index `start`, timing how long each one was waited for."""
        self.train_sampler.set_epoch(epoch, start)
        self.wait_s = self.compute_s = 0.0
        batches = iter(self.train_loader)
        index = start
        try:
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    return
                wait = time.perf_counter() - began
                self.wait_s += wait
                computed = self.compute_s
                yield batch
                index += 1
                if self.debug and epoch == 0 and index <= 5:
                    log.debug(
                        "batch %d: data %.1f ms, step %.1f ms",
                        index,
                        wait * 1e3,
                        (self.compute_s - computed) * 1e3,
                    )
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a background loader thread stops now

    def data_wait_share(self) -> float:
        """Share of the epoch's step time (waiting + computing) spent waiting for batches."""
        total = self.wait_s + self.compute_s
        return self.wait_s / total if total else 0.0

    def sample_batch(self):
        """One training-sized batch of the first graphs, built without iterating the loader."""
        loader = self.train_loader
        count = min(self.train_sampler.batch_size, len(loader.dataset))
        return loader.collate_fn([loader.dataset[i] for i in range(count)])

    def _to_device(self, batch):
        batch = batch.to(self.device, non_blocking=True)
        dtype = self.precision.param_dtype  # "16"/"bf16": the whole model runs in half precision
        if dtype != torch.float32:
            batch.x, batch.pos = batch.x.to(dtype), batch.pos.to(dtype)
        return batch

    # -- training -------------------------------------------------------------------------------------------
    def micro_step(self, batch, scale: float) -> dict[str, float]:
        began = time.perf_counter()
        if not self.net.training:
            self.net.train()  # after validation
        batch = self._to_device(batch)
        with self.precision.autocast():
            pred = self.net(batch)  # [B, 3]
            loss = mae_loss(pred, batch.y)
        self.stepper.backward(loss, scale)
        metrics = RegressionMetrics().update(pred.float(), batch.y)  # this batch's loss, mae, mse, per axis
        self.compute_s += time.perf_counter() - began
        return metrics

    def optimizer_step(self) -> float | None:
        began = time.perf_counter()
        norm = self.stepper.step()
        now = time.perf_counter()
        self.compute_s += now - began
        if self.first_step_done_at is None:
            self.first_step_done_at = now
        return norm

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics over every validation graph (exact sums, not a mean of batch means)."""
        self.net.eval()  # (the DDP wrapper's eval() reaches the module; micro_step's train() undoes it)
        acc = RegressionMetrics()
        sampler = self.val_sampler
        sampler.set_epoch(0)  # validation order is fixed
        for index, batch in enumerate(self.val_loader):
            batch = self._to_device(batch)
            with self.precision.autocast():
                pred = self.eval_net(batch)
            target = batch.y
            keep = _unpadded(sampler, index)
            if keep < pred.shape[0]:  # the wrapped-around padding of the last global batch
                pred, target = pred[:keep], target[:keep]
            acc.update(pred.float(), target)
        if sampler.world_size > 1:
            _sum_over_ranks(acc, self.device)
        return acc.compute()

    # -- state ----------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        # the model's input width, so a checkpoint rebuilds its model without the dataset
        return {"num_features": self.num_features}


def _unpadded(sampler, index: int) -> int:
    """Graphs of this rank's validation batch `index` that are not wrap-around padding (see ResumableSampler)."""
    b, w = sampler.batch_size, sampler.world_size
    if w == 1:
        return b
    first = (index * w + sampler.rank) * b  # position of the batch's first graph in the epoch order
    return max(0, min(b, sampler.num_samples - first))


def _sum_over_ranks(acc: RegressionMetrics, device: torch.device) -> None:
    """Replace the per-rank error sums with their totals over all ranks (exact metrics over all graphs)."""
    import torch.distributed as dist

    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([*acc.abs_sum, *acc.sq_sum, float(acc.count)], dtype=torch.float64, device=on)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    values = packed.tolist()
    acc.abs_sum, acc.sq_sum, acc.count = values[0:3], values[3:6], int(round(values[6]))


class EpochSummary(Callback):
    """Per epoch: `system/data_wait_share` and `system/<name>_peak_mb` (peak memory) rows, and one log line."""

    def __init__(self, task: CentreOfMassTask, logger: logging.Logger | None = None) -> None:
        self.task = task
        self.log = logger or log

    def on_train_epoch_end(self, loop, metrics: dict[str, float]) -> None:
        wait = self.task.data_wait_share()
        row = {"system/data_wait_share": wait}
        row.update({f"system/{k}": v for k, v in peak_memory_mb(self.task.device).items()})
        loop.log(row)
        nan = math.nan
        self.log.info(
            "epoch %d: train/loss %.4f  val/loss %.4f  val/mae_xyz %.4f/%.4f/%.4f  lr %.2e  %.2fs "
            "(data wait %.0f%%)",
            loop.pos.epoch + 1,
            metrics.get("train/loss", nan),
            metrics.get("val/loss", nan),
            metrics.get("val/mae_x", nan),
            metrics.get("val/mae_y", nan),
            metrics.get("val/mae_z", nan),
            loop.lrs_used[0],
            metrics.get("system/epoch_time_s", nan),
            100 * wait,
        )
        if self.task.debug and loop.pos.epoch == 0:
            self.log.debug("first epoch took %.2fs", metrics.get("system/epoch_time_s", nan))


def cuda_warmup(task: CentreOfMassTask, steps: int = 3) -> float:
    """A few real training steps to compile and load GPU kernels, then every state put back as it was.

    Weights, optimizer, gradient scaler and RNG states are restored, so a run with warm-up trains exactly
    like one without. Returns the seconds spent.
    """
    start = time.perf_counter()
    saved = (
        copy.deepcopy(task.model.state_dict()),
        copy.deepcopy(task.optimizer.state_dict()),
        task.stepper.state_dict(),
        capture_rng_state(),
    )
    batch = task.sample_batch()
    for _ in range(steps):
        task.micro_step(batch.clone(), 1.0)
        task.stepper.step()
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)
    task.model.load_state_dict(saved[0])
    task.optimizer.load_state_dict(saved[1])
    task.stepper.load_state_dict(saved[2])
    restore_rng_state(saved[3])
    task.wait_s = task.compute_s = 0.0
    return time.perf_counter() - start
