"""The training loop: epochs of optimizer steps, validation, LR schedule, checkpoints and exact resume.

State that a resumed run needs is exactly what `state()` returns (the recipe in common's CONTRACT.md): data
order is `epoch_permutation(n, seed, epoch)` inside the loader's sampler, so a mid-epoch resume starts the
sampler at the saved batch instead of replaying data.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from common.checkpoint import CheckpointManager
from common.config import config_to_dict
from common.devices import peak_memory_mb
from common.progress import progress
from common.schedules import Schedule
from common.seeding import capture_rng_state, restore_rng_state
from common.signals import GracefulStop
from common.torch_support import (
    OptimizerStepper,
    Precision,
    apply_lrs,
    restore_training_state,
    training_state,
)
from common.trackers import Trackers
from egnn_com.metrics import RegressionMetrics, mae_loss, prefixed

STEP_CHECKPOINT = "last-step.ckpt"


class StopTraining(Exception):
    """Raised by a `stop_hook` to simulate a crash (tests): nothing is saved, the process state is abandoned."""


@dataclass
class LoopPosition:
    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimizer steps so far


@dataclass
class FitResult:
    metrics: dict[str, float] = field(default_factory=dict)  # last epoch's train_* / val_* metrics
    stopped_early: bool = False  # interrupted (signal or stop request) before max_epochs
    checkpoint: str | None = None  # checkpoint to resume from after an interruption


class Trainer:
    def __init__(
        self,
        cfg,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        precision: Precision,
        device: torch.device,
        train_loader,
        val_loader,
        manager: CheckpointManager | None,
        trackers: Trackers,
        logger: logging.Logger,
        stop_hook=None,
    ):
        self.cfg, self.model, self.optimizer, self.schedule = cfg, model, optimizer, schedule
        self.precision, self.device = precision, device
        self.train_loader, self.val_loader = train_loader, val_loader
        self.manager, self.trackers, self.log = manager, trackers, logger
        clip = cfg.optim.gradient_clip_val or None
        self.stepper = OptimizerStepper(optimizer, precision=precision, clip_grad_norm=clip)
        self.pos = LoopPosition()
        self.train_metrics = RegressionMetrics()  # running sums of the epoch in progress
        self.stop_hook = (
            stop_hook  # called after each step with the global step; returns True to stop cleanly
        )
        self.fast_dev_run = cfg.train.fast_dev_run
        self.per_step_schedule = cfg.optim.schedule.interval == "step"
        self.first_step_done_at: float | None = None  # perf_counter() after the run's first optimizer step

    # ------------------------------------------------------------------------------------------- state
    def state(self) -> dict:
        return training_state(
            self.model,
            self.optimizer,
            schedule=self.schedule.state_dict(),
            stepper=self.stepper.state_dict(),
            manager=self.manager.state_dict() if self.manager else None,
            epoch=self.pos.epoch,
            batch_in_epoch=self.pos.batch_in_epoch,
            global_step=self.pos.global_step,
            train_metrics=self.train_metrics.state_dict(),
            rng=capture_rng_state(),
            config=config_to_dict(self.cfg),
        )

    def load_state(self, state: dict) -> None:
        """Restore everything from a checkpoint tree; call last before `fit` (it restores the RNG states)."""
        rest = restore_training_state(state, self.model, self.optimizer)
        self.schedule.load_state_dict(rest["schedule"])
        self.stepper.load_state_dict(rest["stepper"])
        if self.manager is not None and rest.get("manager"):
            self.manager.load_state_dict(rest["manager"])
        self.pos = LoopPosition(int(rest["epoch"]), int(rest["batch_in_epoch"]), int(rest["global_step"]))
        self.train_metrics.load_state_dict(rest["train_metrics"])
        apply_lrs(self.optimizer, self.schedule.lrs)
        restore_rng_state(rest["rng"])

    # -------------------------------------------------------------------------------------------- loop
    def fit(self) -> FitResult:
        max_epochs = 1 if self.fast_dev_run else self.cfg.train.max_epochs
        result = FitResult()
        with GracefulStop() as stop:
            while self.pos.epoch < max_epochs:
                epoch_start = time.perf_counter()
                interrupted = self._train_epoch(stop)
                if interrupted:
                    result.stopped_early = True
                    result.checkpoint = self._save_step_checkpoint(reason=stop.signal_name or "stop request")
                    return result
                result.metrics = self._end_epoch(time.perf_counter() - epoch_start)
        return result

    def _batches(self, count: int):
        """The next `count` batches of the epoch, with the time spent waiting for each (data-loading share)."""
        it = iter(self.train_loader)
        for _ in range(count):
            start = time.perf_counter()
            batch = next(it)
            yield batch, time.perf_counter() - start

    def _train_epoch(self, stop: GracefulStop) -> bool:
        """Train the rest of the current epoch; True if interrupted (signal or stop hook)."""
        self.model.train()
        epoch, first_epoch = self.pos.epoch, self.pos.global_step == 0
        self._data_wait, self._step_time = 0.0, 0.0
        # data order = f(seed, epoch); a resumed epoch starts at the saved batch
        self.train_loader.sampler.set_epoch(epoch, self.pos.batch_in_epoch)
        total = len(self.train_loader)  # batches left in this epoch
        if self.fast_dev_run:
            total = max(0, min(total, self.fast_dev_run - self.pos.batch_in_epoch))
        for batch, wait in progress(
            self._batches(total), total=total, desc=f"epoch {epoch}", logger=self.log
        ):
            t0 = time.perf_counter()
            step_metrics = self._train_step(batch)
            self.pos.batch_in_epoch += 1
            self.pos.global_step += 1
            step_time = time.perf_counter() - t0
            if self.first_step_done_at is None:
                self.first_step_done_at = time.perf_counter()
            self._data_wait += wait
            self._step_time += step_time + wait
            if self.cfg.train.debug and first_epoch and self.pos.batch_in_epoch <= 5:
                self.log.debug(
                    "batch %d: data %.1f ms, step %.1f ms",
                    self.pos.batch_in_epoch,
                    wait * 1e3,
                    step_time * 1e3,
                )
            if self.pos.global_step % max(1, self.cfg.logging.log_every_n_steps) == 0:
                self.trackers.log_metrics(
                    {**prefixed(step_metrics, "train", "_step"), "learning_rate": self.schedule.lr},
                    step=self.pos.global_step,
                )
            every = self.cfg.train.save_every_n_steps
            if self.manager is not None and every and self.pos.global_step % every == 0:
                self.manager.save_step(self.state(), epoch=epoch, step=self.pos.global_step)
            if stop.requested or (self.stop_hook is not None and self.stop_hook(self.pos.global_step)):
                return True
        return False

    def _to_device(self, batch):
        batch = batch.to(self.device, non_blocking=True)
        dtype = self.precision.param_dtype  # "16"/"bf16": the whole model runs in half precision
        if dtype != torch.float32:
            batch.x, batch.pos = batch.x.to(dtype), batch.pos.to(dtype)
        return batch

    def _train_step(self, batch) -> dict[str, float]:
        batch = self._to_device(batch)
        with self.precision.autocast():
            pred = self.model(batch)  # [B, 3]
            loss = mae_loss(pred, batch.y)
        self.stepper.backward(loss)
        self.stepper.step_if_ready(0)
        if self.per_step_schedule:
            apply_lrs(self.optimizer, self.schedule.step())
        return self.train_metrics.update(pred.float(), batch.y)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        acc = RegressionMetrics()
        limit = self.fast_dev_run or len(self.val_loader)
        self.val_loader.sampler.set_epoch(self.pos.epoch)
        for i, batch in enumerate(self.val_loader):
            if i >= limit:
                break
            batch = self._to_device(batch)
            with self.precision.autocast():
                pred = self.model(batch)
            acc.update(pred.float(), batch.y)
        return acc.compute()

    def _end_epoch(self, seconds: float) -> dict[str, float]:
        epoch = self.pos.epoch
        val = self.validate()
        lr = self.schedule.lr  # the LR this epoch trained with
        metrics = {
            **prefixed(self.train_metrics.compute(), "train"),
            **prefixed(val, "val"),
            "epoch": float(epoch),
            "epoch_time_s": seconds,
            "data_wait_share": self._data_wait / self._step_time if self._step_time else 0.0,
        }
        metrics.update({f"memory_{k}": v for k, v in peak_memory_mb(self.device).items()})
        if not self.per_step_schedule:
            apply_lrs(self.optimizer, self.schedule.step(val["loss"]))
        self.trackers.log_metrics(metrics, step=self.pos.global_step)
        self.log.info(
            "epoch %d: train_loss %.4f  val_loss %.4f  val_mae_xyz %.4f/%.4f/%.4f  lr %.2e  %.2fs "
            "(data wait %.0f%%)",
            epoch,
            metrics["train_loss"],
            val["loss"],
            val["mae_x"],
            val["mae_y"],
            val["mae_z"],
            lr,
            seconds,
            100 * metrics["data_wait_share"],
        )
        if self.cfg.train.debug and epoch == 0:
            self.log.debug("first epoch took %.2fs", seconds)
        self.pos = LoopPosition(epoch + 1, 0, self.pos.global_step)
        self.train_metrics.reset()
        if self.manager is not None:
            # saved after validation (the seed's save_on_train_epoch_end=False); best named by epoch index
            self.manager.save(self.state(), epoch=epoch, metrics={"val_loss": val["loss"]})
        return metrics

    def _save_step_checkpoint(self, reason: str) -> str | None:
        if self.manager is None:
            self.log.warning(
                "stopped (%s) at step %d; fast_dev_run keeps no checkpoint", reason, self.pos.global_step
            )
            return None
        path = self.manager.save_step(self.state(), epoch=self.pos.epoch, step=self.pos.global_step)
        self.log.warning(
            "stopped (%s) at epoch %d, step %d; resume with: python -m egnn_com.train --ckpt_path %s",
            reason,
            self.pos.epoch,
            self.pos.global_step,
            path,
        )
        return str(path)


def cuda_warmup(trainer: Trainer, steps: int = 3) -> float:
    """A few real training steps to compile/load GPU kernels, then every state put back as it was.

    Keeps the seed's warm-up without changing the run: weights, optimizer, scaler and RNG are restored, so a
    run with warm-up trains exactly like one without. Returns the seconds spent.
    """
    start = time.perf_counter()
    saved = (
        copy.deepcopy(trainer.model.state_dict()),
        copy.deepcopy(trainer.optimizer.state_dict()),
        trainer.stepper.state_dict(),
        capture_rng_state(),
    )
    batch = next(iter(trainer.train_loader))
    scratch = RegressionMetrics()
    trainer.model.train()
    for _ in range(steps):
        b = trainer._to_device(batch.clone())
        with trainer.precision.autocast():
            pred = trainer.model(b)
            loss = mae_loss(pred, b.y)
        trainer.stepper.backward(loss)
        trainer.stepper.step_if_ready(0)
        scratch.update(pred.float(), b.y)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    trainer.model.load_state_dict(saved[0])
    trainer.optimizer.load_state_dict(saved[1])
    trainer.stepper.load_state_dict(saved[2])
    restore_rng_state(saved[3])
    return time.perf_counter() - start
