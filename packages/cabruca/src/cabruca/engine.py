"""The training loop: epochs of optimizer steps, validation, checkpoints, trackers and exact resume.

State saved in every checkpoint follows CONTRACT.md's exact-resume recipe, so a run stopped anywhere
(SIGINT/SIGTERM after the current step, or SIGKILL after a periodic step checkpoint) continues with identical
weights and history: data order is epoch_permutation(n, seed, epoch), augmentation sample_rng(seed, epoch, i),
and a mid-epoch resume starts the epoch's sampler at the saved batch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.checkpoint import CheckpointManager
from common.config import config_to_dict
from common.devices import peak_memory_mb
from common.early_stopping import EarlyStopping
from common.plots import plot_history
from common.progress import progress
from common.runs import RunFolder
from common.seeding import capture_rng_state, restore_rng_state, seed_everything
from common.signals import GracefulStop
from common.torch_support import (
    OptimizerStepper,
    apply_lrs,
    parse_precision,
    restore_training_state,
    training_state,
)

from .config import CabrucaConfig
from .data import CabrucaTiles, EpochBatchSampler, load_split, make_loader
from .losses import MultiTaskLoss
from .metrics import Evaluator
from .model import build_model
from .optim import build_lr_schedule, build_optimizer
from .postprocess import decode_instances, instances_from_ids
from .profiling import BatchProfiler

HISTORY_FILE = "training_history.json"
LOSS_NAMES = ("loss", "semantic", "instance", "centre", "offset", "crown", "density")


def checkpoint_manager(run: RunFolder, cfg: CabrucaConfig) -> CheckpointManager:
    """The seed's file names; mid-epoch step checkpoints also go to checkpoint_latest.pth, so that file is
    always the newest state and `--resume .../checkpoint_latest.pth` is always exact."""
    return CheckpointManager(
        run.checkpoints,
        last="checkpoint_latest.pth",
        best="checkpoint_best.pth",
        monitor=cfg.training.monitor_metric,
        mode="min" if cfg.training.minimize_metric else "max",
        every_n_epochs=cfg.training.checkpoint_every_n_epochs or None,
        periodic="checkpoint_epoch_{epoch}.pth",
        step_file="checkpoint_latest.pth",
    )


@dataclass
class FitResult:
    run_dir: Path
    global_step: int
    epochs_done: int
    metrics: dict[str, float] = field(default_factory=dict)  # last validation metrics
    interrupted: bool = False
    stopped_early: bool = False


class Trainer:
    """Builds data, model, optimizer, schedule and bookkeeping from a config; `fit()` trains."""

    def __init__(
        self,
        cfg: CabrucaConfig,
        run: RunFolder,
        device: torch.device,
        *,
        trackers,
        logger: logging.Logger | None = None,
        resume_state: dict | None = None,
        init_weights: dict | None = None,
    ):
        self.cfg, self.run, self.device, self.trackers = cfg, run, device, trackers
        self.log = logger or logging.getLogger("trainyard")
        t = cfg.training
        seed_everything(cfg.seed)
        data_dir = Path(cfg.data.data_dir)
        self.train_set = CabrucaTiles(
            load_split(data_dir / cfg.data.train_split, cfg.data), cfg.data, seed=cfg.seed, train=True
        )
        self.val_set = CabrucaTiles(
            load_split(data_dir / cfg.data.val_split, cfg.data), cfg.data, seed=cfg.seed, train=False
        )
        accum = t.gradient_accumulation_steps
        steps = len(self.train_set) // (cfg.data.batch_size * accum)  # whole optimizer steps per epoch
        if t.max_steps_per_epoch:
            steps = min(steps, t.max_steps_per_epoch)
        if steps < 1:
            from common.errors import ConfigError

            raise ConfigError(
                f"{len(self.train_set)} training tiles do not fill one optimizer step of "
                f"batch_size {cfg.data.batch_size} x gradient_accumulation_steps {accum}; lower them "
                "or add data."
            )
        self.steps_per_epoch = steps
        self.train_sampler = EpochBatchSampler(
            len(self.train_set), cfg.data.batch_size, seed=cfg.seed, shuffle=True, num_batches=steps * accum
        )
        self.val_sampler = EpochBatchSampler(
            len(self.val_set), cfg.data.batch_size, seed=cfg.seed, shuffle=False
        )

        self.model = build_model(cfg.model).to(device)
        if init_weights is not None:  # warm start (progressive training / fine-tuning): weights only
            restore_training_state({"model": init_weights, "optimizer": None}, self.model, None)
        forward = self.model
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            # The seed's multi-GPU mode: DataParallel splits each batch across the visible GPUs; checkpoints
            # keep saving the plain self.model.
            forward = torch.nn.DataParallel(forward)
        self.forward = torch.compile(forward) if t.compile else forward
        self.loss_fn = MultiTaskLoss(cfg.loss)
        self.optimizer, self.group_names = build_optimizer(self.model, cfg)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.schedule, self.interval = build_lr_schedule(cfg, self.base_lrs, steps)
        apply_lrs(self.optimizer, self.schedule.lrs)
        self.precision = parse_precision("16-mixed" if t.mixed_precision else "32", device)
        self.stepper = OptimizerStepper(
            self.optimizer, precision=self.precision, accumulate=accum, clip_grad_norm=t.gradient_clip
        )
        mode = "min" if t.minimize_metric else "max"
        self.early = EarlyStopping(
            monitor=t.monitor_metric, mode=mode, patience=t.early_stopping_patience or 10**9
        )
        self.manager = checkpoint_manager(run, cfg)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.epoch_sums: dict[str, float] = {}
        self.step_times: list[float] = []  # wall seconds between optimizer-step completions (this process)
        if resume_state is not None:
            self._restore(resume_state)

    # ---- checkpoint state -------------------------------------------------------------------------
    def state(self) -> dict:
        return training_state(
            self.model,
            self.optimizer,
            schedule=self.schedule.state_dict(),
            early_stopping=self.early.state_dict(),
            stepper=self.stepper.state_dict(),
            manager=self.manager.state_dict(),
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            global_step=self.global_step,
            epoch_sums=dict(self.epoch_sums),
            rng=capture_rng_state(),
            config=config_to_dict(self.cfg),
        )

    def _restore(self, state: dict) -> None:
        rest = restore_training_state(state, self.model, self.optimizer)
        self.schedule.load_state_dict(rest["schedule"])
        self.early.load_state_dict(rest["early_stopping"])
        self.stepper.load_state_dict(rest["stepper"])
        self.manager.load_state_dict(rest["manager"])
        self.epoch, self.batch_in_epoch = int(rest["epoch"]), int(rest["batch_in_epoch"])
        self.global_step = int(rest["global_step"])
        self.epoch_sums = {k: float(v) for k, v in rest.get("epoch_sums", {}).items()}
        restore_rng_state(rest["rng"])
        apply_lrs(self.optimizer, self.schedule.lrs)

    # ---- one optimizer step -----------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        return {
            k: (v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()
        }

    def micro_step(self, batch: dict, micro: int) -> tuple[dict[str, float], float | None]:
        """Forward + backward of one micro-batch; steps the optimizer on every accumulate-th.
        Returns the loss components (floats) and the grad norm when the optimizer stepped."""
        batch = self._to_device(batch)
        with self.precision.autocast():
            out = self.forward(batch["image"])
        losses = self.loss_fn(out, batch)
        self.stepper.backward(losses["loss"] / self.cfg.training.gradient_accumulation_steps)
        return {k: float(v.detach()) for k, v in losses.items()}, self.stepper.step_if_ready(micro)

    # ---- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.eval()
        ev = Evaluator(cfg.data.semantic_classes, cfg.data.instance_classes, cfg.data.instance_semantic_ids)
        sums, n = dict.fromkeys(LOSS_NAMES, 0.0), 0
        self.val_sampler.set_epoch(0)
        for batch in make_loader(self.val_set, cfg.data, self.val_sampler):
            batch = self._to_device(batch)
            with self.precision.autocast():
                out = self.forward(batch["image"])
            losses = self.loss_fn(out, batch)
            b = batch["image"].shape[0]
            for k in LOSS_NAMES:
                sums[k] += float(losses[k]) * b
            n += b
            update_evaluator(ev, out, batch, cfg)
        model.train()
        metrics = {f"val/{k}": v / max(n, 1) for k, v in sums.items()}
        metrics.update({f"val/{k}": v for k, v in ev.compute().items()})
        return metrics

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self, *, stop_after_steps: int | None = None) -> FitResult:
        """Train to training.num_epochs. `stop_after_steps` stops like a SIGINT would after that global step
        (checkpoint, then return): the hook the resume tests use."""
        cfg, t = self.cfg, self.cfg.training
        accum = t.gradient_accumulation_steps
        profiler = (
            BatchProfiler(t.profile_batches, self.run.path("profiler"), self.log) if t.profile else None
        )
        metrics: dict[str, float] = {}
        self.trackers.log_params(config_to_dict(cfg))
        with GracefulStop() as stop:
            while self.epoch < t.num_epochs:
                self.model.train()
                self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch * accum)
                loader = make_loader(self.train_set, cfg.data, self.train_sampler)
                t0, tiles = time.perf_counter(), 0
                last = t0
                step_sums = dict.fromkeys(LOSS_NAMES, 0.0)
                micro = self.batch_in_epoch * accum
                for batch in progress(loader, desc=f"epoch {self.epoch + 1}/{t.num_epochs}", logger=self.log):
                    if profiler:
                        profiler.before_batch()
                    losses, norm = self.micro_step(batch, micro)
                    micro += 1
                    tiles += batch["image"].shape[0]
                    for k in LOSS_NAMES:
                        step_sums[k] += losses[k] / accum
                    if profiler:
                        profiler.after_batch()
                    if micro % accum:
                        continue
                    self._after_optimizer_step(step_sums, norm)
                    step_sums = dict.fromkeys(LOSS_NAMES, 0.0)
                    if t.save_every_n_steps and self.global_step % t.save_every_n_steps == 0:
                        self.manager.save_step(self.state(), epoch=self.epoch, step=self.global_step)
                    now = time.perf_counter()
                    self.step_times.append(now - last)
                    last = now
                    if stop.requested or (
                        stop_after_steps is not None and self.global_step >= stop_after_steps
                    ):
                        path = self.manager.save_step(self.state(), epoch=self.epoch, step=self.global_step)
                        self.log.info(
                            stop.message(f"python -m cabruca.train --resume {path}")
                            if stop.requested
                            else f"stopped after step {self.global_step}; checkpoint {path}"
                        )
                        self.trackers.close()
                        return FitResult(
                            self.run.root, self.global_step, self.epoch, metrics, interrupted=True
                        )
                elapsed = time.perf_counter() - t0
                metrics = self._end_epoch(tiles / max(elapsed, 1e-9))
                if self.early.should_stop:
                    self.log.info("early stopping: %s", self.early.reason)
                    break
        if profiler:
            profiler.close()
        self.trackers.close()
        return FitResult(
            self.run.root, self.global_step, self.epoch, metrics, stopped_early=self.early.should_stop
        )

    def _after_optimizer_step(self, step_losses: dict[str, float], grad_norm: float | None) -> None:
        t = self.cfg.training
        self.global_step += 1
        self.batch_in_epoch += 1
        for k, v in step_losses.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
        if self.interval == "step":
            apply_lrs(self.optimizer, self.schedule.step())
        if t.log_every_n_steps and self.global_step % t.log_every_n_steps == 0:
            logged = {f"train/{k}_step": v for k, v in step_losses.items()}
            if grad_norm is not None:
                logged["train/grad_norm"] = grad_norm
            self.trackers.log_metrics(logged, step=self.global_step)
        if t.empty_cache_freq and self.global_step % t.empty_cache_freq == 0:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            elif self.device.type == "mps":
                torch.mps.empty_cache()

    def _end_epoch(self, tiles_per_sec: float) -> dict[str, float]:
        train = {f"train/{k}": v / max(self.batch_in_epoch, 1) for k, v in self.epoch_sums.items()}
        val = self.validate()
        lrs = {f"lr/{name}": lr for name, lr in zip(self.group_names, self.schedule.lrs, strict=True)}
        system = {f"system/{k}": v for k, v in peak_memory_mb(self.device).items()}
        system["system/tiles_per_sec"] = tiles_per_sec
        system.update(gpu_utilisation(self.device))
        metrics = {**train, **val, **lrs}
        self.epoch += 1
        if self.interval == "epoch":
            monitored = metrics.get(self.cfg.training.monitor_metric)
            apply_lrs(self.optimizer, self.schedule.step(monitored))
        self.early.update(metrics)
        self.batch_in_epoch, self.epoch_sums = 0, {}
        self.trackers.log_metrics({**metrics, **system}, step=self.global_step)
        self.manager.save(self.state(), epoch=self.epoch, metrics=metrics)
        monitor = self.cfg.training.monitor_metric
        shown = "" if monitor == "val/loss" else f" {monitor} {metrics.get(monitor, math.nan):.4f}"
        self.log.info(
            "epoch %d/%d step %d: loss %.4f val/loss %.4f%s mAP %.3f canopy_IoU %.3f (%.1f tiles/s)",
            self.epoch,
            self.cfg.training.num_epochs,
            self.global_step,
            train.get("train/loss", math.nan),
            val["val/loss"],
            shown,
            val["val/mAP"],
            val["val/canopy_IoU"],
            tiles_per_sec,
        )
        try:
            plot_history(self.run.path(HISTORY_FILE), self.run.plots / "training_curves.png")
        except Exception as exc:  # a plot is a convenience; never stop training for it
            self.log.warning("could not plot the history: %s", exc)
        return metrics


def update_evaluator(ev: Evaluator, out: dict, batch: dict, cfg: CabrucaConfig) -> list:
    """Decode one batch of model outputs and add it to `ev`. Returns the decoded instances per tile."""
    probs = out["semantic"].float().softmax(1)
    decoded = []
    pp = cfg.postprocess
    for i in range(probs.shape[0]):
        pred = decode_instances(
            probs[i],
            out["heatmap"][i].float(),
            out["offsets"][i].float(),
            cfg.data.instance_semantic_ids,
            threshold=pp.centre_threshold,
            nms_kernel=pp.nms_kernel,
            top_k=pp.top_k,
            min_area=pp.min_area,
        )
        gt = instances_from_ids(batch["instances"][i], batch["labels"][i])
        count = float(out["density"][i].float().sum()) / cfg.data.density_scale
        ev.update(probs[i].argmax(0), batch["semantic"][i], pred, gt, density_count=count)
        decoded.append(pred)
    return decoded


def gpu_utilisation(device: torch.device) -> dict[str, float]:
    """CUDA utilisation in percent where the driver reports it (needs pynvml); nothing elsewhere."""
    if device.type != "cuda":
        return {}
    try:
        return {"system/gpu_util_percent": float(torch.cuda.utilization(device))}
    except Exception:  # pynvml missing or the driver does not expose it
        return {}
