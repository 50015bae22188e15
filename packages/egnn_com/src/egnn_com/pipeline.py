"""One training run end to end: the seed's eight timed startup phases, optional CUDA warm-up, the loop, the
summary. `train.py` (CLI) and `demo.py` call `run_training`; tests call it in-process.

Startup phases (seed names): directory setup, dataset loading, dataset splitting, DataLoader creation,
model initialisation, model compilation, logging setup (trackers), training configuration.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import CheckpointManager
from common.config import config_to_dict, save_config
from common.devices import describe_device, torch_device
from common.errors import ConfigError
from common.logs import PhaseTimer, log_file_path, setup_logging
from common.plots import plot_curves
from common.runs import RunFolder
from common.schedules import build_schedule
from common.seeding import seed_everything
from common.torch_support import parse_precision
from common.trackers import Trackers, build_trackers
from egnn_com.data import (
    dataset_stats,
    describe_loader,
    list_graph_files,
    load_dataset,
    make_loader,
    split_indices,
)
from egnn_com.engine import STEP_CHECKPOINT, FitResult, Trainer, cuda_warmup
from egnn_com.model import build_model, describe_model

BEST_TEMPLATE = "best-model-{epoch:02d}-{val_loss:.3f}.ckpt"  # the seed's checkpoint name (top 1 by val_loss)
LAST_FILE = "last.ckpt"
HISTORY_FILE = "metrics_history.json"
PLOT_FILE = "training_curves.png"


@dataclass
class TrainingOutcome:
    run_dir: Path | None  # None for fast_dev_run (writes nothing)
    checkpoint_dir: Path | None
    best_checkpoint: Path | None
    fit: FitResult
    phases: dict[str, float]  # startup phase -> seconds
    history: Path | None
    time_to_first_step: float | None  # seconds from run_training's start to the end of the first step


def _make_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if cfg.optim.optimizer not in kinds:
        raise ConfigError(f"optim.optimizer must be 'adamw' or 'adam', got {cfg.optim.optimizer!r}.")
    return kinds[cfg.optim.optimizer](
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )


def _run_folder(cfg) -> RunFolder:
    """The run folder; resolves output_dir/checkpoint_dir in cfg to absolute paths (recorded in config.yaml)."""
    # an absolute or cwd-relative --checkpoint_dir replaces <run>/checkpoints (root / absolute = absolute)
    kw = {"checkpoints": str(Path(cfg.train.checkpoint_dir).resolve())} if cfg.train.checkpoint_dir else {}
    if cfg.train.output_dir:
        run = RunFolder(cfg.train.output_dir, **kw)
    else:
        run = RunFolder.timestamped("runs", "egnn_com", **kw)
    cfg.train.output_dir = str(run.root.resolve())
    cfg.train.checkpoint_dir = str(run.checkpoints.resolve())
    return run


def run_training(
    cfg, *, resume_state: dict | None = None, import_seconds: float | None = None, stop_hook=None
) -> TrainingOutcome:
    """Train per `cfg` (an EgnnComConfig); `resume_state` is a loaded checkpoint tree to continue from."""
    fast = cfg.train.fast_dev_run > 0
    started = time.perf_counter()
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    timer = PhaseTimer()
    seed_everything(cfg.train.seed)

    # refused device/precision or a missing/empty data folder: fail before creating any folder
    device = torch_device(cfg.train.device)
    precision = parse_precision(cfg.train.precision, device)
    list_graph_files(cfg.data.data_dir)
    with timer.phase("directory_setup"):
        run = None if fast else _run_folder(cfg)
        log = setup_logging(run.logs if run else None, level="DEBUG" if cfg.train.debug else "INFO")
        timer.logger = log
        if run:
            save_config(cfg, run.path("config.yaml"))
    log.info("device %s, precision %s", describe_device(device), precision.name)

    with timer.phase("dataset_loading"):
        dataset = load_dataset(cfg.data.data_dir, strict=cfg.data.strict, logger=log, debug=cfg.train.debug)
        stats = dataset_stats(dataset.graphs)
    with timer.phase("dataset_splitting"):
        train_idx, val_idx = split_indices(len(dataset), cfg.data.val_fraction, cfg.train.seed)
        train_graphs = [dataset.graphs[i] for i in train_idx]
        val_graphs = [dataset.graphs[i] for i in val_idx]
    with timer.phase("dataloader_creation"):
        kw = {
            "batch_size": cfg.data.batch_size,
            "seed": cfg.train.seed,
            "num_workers": cfg.data.num_workers,
            "prefetch_factor": cfg.data.prefetch_factor,
            "worker_type": cfg.data.worker_type,
            "device": device,
        }
        train_loader = make_loader(train_graphs, train=True, **kw)
        val_loader = make_loader(val_graphs, train=False, **kw)
    with timer.phase("model_initialization"):
        model = precision.cast_model(build_model(cfg.model, dataset.num_features)).to(device)
    with timer.phase("model_compilation"):
        if cfg.train.use_compile:
            # dynamic=True: every batch has other node/edge counts; without it the second batch recompiles
            model = torch.compile(model, dynamic=True)  # compiles lazily on the first batch
    with timer.phase("logging_setup"):
        trackers = (
            Trackers([], log)
            if fast
            else build_trackers(
                run,
                history_file=HISTORY_FILE,
                tensorboard=cfg.logging.tensorboard,
                logger=log,
                wandb={
                    "project": cfg.logging.wandb_project,
                    "name": cfg.logging.wandb_name,
                    "tags": list(cfg.logging.wandb_tags),
                    "config": config_to_dict(cfg),
                }
                if cfg.logging.use_wandb
                else None,
                resume_step=int(resume_state["global_step"]) if resume_state else None,
            )
        )
        split = {
            "train_graphs": len(train_graphs),
            "val_graphs": len(val_graphs),
            "files_loaded": len(dataset),
            "files_failed": len(dataset.failed),
        }
        trackers.log_params(
            {
                "config": config_to_dict(cfg),
                "dataset": stats,
                "split": split,
                "data_dir": str(cfg.data.data_dir),
            }
        )
    with timer.phase("training_configuration"):
        optimizer = _make_optimizer(cfg, model)
        sched = cfg.optim.schedule
        if sched.name == "plateau" and sched.interval != "epoch":
            raise ConfigError(
                "optim.schedule: 'plateau' monitors val_loss, which exists once per epoch; "
                "set optim.schedule.interval=epoch."
            )
        units = cfg.train.max_epochs * (len(train_loader) if sched.interval == "step" else 1)
        schedule = build_schedule(sched, [cfg.optim.lr], max(units, 1))
        manager = (
            None
            if fast
            else CheckpointManager(
                run.checkpoints,
                last=LAST_FILE,
                best=BEST_TEMPLATE,
                monitor="val_loss",
                mode="min",
                top_k=1,
                step_file=STEP_CHECKPOINT,
            )
        )
        trainer = Trainer(
            cfg,
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            precision=precision,
            device=device,
            train_loader=train_loader,
            val_loader=val_loader,
            manager=manager,
            trackers=trackers,
            logger=log,
            stop_hook=stop_hook,
        )
        if resume_state is not None:
            trainer.load_state(resume_state)  # last: it restores the RNG states
            log.info(
                "resumed at epoch %d, batch %d, global step %d",
                trainer.pos.epoch,
                trainer.pos.batch_in_epoch,
                trainer.pos.global_step,
            )

    _log_startup(log, cfg, timer, import_seconds, stats, split, model, train_loader)
    if device.type == "cuda" and cfg.train.cuda_warmup and not fast:
        log.info("CUDA kernel warm-up took %.2fs (state restored afterwards)", cuda_warmup(trainer))

    try:
        fit = trainer.fit()
    finally:
        trackers.close()
    history = run.path(HISTORY_FILE) if run else None
    if run and history.exists() and not fit.stopped_early:
        plot_training(history, run.plots / PLOT_FILE, title=f"egnn_com {cfg.model.name}")
    best = manager.best_path if manager else None
    _log_summary(log, run, best, fit)
    first = trainer.first_step_done_at - started if trainer.first_step_done_at else None
    return TrainingOutcome(
        run.root if run else None,
        run.checkpoints if run else None,
        best,
        fit,
        dict(timer.phases),
        history,
        first,
    )


# plotted curves: series name in the history -> "label/axis" (names sharing the part after "/" share an axis)
PLOTTED = {
    "train_loss": "train/loss (MAE)",
    "val_loss": "val/loss (MAE)",
    "train_mse": "train/MSE",
    "val_mse": "val/MSE",
    "val_mae_x": "val_mae_x/val MAE per component",
    "val_mae_y": "val_mae_y/val MAE per component",
    "val_mae_z": "val_mae_z/val MAE per component",
    "learning_rate": "learning_rate",
}


def plot_training(history: Path, out: Path, *, title: str) -> Path:
    """Epoch curves from the JSON history: loss, MSE, per-component val MAE, learning rate (4 panels)."""
    metrics = json.loads(history.read_text(encoding="utf-8"))["metrics"]
    series = {
        label: [(p["step"], p["value"]) for p in metrics[name]]
        for name, label in PLOTTED.items()
        if name in metrics
    }
    return plot_curves(series, out, title=title)


def _log_startup(
    log: logging.Logger, cfg, timer: PhaseTimer, import_seconds, stats, split, model, loader
) -> None:
    level = logging.INFO if cfg.train.debug else logging.DEBUG
    timer.report(level=level)
    if import_seconds is not None:
        log.log(level, "library imports (torch, torch_geometric; not a startup phase): %.3fs", import_seconds)
    log.info(
        "startup took %.3fs; dataset: %d graphs, %d nodes, %d edges, %d node features; split %d train / "
        "%d val",
        timer.total(),
        stats["num_graphs"],
        stats["total_nodes"],
        stats["total_edges"],
        stats["num_node_features"],
        split["train_graphs"],
        split["val_graphs"],
    )
    log.debug("model: %s", describe_model(model))
    log.debug("train loader: %s", describe_loader(loader))


def _log_summary(log: logging.Logger, run: RunFolder | None, best: Path | None, fit: FitResult) -> None:
    if run is None:
        log.info(
            "fast_dev_run finished: %s",
            {
                k: round(v, 4)
                for k, v in fit.metrics.items()
                if k.startswith(("train_loss", "val_loss", "val_mae"))
            },
        )
        return
    log.info(
        "outputs in %s: config.yaml, %s, checkpoints in %s (best: %s), plots/, logs/ (%s)",
        run.root,
        HISTORY_FILE,
        run.checkpoints,
        best.name if best else "none",
        log_file_path(log),
    )
