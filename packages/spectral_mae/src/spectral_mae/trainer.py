"""Training on the shared loop (`common.loop`): the spectral MAE as a loop `Task`, and `train()`, which runs it.

`SpectralMAETask` holds what is spectral_mae's own: the cube loaders, the MAE model (plain, DDP-wrapped,
optionally compiled), the loss and its parts, the guarded AdamW step, validation metrics and the samples the
figures show. The loop owns everything every trainer repeats: the counters (epoch, batch in epoch, global
step), gradient accumulation, the LR schedule, validation cadence, early stopping, checkpoints, SIGINT/SIGTERM
and exact resume. `train()` wires the callbacks (trackers, LR monitor, early stopping, progress, figures,
checkpoints and the config's own `callbacks`) and writes the end-of-run outputs (curves, best-model weights).

Exact resume: a checkpoint holds model, optimizer, grad scaler, schedule, callback states (early stopping,
checkpoint bookkeeping), the loop's position and running epoch sums, and the RNG states. Data order and each
sample's augmentation and mask noise are pure functions of (seed, epoch, index), so a resumed run asks for
the epoch's batches from the saved batch index and replays nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from common.allocator import tune_malloc
from common.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, peak_memory_mb
from common.distributed import get_rank, get_world_size, is_main_process
from common.errors import DataError
from common.logs import PhaseTimer
from common.loop import FitResult, Loop, Plan
from common.resume import read_training_checkpoint
from common.runs import RunFolder
from common.sampler import ResumableSampler
from common.schedules import build_schedule
from common.seeding import seed_everything
from common.torch_support import OptimizerStepper, TorchTask, parse_precision
from common.trackers import Trackers, build_trackers
from common.trackers.models import save_torch_model
from spectral_mae.config import ShowPredictionConfig, SpectralMAEConfig
from spectral_mae.data import keyed_loader
from spectral_mae.evaluation import run_evaluation
from spectral_mae.factory import (
    Denormalizer,
    accuracy_threshold,
    build_dataset,
    build_loss_from_config,
    build_model_from_config,
    build_optimizer,
    check_config,
    load_from_checkpoint,
)
from spectral_mae.targets import resolve_target
from spectral_mae.visualize import plot_training_curves

HISTORY_FILE = "metrics_history.json"
LAST, BEST, STEP = "last.ckpt", "best_model.ckpt", "last_step.ckpt"
BEST_TOP_K = "best_model-epoch{epoch:04d}.ckpt"  # checkpoint.save_top_k > 1 keeps several, one name each
COMMAND = "python -m spectral_mae.train"  # how a printed resume command starts


class SpectralMAETask(TorchTask):
    """The masked autoencoder on hyperspectral cubes, as the training loop's task.

    Single process or one rank of a DDP run (`rank` / `world_size` default to the launcher's environment;
    the process group must exist before the task is built). `hparams.batch_size` is per process: each rank
    reads its contiguous slice of the same global batches a single process with batch size x world_size
    reads. `keep_examples` validation samples are kept in `examples` for the figures (0: none).
    """

    def __init__(
        self,
        cfg: SpectralMAEConfig,
        *,
        device: torch.device,
        rank: int | None = None,
        world_size: int | None = None,
        keep_examples: int = 0,
        timer: PhaseTimer | None = None,
    ):
        check_config(cfg)
        self.config, self.device = cfg, device
        rank = get_rank() if rank is None else rank
        world = get_world_size() if world_size is None else world_size
        h, g = cfg.hparams, cfg.general
        phase = timer.phase if timer is not None else lambda _name: contextlib.nullcontext()

        with phase("load_data"):
            self._build_data(cfg, rank, world)
        with phase("build_model"):
            self.model = build_model_from_config(cfg).to(device)
            forward: torch.nn.Module = self.model
            if world > 1:
                # no-op for the ViT (it has no BatchNorm); kept for variants that add one
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                # the loop's no_sync() uses self.ddp: micro-batches that do not end a step skip the all-reduce
                self.ddp = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[device.index] if device.type == "cuda" else None
                )
                forward = self.ddp
            # Training steps go through the compiled module (fused elementwise work, fewer copies); validation
            # and checkpoints use the plain one (no recompilation for eval mode; state_dict keys unchanged).
            self.train_forward = torch.compile(forward) if g.compile else forward
            self.loss_fn = build_loss_from_config(cfg)
            amp = ("16-mixed" if device.type == "cuda" else "bf16-mixed") if g.use_amp else "32"
            self.precision = parse_precision(g.precision or amp, device)
            self.optimizer = build_optimizer(cfg, self.model, device)
            self.stepper = OptimizerStepper(
                self.optimizer, precision=self.precision, clip_grad_norm=h.clip_grad_norm
            )
        self.denorm = Denormalizer(self.val_ds, device)
        self.keep_examples = keep_examples
        self.examples: dict[str, Any] | None = None  # the last validation's kept samples, for the figures

    def _build_data(self, cfg: SpectralMAEConfig, rank: int, world: int) -> None:
        h, seed = cfg.hparams, cfg.general.seed
        if (
            h.overfit_batches
        ):  # the same first N batches every epoch, no augmentation, validated on themselves
            self.train_ds = build_dataset(cfg, cfg.dataset.train_split, augment=False)
            n = min(len(self.train_ds), h.overfit_batches * h.batch_size * world)
            self.train_sampler = ResumableSampler(
                n, h.batch_size, seed=seed, shuffle=False, rank=rank, world_size=world
            )
            self.val_ds, val_n = self.train_ds, n
        else:
            self.train_ds = build_dataset(cfg, cfg.dataset.train_split, augment=True)
            self.train_sampler = ResumableSampler(
                len(self.train_ds), h.batch_size, seed=seed, rank=rank, world_size=world
            )
            self.val_ds = build_dataset(cfg, cfg.dataset.val_split, augment=False)
            val_n = len(self.val_ds)
        if self.train_sampler.batches_per_epoch() == 0:
            raise DataError(
                f"The '{cfg.dataset.train_split}' split has {len(self.train_ds)} samples, fewer than one global "
                f"batch ({h.batch_size} x {world} processes); lower hparams.batch_size."
            )
        # Validation: every sample once in a fixed order, with epoch-0 masks (the same at every validation).
        self.val_sampler = ResumableSampler(
            val_n, h.batch_size, seed=seed, shuffle=False, drop_last=False, rank=rank, world_size=world
        )
        kw = dict(num_workers=cfg.general.num_workers, pin_memory=self.device.type == "cuda")
        self.train_loader = keyed_loader(self.train_ds, self.train_sampler, **kw)
        self.val_loader = keyed_loader(self.val_ds, self.val_sampler, **kw)

    # -- the loop's task ------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return self.train_sampler.batches_per_epoch()

    def batches(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        self.model.train()
        self.train_sampler.set_epoch(epoch, start)
        return _iterate(self.train_loader)

    def micro_step(self, batch: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
        cube = batch["cube"].to(self.device, non_blocking=True)  # (B, C, H, W)
        noise = batch["noise"].to(self.device, non_blocking=True)  # (B, L): each sample's mask noise
        with self.precision.autocast():
            pred, mask = self.train_forward(cube, noise)  # (B, L, t*p*p), (B, L)
        parts = self.loss_fn(pred, self.model.patchify(cube), mask)
        self.stepper.backward(parts["loss"], scale)
        return {k: float(v.detach()) for k, v in parts.items()}

    def validate(self) -> dict[str, float]:
        metrics, self.examples = run_evaluation(
            self.model,
            itertools.islice(self.val_loader, self.val_batch_limit),
            device=self.device,
            loss_fn=self.loss_fn,
            denorm=self.denorm,
            autocast=self.precision.autocast,
            keep=self.keep_examples,
            metric_names=self.config.metric.names,
            accuracy_threshold_deg=accuracy_threshold(self.config),
        )
        self.model.train()
        return self.reduce_metrics(metrics)


def _iterate(loader) -> Iterator[Any]:
    """The loader's batches as a generator: the loop's `close()` on it drops the loader's iterator (and
    stops its workers) when an epoch ends early."""
    yield from loader


class PredictionFigures(Callback):
    """After each validation, the figures of the task's kept samples (RGB reconstruction, MSE per wavelength,
    spectra) as plots/predictions/<kind>_epoch_NNNN.<fmt>, also logged as tracker artifacts."""

    def __init__(self, folder: Path, show: ShowPredictionConfig, trackers: Trackers | None = None):
        self.folder, self.show, self.trackers = Path(folder), show, trackers

    def on_validation_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        examples = getattr(loop.task, "examples", None)
        if examples is None:
            return
        loop.task.examples = None
        write_figures = resolve_target("show_prediction", self.show._target_)
        figures = write_figures(
            self.folder,
            f"epoch_{loop.pos.epoch + 1:04d}",
            examples["original"],
            examples["recon"],
            examples["mask"],
            examples["mse_per_band"],
            reference_rgb=examples["rgb"],
            fmt=self.show.save_format,
            dpi=self.show.dpi,
            pixels_per_image=self.show.pixels_per_image,
        )
        if self.trackers is not None:
            for path in figures:
                self.trackers.log_artifact(path, f"predictions/{path.name}")


class EpochSummary(Callback):
    """One log line per epoch: time, step, train loss, the main validation metrics, peak memory; the peak
    memory also as `system/<name>_peak_mb` metrics, as every package logs it."""

    SHOWN = ("val/loss", "val/psnr", "val/ssim", "val/sam_deg")

    def __init__(self, logger: logging.Logger, epochs: int, device: torch.device):
        self.logger, self.epochs, self.device = logger, epochs, device

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        memory = peak_memory_mb(self.device)
        loop.log({f"system/{k}": v for k, v in memory.items()})
        self.logger.info(
            "epoch %d/%d done in %.1fs (step %d): train loss %.4f%s; peak memory %s",
            loop.pos.epoch + 1,
            self.epochs,
            metrics.get("system/epoch_time_s", math.nan),
            loop.pos.step,
            metrics.get("train/loss", math.nan),
            "".join(f", {k} {metrics[k]:.4g}" for k in self.SHOWN if k in metrics),
            ", ".join(f"{k} {v:.0f}" for k, v in memory.items()),
        )


def train(
    cfg: SpectralMAEConfig,
    run: RunFolder,
    *,
    device: torch.device,
    logger: logging.Logger,
    resume: dict | str | Path | None = None,
    resume_path: Path | None = None,
    callbacks: Sequence[Callback] = (),
    command: str = COMMAND,
) -> FitResult:
    """Train per `cfg` into `run` on the shared loop; `resume`: a checkpoint path, or its loaded state (then
    `resume_path` names the file it came from).

    `callbacks` come after the config's own (`cfg.callbacks`); `command` starts the resume command the run
    prints when a signal stops it. Returns the loop's FitResult with `run_dir` set; its `exit_code` is 130 /
    143 after SIGINT / SIGTERM.
    """
    check_config(cfg)
    malloc = tune_malloc()  # the step's large token tensors recycled from the heap, not page-faulted anew
    timer = PhaseTimer(logger)
    h, g = cfg.hparams, cfg.general
    main_process, world = is_main_process(), get_world_size()
    if g.debug:
        torch.autograd.set_detect_anomaly(True)
    state = None
    if isinstance(resume, dict):
        state = resume
    elif resume is not None:
        with timer.phase("read_checkpoint"):
            resume_path = Path(resume)
            state = read_training_checkpoint(resume_path)

    seed_everything(g.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    sp = cfg.show_prediction
    keep = sp.nb_to_plot if sp.enabled and main_process else 0
    task = SpectralMAETask(cfg, device=device, keep_examples=keep, timer=timer)

    batches = task.num_batches(0)
    steps_per_epoch = math.ceil(batches / h.accumulate_grad_batches)
    # A plateau schedule watches a validation metric, so it advances per epoch whatever scheduler.interval says.
    interval = "epoch" if cfg.scheduler.name == "plateau" else cfg.scheduler.interval
    units = h.epochs * (steps_per_epoch if interval == "step" else 1)
    schedule = build_schedule(cfg.scheduler, [cfg.optimizer.lr] * len(task.optimizer.param_groups), units)
    plan = Plan(
        max_epochs=h.epochs,
        accumulate=h.accumulate_grad_batches,
        log_every_n_steps=g.log_every_n_steps,
        val_every_n_epochs=h.valid_interval,
        schedule_interval=interval,
        schedule_monitor=cfg.checkpoint.monitor,
    )

    mlflow_kwargs = None
    if cfg.mlflow.enabled:
        mlflow_kwargs = {
            "experiment": g.experiment_name,
            "run_name": cfg.mlflow.run_name or run.root.name,
            "tracking_uri": cfg.mlflow.tracking_uri,
            "tags": {"model": cfg.model.name, **cfg.mlflow.tags},
            "log_models": cfg.mlflow.log_model,
        }
    trackers = build_trackers(  # rank 0 only: the other ranks get an empty fan-out
        run,
        history_file=HISTORY_FILE,
        mlflow=mlflow_kwargs,
        resume_step=int(state["global_step"]) if state is not None else None,
        logger=logger,
    )
    try:
        if main_process:
            save_config(cfg, run.path("config.yaml"))
            trackers.log_params(config_to_dict(cfg))
        logger.info(
            "device: %s (%s), precision %s, %d process(es); model %s: %d parameters, %d tokens per sample",
            describe_device(device),
            malloc,
            task.precision.name,
            world,
            cfg.model.name,
            sum(p.numel() for p in task.model.parameters()),
            task.model.num_patches,
        )
        logger.info(
            "train: %d samples, %d batches/epoch (%d optimizer steps); val: %d samples; run folder: %s",
            len(task.train_ds),
            batches,
            steps_per_epoch,
            len(task.val_ds),
            run.root,
        )
        if g.debug:
            timer.report(logging.INFO)

        saver = None
        if main_process:  # only rank 0 writes checkpoints
            top_k = cfg.checkpoint.save_top_k
            saver = ModelCheckpoint(
                run.checkpoints,
                filename=BEST if top_k == 1 else BEST_TOP_K,
                monitor=cfg.checkpoint.monitor,
                mode=cfg.checkpoint.mode,
                save_top_k=top_k,
                save_last=LAST,
                every_n_steps=g.checkpoint_every_n_steps,
                step_file=STEP,
            )
        es = cfg.early_stopping
        # `lr`, and `lr/decay` / `lr/no_decay` for the parameter groups with and without weight decay
        every_rank: list[Callback] = [LearningRateMonitor(names=_group_names(task.optimizer))]
        if es.enabled:  # on every rank, so that all stop together (the metrics are all-reduced)
            every_rank.append(
                EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=es.mode)
            )
        rank_zero: list[Callback] = []
        if main_process:
            rank_zero = [
                TrackerLogger(trackers),
                ProgressBar(),
                EpochSummary(logger, h.epochs, device),
                PredictionFigures(run.plots / "predictions", sp, trackers),
            ]
        loop = Loop(
            task,
            plan,
            callbacks=[
                *every_rank,
                *rank_zero,
                *build_callbacks(cfg.callbacks),
                *callbacks,
                *([saver] if saver else []),
            ],
            schedule=schedule,
            resume=state,
            resume_path=resume_path,  # names the file in the "resumed at" line and in checkpoint bookkeeping
            command=command,
        )
        result = loop.fit()
        result.run_dir = run.root
        if main_process and not result.interrupted:
            _finish(cfg, run, trackers, saver, logger)
    finally:
        trackers.close()
    return result


def _group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    names = []
    for group in optimizer.param_groups:
        name = "decay" if group.get("weight_decay") else "no_decay"
        names.append(name + ("_fallback" if group.get("use_fallback") else ""))
    return names


def _finish(cfg, run: RunFolder, trackers: Trackers, saver: ModelCheckpoint, logger) -> None:
    """Curves PNG, and the best model (weights + metadata, no optimizer) as MLflow artifacts."""
    trackers.flush()
    curves = plot_training_curves(
        run.path(HISTORY_FILE), run.plots / "training_curves.png", title=f"spectral_mae {cfg.model.name}"
    )
    trackers.log_artifact(curves, "plots/training_curves.png")
    best_path = saver.best_path
    if best_path is not None and best_path.is_file():
        best = load_checkpoint(best_path)
        metadata = {
            "epoch": int(best["epoch"]),  # epochs completed when it was written
            "global_step": int(best["global_step"]),
            "monitor": cfg.checkpoint.monitor,
            "value": saver.best_model_score,
            "model": cfg.model.name,
            "source_checkpoint": str(best_path),
        }
        weights = save_checkpoint(
            run.path("best_model_weights.ckpt"),
            {"model": best["model"], "config": best["config"], "metadata": metadata},
        )
        meta_path = run.path("best_model.json")
        meta_path.write_text(json.dumps(metadata, indent=2))
        trackers.log_artifact(meta_path, "best_model/best_model.json")
        if trackers.stores_models:  # the weights as an MLflow model (mlflow.pytorch.load_model), stored once
            model, _ = load_from_checkpoint(weights)
            trackers.log_model(save_torch_model(model, run.path("model")))
        else:
            trackers.log_artifact(weights, "best_model/best_model_weights.ckpt")
        logger.info(
            "best model: %s (%s = %.4g at epoch %d)",
            best_path,
            cfg.checkpoint.monitor,
            saver.best_model_score,
            metadata["epoch"],
        )
