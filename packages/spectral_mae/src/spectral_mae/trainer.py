"""The training loop (single process and DDP): AdamW + common schedule, accumulation, AMP, validation with
figures, checkpoints with best-model tracking, early stopping, trackers, and exact resume.

Exact resume (DESIGN.md): a checkpoint holds model, optimizer, schedule, stepper (grad scaler), early stopping,
checkpoint bookkeeping, epoch / batch position / global step, the running epoch sums and the RNG states. Data
order and augmentation are pure functions of (seed, epoch, index), so a resumed run rebuilds the epoch's order
and skips the batches already done by index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader

from common.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, peak_memory_mb
from common.distributed import all_reduce_mean, get_rank, get_world_size, is_main_process
from common.early_stopping import EarlyStopping
from common.errors import DataError
from common.logs import PhaseTimer
from common.plots import plot_history
from common.progress import progress
from common.runs import RunFolder
from common.schedules import build_schedule
from common.seeding import capture_rng_state, restore_rng_state, seed_everything
from common.signals import GracefulStop
from common.torch_support import (
    OptimizerStepper,
    apply_lrs,
    parse_precision,
    restore_training_state,
    training_state,
)
from common.trackers import build_trackers
from spectral_mae.config import SpectralMAEConfig
from spectral_mae.data import EpochSampler
from spectral_mae.evaluate import run_evaluation
from spectral_mae.factory import (
    Denormalizer,
    adamw,
    build_dataset,
    build_loss_from_config,
    build_model_from_config,
    check_config,
)
from spectral_mae.visualize import write_prediction_figures

LOSS_PARTS = ("loss", "mse", "sam", "variance", "range_penalty")
HISTORY_FILE = "metrics_history.json"
LAST, BEST, STEP = "last.ckpt", "best_model.ckpt", "last_step.ckpt"
BEST_TOP_K = "best_model-epoch{epoch:04d}.ckpt"  # checkpoint.save_top_k > 1 keeps several, one name each


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    epochs_done: int
    stopped_early: bool = False
    interrupted: bool = False
    best_checkpoint: Path | None = None
    last_val: dict[str, float] = field(default_factory=dict)


@dataclass
class _Position:
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running sums of loss parts this epoch
    epoch_batches: int = 0


def _loaders(cfg: SpectralMAEConfig, device: torch.device):
    """(train_ds, train_sampler, train_loader, val_ds, val_loader) for this rank."""
    h, world, rank = cfg.hparams, get_world_size(), get_rank()
    global_batch = h.batch_size * world
    if h.overfit_batches:  # the same first N batches every epoch, no augmentation, validated on themselves
        train_ds = build_dataset(cfg, cfg.dataset.train_split, augment=False)
        n = min(len(train_ds), h.overfit_batches * global_batch)
        train_sampler = EpochSampler(
            n, batch_size=h.batch_size, seed=cfg.general.seed, shuffle=False, num_replicas=world, rank=rank
        )
        val_ds, val_n = train_ds, n
    else:
        train_ds = build_dataset(cfg, cfg.dataset.train_split, augment=True)
        train_sampler = EpochSampler(
            len(train_ds), batch_size=h.batch_size, seed=cfg.general.seed, num_replicas=world, rank=rank
        )
        val_ds = build_dataset(cfg, cfg.dataset.val_split, augment=False)
        val_n = len(val_ds)
    if train_sampler.batches_per_epoch() == 0:
        raise DataError(
            f"The '{cfg.dataset.train_split}' split has {len(train_ds)} samples, fewer than one global "
            f"batch ({h.batch_size} x {world} processes); lower hparams.batch_size."
        )
    val_sampler = EpochSampler(
        val_n,
        batch_size=h.batch_size,
        seed=cfg.general.seed,
        shuffle=False,
        drop_last=False,
        num_replicas=world,
        rank=rank,
    )
    pin = device.type == "cuda"
    common_kw = dict(batch_size=h.batch_size, num_workers=cfg.general.num_workers, pin_memory=pin)
    train_loader = DataLoader(train_ds, sampler=train_sampler, **common_kw)
    val_loader = DataLoader(val_ds, sampler=val_sampler, **common_kw)
    return train_ds, train_sampler, train_loader, val_ds, val_loader


def _checkpoint_state(model, optimizer, schedule, stepper, manager, early, pos: _Position, cfg) -> dict:
    return training_state(
        model,
        optimizer,
        schedule=schedule.state_dict(),
        stepper=stepper.state_dict(),
        manager=manager.state_dict(),
        early_stopping=early.state_dict() if early else None,
        epoch=pos.epoch,
        batch_in_epoch=pos.batch_in_epoch,
        global_step=pos.global_step,
        epoch_sums=dict(pos.epoch_sums),
        epoch_batches=pos.epoch_batches,
        rng=capture_rng_state(),
        config=config_to_dict(cfg),
    )


def train(
    cfg: SpectralMAEConfig,
    run: RunFolder,
    *,
    device: torch.device,
    logger: logging.Logger,
    resume: Path | None = None,
    interrupt_after_steps: int | None = None,
    crash_after_steps: int | None = None,
) -> TrainResult:
    """Train per `cfg` into `run`; resume from checkpoint `resume` when given.

    interrupt_after_steps / crash_after_steps are test hooks: the first acts like SIGTERM after that many
    optimizer steps (checkpoint, clean return), the second raises RuntimeError then, like a crash or SIGKILL
    (only the periodic checkpoints survive).
    """
    check_config(cfg)
    timer = PhaseTimer(logger)
    h, g = cfg.hparams, cfg.general
    main_process, world = is_main_process(), get_world_size()
    if g.debug:
        torch.autograd.set_detect_anomaly(True)
    seed_everything(g.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)

    with timer.phase("load_data"):
        train_ds, train_sampler, train_loader, val_ds, val_loader = _loaders(cfg, device)
    with timer.phase("build_model"):
        net = build_model_from_config(cfg).to(device)
        model: torch.nn.Module = net
        if world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                model
            )  # no-op for the ViT; kept for variants
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        # Training steps go through the compiled module (fused elementwise work, fewer copies); validation and
        # checkpoints use the plain one (no recompilation for eval mode; state_dict keys unchanged).
        train_forward = torch.compile(model) if g.compile else model
        loss_fn = build_loss_from_config(cfg)
        precision = parse_precision(
            ("16-mixed" if device.type == "cuda" else "bf16-mixed") if g.use_amp else "32", device
        )
        # AdamW without weight decay on norms, biases and 1-D embeddings (MAE's recipe, via timm).
        groups = param_groups_weight_decay(net, cfg.optimizer.weight_decay)
        optimizer = adamw(
            groups, device, lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps
        )
        stepper = OptimizerStepper(
            optimizer,
            precision=precision,
            accumulate=h.accumulate_grad_batches,
            clip_grad_norm=h.clip_grad_norm,
        )
        batches = train_sampler.batches_per_epoch()
        steps_per_epoch = math.ceil(batches / h.accumulate_grad_batches)
        schedule_units = h.epochs * (steps_per_epoch if cfg.scheduler.interval == "step" else 1)
        schedule = build_schedule(
            cfg.scheduler, [cfg.optimizer.lr] * len(optimizer.param_groups), schedule_units
        )
        top_k = cfg.checkpoint.save_top_k
        manager = CheckpointManager(
            run.checkpoints,
            last=LAST,
            best=BEST if top_k == 1 else BEST_TOP_K,
            monitor=cfg.checkpoint.monitor,
            mode=cfg.checkpoint.mode,
            top_k=top_k,
            step_file=STEP,
        )
        es = cfg.early_stopping
        early = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta) if es.enabled else None

    pos = _Position()
    if resume is not None:
        with timer.phase("resume"):
            rest = restore_training_state(load_checkpoint(resume), net, optimizer)
            schedule.load_state_dict(rest["schedule"])
            stepper.load_state_dict(rest["stepper"])
            manager.load_state_dict(rest["manager"])
            if early and rest.get("early_stopping"):
                early.load_state_dict(rest["early_stopping"])
            pos = _Position(
                int(rest["epoch"]),
                int(rest["batch_in_epoch"]),
                int(rest["global_step"]),
                {k: float(v) for k, v in rest["epoch_sums"].items()},
                int(rest["epoch_batches"]),
            )
            restore_rng_state(rest["rng"])
        logger.info(
            "resumed from %s at epoch %d, batch %d, step %d",
            resume,
            pos.epoch,
            pos.batch_in_epoch,
            pos.global_step,
        )
    apply_lrs(optimizer, schedule.lrs)

    mlflow_kwargs = None
    if cfg.mlflow.enabled:
        mlflow_kwargs = {
            "experiment": g.experiment_name,
            "run_name": cfg.mlflow.run_name or run.root.name,
            "tracking_uri": cfg.mlflow.tracking_uri,
            "tags": {"model": cfg.model.name, **cfg.mlflow.tags},
        }
    trackers = build_trackers(
        run,
        history_file=HISTORY_FILE,
        mlflow=mlflow_kwargs,
        resume_step=pos.global_step if resume is not None else None,
        logger=logger,
    )
    if main_process:
        save_config(cfg, run.path("config.yaml"))
        trackers.log_params(config_to_dict(cfg))
    logger.info(
        "device: %s, precision %s, %d process(es); model %s: %d parameters, %d tokens per sample",
        describe_device(device),
        precision.name,
        world,
        cfg.model.name,
        sum(p.numel() for p in net.parameters()),
        net.num_patches,
    )
    logger.info(
        "train: %d samples, %d batches/epoch; val: %d samples; run folder: %s",
        len(train_ds),
        batches,
        len(val_ds),
        run.root,
    )
    if g.debug:
        timer.report(logging.INFO)

    denorm = Denormalizer(val_ds, device)
    result = TrainResult(run.root, pos.global_step, pos.epoch)

    def save(kind: str, metrics: dict | None = None) -> None:
        if not main_process:  # only rank 0 writes checkpoints
            return
        state = _checkpoint_state(model, optimizer, schedule, stepper, manager, early, pos, cfg)
        if kind == "step":
            manager.save_step(state, epoch=pos.epoch, step=pos.global_step)
        else:
            manager.save(state, epoch=pos.epoch, metrics=metrics)

    with GracefulStop() as stop, trackers:
        while pos.epoch < h.epochs:
            epoch_start = time.perf_counter()
            train_sampler.set_epoch(pos.epoch)
            train_sampler.set_start_batch(pos.batch_in_epoch)
            model.train()
            step_parts: dict[str, float] = {}
            micro_in_step = 0
            for i, batch in enumerate(
                progress(train_loader, desc=f"epoch {pos.epoch}", logger=logger), start=pos.batch_in_epoch
            ):
                cube = batch["cube"].to(device, non_blocking=True)  # (B, C, H, W)
                noise = batch["noise"].to(device, non_blocking=True)  # (B, L): the sample's mask noise
                last_batch = i == batches - 1
                will_step = (i + 1) % h.accumulate_grad_batches == 0 or last_batch
                # Skip the DDP gradient all-reduce on micro-batches that do not end an optimizer step.
                sync = model.no_sync() if world > 1 and not will_step else contextlib.nullcontext()
                with sync:
                    with precision.autocast():
                        pred, mask = train_forward(cube, noise)  # (B, L, t*p*p), (B, L)
                    parts = loss_fn(pred, net.patchify(cube), mask)
                    stepper.backward(parts["loss"])
                norm = stepper.step_if_ready(i, flush=last_batch)
                values = {k: float(v.detach()) for k, v in parts.items()}
                for k, v in values.items():
                    step_parts[k] = step_parts.get(k, 0.0) + v
                    pos.epoch_sums[k] = pos.epoch_sums.get(k, 0.0) + v
                pos.epoch_batches += 1
                micro_in_step += 1
                pos.batch_in_epoch = i + 1
                if not will_step:
                    continue
                pos.global_step += 1
                if cfg.scheduler.interval == "step" and cfg.scheduler.name != "plateau":
                    apply_lrs(optimizer, schedule.step())
                if pos.global_step % g.log_every_n_steps == 0:
                    logged = all_reduce_mean({f"train/{k}": v / micro_in_step for k, v in step_parts.items()})
                    logged["train/lr"] = optimizer.param_groups[0]["lr"]
                    if norm is not None:
                        logged["train/grad_norm"] = norm
                    trackers.log_metrics(logged, step=pos.global_step)
                step_parts, micro_in_step = {}, 0
                if interrupt_after_steps is not None and pos.global_step >= interrupt_after_steps:
                    stop.requested = True
                if stop.requested:
                    save("step")
                    hint = f"python -m spectral_mae.train --resume {run.root}"
                    logger.warning(
                        stop.message(hint) if stop.signal_name else f"stopped; resume with: {hint}"
                    )
                    result.interrupted = True
                    result.global_step = pos.global_step
                    return result
                every = g.checkpoint_every_n_steps
                if every and pos.global_step % every == 0 and not last_batch:  # epoch end saves anyway
                    save("step")
                if crash_after_steps is not None and pos.global_step >= crash_after_steps:
                    raise RuntimeError(f"simulated crash after step {pos.global_step}")

            # ---- end of epoch: epoch means, schedule, validation, checkpoints
            means = all_reduce_mean(
                {f"train_epoch/{k}": v / max(pos.epoch_batches, 1) for k, v in pos.epoch_sums.items()}
            )
            means["epoch"] = pos.epoch
            trackers.log_metrics(means, step=pos.global_step)
            val_metrics: dict[str, float] = {}
            if (pos.epoch + 1) % h.valid_interval == 0 or pos.epoch + 1 == h.epochs:
                val_metrics = _validate(
                    cfg, model, val_loader, loss_fn, device, precision, denorm, run, trackers, pos
                )
                result.last_val = val_metrics
            if cfg.scheduler.name == "plateau" and val_metrics:
                apply_lrs(optimizer, schedule.step(val_metrics[cfg.checkpoint.monitor]))
            elif cfg.scheduler.interval == "epoch" and cfg.scheduler.name != "plateau":
                apply_lrs(optimizer, schedule.step())
            stop_now = bool(early and val_metrics and early.update(val_metrics))
            memory = peak_memory_mb(device)
            logger.info(
                "epoch %d/%d done in %.1fs (step %d): train loss %.4f%s; peak memory %s",
                pos.epoch + 1,
                h.epochs,
                time.perf_counter() - epoch_start,
                pos.global_step,
                means["train_epoch/loss"],
                "".join(
                    f", {k} {v:.4g}"
                    for k, v in val_metrics.items()
                    if k in ("val/loss", "val/psnr", "val/ssim", "val/sam_deg")
                ),
                ", ".join(f"{k} {v:.0f}" for k, v in memory.items()),
            )
            pos.epoch, pos.batch_in_epoch, pos.epoch_sums, pos.epoch_batches = pos.epoch + 1, 0, {}, 0
            save("epoch", val_metrics)
            result.epochs_done, result.global_step = pos.epoch, pos.global_step
            if stop_now:
                logger.info("early stopping: %s", early.reason)
                result.stopped_early = True
                break
            if stop.requested:
                hint = f"python -m spectral_mae.train --resume {run.root}"
                logger.warning(stop.message(hint))
                result.interrupted = True
                return result

        result.best_checkpoint = manager.best_path
        if main_process:
            _finish(cfg, run, trackers, manager, logger)
    return result


def _validate(
    cfg, model, val_loader, loss_fn, device, precision, denorm, run, trackers, pos
) -> dict[str, float]:
    sp = cfg.show_prediction
    keep = sp.nb_to_plot if sp.enabled and is_main_process() else 0
    metrics, examples = run_evaluation(
        model,
        val_loader,
        device=device,
        loss_fn=loss_fn,
        denorm=denorm,
        autocast=precision.autocast,
        keep=keep,
    )
    metrics = all_reduce_mean({f"val/{k}": v for k, v in metrics.items()})
    trackers.log_metrics(metrics, step=pos.global_step)
    if examples is not None:
        figures = write_prediction_figures(
            run.plots / "predictions",
            f"epoch_{pos.epoch + 1:04d}",
            examples["original"],
            examples["recon"],
            examples["mask"],
            examples["mse_per_band"],
            reference_rgb=examples["rgb"],
            fmt=sp.save_format,
            dpi=sp.dpi,
            pixels_per_image=sp.pixels_per_image,
        )
        for path in figures:
            trackers.log_artifact(path, f"predictions/{path.name}")
    return metrics


def _finish(cfg, run: RunFolder, trackers, manager: CheckpointManager, logger) -> None:
    """Curves PNG, and the best model (weights + metadata, no optimizer) as MLflow artifacts."""
    trackers.flush()
    curves = plot_history(
        run.path(HISTORY_FILE), run.plots / "training_curves.png", title=f"spectral_mae {cfg.model.name}"
    )
    trackers.log_artifact(curves, "plots/training_curves.png")
    if manager.best_path is not None and manager.best_path.is_file():
        best = load_checkpoint(manager.best_path)
        metadata = {
            "epoch": int(best["epoch"]),
            "global_step": int(best["global_step"]),
            "monitor": cfg.checkpoint.monitor,
            "value": manager.best_value,
            "model": cfg.model.name,
            "source_checkpoint": str(manager.best_path),
        }
        weights = save_checkpoint(
            run.path("best_model_weights.ckpt"),
            {"model": best["model"], "config": best["config"], "metadata": metadata},
        )
        meta_path = run.path("best_model.json")
        meta_path.write_text(json.dumps(metadata, indent=2))
        trackers.log_artifact(weights, "best_model/best_model_weights.ckpt")
        trackers.log_artifact(meta_path, "best_model/best_model.json")
        logger.info(
            "best model: %s (%s = %.4g at epoch %d)",
            manager.best_path,
            cfg.checkpoint.monitor,
            manager.best_value,
            metadata["epoch"],
        )
