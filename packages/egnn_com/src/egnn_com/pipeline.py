"""One training run end to end: eight timed startup phases, optional CUDA warm-up, the shared loop, the summary.

`train.py` (CLI) and `demo.py` call `run_training`; tests call it in-process. The loop is `common.loop.Loop`
with egnn_com's `CentreOfMassTask` and the common callbacks; this module only assembles them.

Data-parallel under torchrun (WORLD_SIZE > 1 in the environment): every process joins the process group
(gloo on CPU, nccl on CUDA with GPU LOCAL_RANK), wraps the model in DistributedDataParallel and reads its
slice of each global batch (`data.batch_size` per process); rank 0 names the run folder and is the only one
that writes it (config, checkpoints, history, plots, logs). Without torchrun nothing of this happens.

Startup phases: directory setup, dataset loading, dataset splitting, DataLoader creation, model
initialisation, model compilation, logging setup (trackers), training configuration.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from common.allocator import tune_malloc
from common.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.config import config_to_dict, save_config
from common.devices import describe_device, torch_device
from common.distributed import (
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from common.errors import ConfigError, DeviceError
from common.logs import PhaseTimer, log_file_path, setup_logging
from common.loop import FitResult, Loop, Plan
from common.plots import plot_curves
from common.runs import RunFolder
from common.schedules import build_schedule
from common.seeding import seed_everything
from common.torch_support import parse_precision
from common.trackers import LogFinalModel, Trackers, build_trackers
from egnn_com.data import (
    dataset_stats,
    describe_loader,
    list_graph_files,
    load_dataset,
    make_loader,
)
from egnn_com.model import build_model, describe_model
from egnn_com.splits import split_dataset
from egnn_com.task import CentreOfMassTask, EpochSummary, cuda_warmup, make_optimizer

COMMAND = "python -m egnn_com.train"  # how a run is started; the loop prints it in the resume hint
# the original best-checkpoint name; the default (train.checkpoint_filename) keeps its shape with 5 significant
# digits, since on real molecules every good model's val/loss rounds to 0.000
SEED_TEMPLATE = "best-model-{epoch:02d}-{val_loss:.3f}.ckpt"
LAST_FILE = "last.ckpt"
STEP_FILE = "last-step.ckpt"  # every train.save_every_n_steps optimizer steps, and when a signal stops a run
HISTORY_FILE = "metrics_history.json"
PLOT_FILE = "training_curves.png"


@dataclass
class TrainingResult(FitResult):
    """`common.loop.FitResult` of the run, plus where its files are and how long startup took."""

    checkpoint_dir: Path | None = None  # None for fast_dev_run (writes nothing)
    history: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)  # startup phase -> seconds
    time_to_first_step: float | None = None  # seconds from run_training's start to the end of the first step


# what a checkpoint name template can use: the counters and the epoch metrics ("/" written as "_")
_TEMPLATE_FIELDS = {"epoch": 1, "step": 1, "train_grad_norm": 1.0} | {
    f"{split}_{name}": 1.0
    for split in ("train", "val")
    for name in ("loss", "mae", "mse", "mae_x", "mae_y", "mae_z", "mse_x", "mse_y", "mse_z")
}


def check_checkpoint_template(template: str) -> None:
    """ConfigError before training when train.checkpoint_filename cannot be filled or is not a file name."""
    try:
        name = template.format(**_TEMPLATE_FIELDS)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"train.checkpoint_filename {template!r} cannot be filled ({type(exc).__name__}: {exc}); it can use "
            f"{{{'}, {'.join(sorted(_TEMPLATE_FIELDS))}}}, e.g. {SEED_TEMPLATE!r}."
        ) from None
    if "/" in name or name in ("", ".", "..") or name in (LAST_FILE, STEP_FILE):
        raise ConfigError(
            f"train.checkpoint_filename {template!r} gives {name!r}: it must be a file name in the checkpoint "
            f"folder, other than {LAST_FILE} and {STEP_FILE}."
        )


def launch_command() -> str:
    """How this run was started, for the resume command a stopped run prints."""
    world = get_world_size()
    if world <= 1:
        return COMMAND
    local = os.environ.get("LOCAL_WORLD_SIZE", str(world))
    nodes = world // max(int(local), 1)
    where = f" --nnodes {nodes} --rdzv-backend c10d --rdzv-endpoint HOST:PORT" if nodes > 1 else ""
    return f"torchrun{where} --nproc_per_node {local} -m egnn_com.train"


def rank_device(name: str) -> torch.device:
    """This process's device: under torchrun its own GPU (cuda:LOCAL_RANK) or the CPU."""
    device = torch_device(name)
    if get_world_size() <= 1:
        return device
    if device.type == "mps":
        raise DeviceError(
            "data-parallel training (torchrun) runs on CPU (gloo) or CUDA GPUs (nccl), not on mps; "
            "use --device cpu or train in one process."
        )
    if device.type == "cuda":
        device = torch.device("cuda", get_local_rank())
        torch.cuda.set_device(device)
    return device


def _shared_run_folder(cfg, resume: bool) -> RunFolder | None:
    """The run folder, named on rank 0 and broadcast: every rank gets the same (absolute) output and
    checkpoint paths in cfg; only rank 0 creates the folder (the others get None)."""
    if get_world_size() <= 1:
        return _run_folder(cfg, resume)
    chosen = None
    run = None
    if is_main_process():
        try:
            run = _run_folder(cfg, resume)
            chosen = ("ok", cfg.train.output_dir, cfg.train.checkpoint_dir)
        except Exception as exc:  # tell the other ranks, or they wait for the broadcast until the timeout
            broadcast_object(("error", f"rank 0 could not create the run folder: {exc}", None))
            raise
    status, output_dir, checkpoint_dir = broadcast_object(chosen)
    if status != "ok":
        raise ConfigError(output_dir)
    cfg.train.output_dir, cfg.train.checkpoint_dir = output_dir, checkpoint_dir
    return run


def _run_folder(cfg, resume: bool) -> RunFolder:
    """The run folder; resolves output_dir/checkpoint_dir in cfg to absolute paths (recorded in config.yaml)."""
    # an absolute or cwd-relative --checkpoint_dir replaces <run>/checkpoints (root / absolute = absolute)
    kw = {"checkpoints": str(Path(cfg.train.checkpoint_dir).resolve())} if cfg.train.checkpoint_dir else {}
    if cfg.train.output_dir:
        run = RunFolder(cfg.train.output_dir, resume=resume, overwrite=cfg.train.overwrite, **kw)
    else:
        run = RunFolder.timestamped("runs", "egnn_com", **kw)
    cfg.train.output_dir = str(run.root.resolve())
    cfg.train.checkpoint_dir = str(run.checkpoints.resolve())
    return run


def run_training(
    cfg,
    *,
    resume_state: dict | None = None,
    resume_path: str | Path | None = None,
    import_seconds: float | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Train per `cfg` (an EgnnComConfig).

    `resume_state`: a checkpoint tree (`common.resume.read_training_checkpoint`) to continue exactly from,
    read from `resume_path`. `callbacks`: more loop callbacks, after those of `cfg.callbacks`.

    Under torchrun (WORLD_SIZE > 1) this joins the process group (and leaves it at the end when it joined it
    here); `cfg.data.batch_size` is per process. `callbacks` run on every rank.
    """
    import torch.distributed as dist

    joined = get_world_size() > 1 and not dist.is_initialized()
    try:
        return _run_training(
            cfg,
            resume_state=resume_state,
            resume_path=resume_path,
            import_seconds=import_seconds,
            callbacks=callbacks,
        )
    finally:
        if joined:
            cleanup_distributed()


def _run_training(cfg, *, resume_state, resume_path, import_seconds, callbacks) -> TrainingResult:
    fast = cfg.train.fast_dev_run > 0
    started = time.perf_counter()
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    timer = PhaseTimer()
    seed_everything(cfg.train.seed)

    # refused device/precision, a bad plan or callback, a missing/empty data folder: fail before any folder
    device = rank_device(cfg.train.device)
    init_distributed(device.type)  # torchrun: join the process group (nothing in one process)
    world, rank, main = get_world_size(), get_rank(), is_main_process()
    precision = parse_precision(cfg.train.precision, device)
    sched = cfg.optim.schedule
    if sched.name == "plateau" and sched.interval != "epoch":
        raise ConfigError(
            "optim.schedule: 'plateau' monitors val/loss, which exists once per epoch; "
            "set optim.schedule.interval=epoch."
        )
    plan = Plan(
        max_epochs=1 if fast else cfg.train.max_epochs,
        accumulate=cfg.optim.accumulate_grad_batches,
        log_every_n_steps=cfg.logging.log_every_n_steps,
        schedule_interval=sched.interval,
        schedule_monitor="val/loss",
    )
    user_callbacks = [*build_callbacks(cfg.callbacks), *callbacks]
    check_checkpoint_template(cfg.train.checkpoint_filename)
    list_graph_files(cfg.data.data_dir)
    with timer.phase("directory_setup"):
        run = None if fast else _shared_run_folder(cfg, resume_state is not None)  # None on ranks != 0
        level = "DEBUG" if cfg.train.debug else "INFO"
        log = setup_logging(run.logs if run else None, level=level if main else "WARNING")
        timer.logger = log
        if run:
            save_config(cfg, run.path("config.yaml"))
    # the step's large [E, hidden] tensors recycled from the heap instead of page-faulted anew every step
    log.info("device %s, precision %s; %s", describe_device(device), precision.name, tune_malloc())
    if world > 1:
        log.info(
            "data-parallel: %d processes; global batch %d graphs (%d per process x %d processes x %d "
            "accumulated micro-batches)",
            world,
            cfg.data.batch_size * world * cfg.optim.accumulate_grad_batches,
            cfg.data.batch_size,
            world,
            cfg.optim.accumulate_grad_batches,
        )

    with timer.phase("dataset_loading"):
        dataset = load_dataset(cfg.data.data_dir, strict=cfg.data.strict, logger=log, debug=cfg.train.debug)
        stats = dataset_stats(dataset.graphs)
    with timer.phase("dataset_splitting"):
        train_idx, val_idx = split_dataset(
            dataset.files, cfg.data.split_by, cfg.data.val_fraction, cfg.train.seed
        )
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
            "max_batches": cfg.train.fast_dev_run or None,
            "rank": rank,
            "world_size": world,
            "edge_layout": cfg.model.name == "egnn",  # the EGNN's edge structure, built with each batch
        }
        train_loader = make_loader(train_graphs, train=True, **kw)
        val_loader = make_loader(val_graphs, train=False, **kw)
    with timer.phase("model_initialization"):
        model = precision.cast_model(build_model(cfg.model, dataset.num_features)).to(device)
    with timer.phase("model_compilation"):
        net, ddp = model, None
        if world > 1:  # DDP broadcasts rank 0's weights (all ranks seeded alike anyway)
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
            net = ddp
        if cfg.train.use_compile:
            # dynamic=True: every batch has other node/edge counts; without it the second batch recompiles
            net = torch.compile(net, dynamic=True)  # compiles lazily on the first batch
    with timer.phase("logging_setup"):
        trackers = (
            Trackers([], log)
            if fast or not main  # only rank 0 logs metrics
            else build_trackers(
                run,
                history_file=HISTORY_FILE,
                tensorboard=cfg.logging.tensorboard,
                logger=log,
                mlflow={
                    "experiment": cfg.logging.mlflow_experiment,
                    "run_name": run.root.name,
                    "log_models": cfg.logging.mlflow_log_model,
                }
                if cfg.logging.use_mlflow
                else None,
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
        task = CentreOfMassTask(
            cfg,
            model=model,
            net=net,
            ddp=ddp,
            optimizer=make_optimizer(cfg, model),
            precision=precision,
            device=device,
            train_loader=train_loader,
            val_loader=val_loader,
            num_features=dataset.num_features,
        )
        steps_per_epoch = math.ceil(task.num_batches(0) / plan.accumulate)
        units = plan.max_epochs * (steps_per_epoch if sched.interval == "step" else 1)
        schedule = build_schedule(sched, [cfg.optim.lr], max(units, 1))
        checkpoints = (
            []
            if fast or not main  # only rank 0 writes checkpoints
            else [
                ModelCheckpoint(
                    run.checkpoints,
                    filename=cfg.train.checkpoint_filename,
                    monitor="val/loss",
                    mode="min",
                    save_top_k=1,
                    save_last=LAST_FILE,
                    every_n_steps=cfg.train.save_every_n_steps,
                    step_file=STEP_FILE,
                    best_weights_only=cfg.train.best_weights_only,
                )
            ]
        )
        loop = Loop(
            task,
            plan,
            callbacks=[
                # rank 0 only: the log lines, trackers and progress bar (metrics are the same on every rank)
                *(
                    [
                        EpochSummary(task, log),
                        TrackerLogger(trackers),
                        LogFinalModel(trackers, best_model, run.path("model") if run else None),
                    ]
                    if main
                    else []
                ),
                # `lr` with the step rows; per-epoch rows at epoch start would be logged again at the step a
                # run resumes from
                LearningRateMonitor(logging_interval="step"),
                *([ProgressBar()] if main else []),
                *user_callbacks,  # every rank: an EarlyStopping stops all ranks at the same epoch
                *checkpoints,
            ],
            schedule=schedule,
            resume=resume_state,
            resume_path=resume_path,  # the checkpoint's folder decides whether top-k carries on
            command=launch_command(),
        )

    _log_startup(log, cfg, timer, import_seconds, stats, split, model, train_loader)
    if device.type == "cuda" and cfg.train.cuda_warmup and not fast:
        log.info("CUDA kernel warm-up took %.2fs (state restored afterwards)", cuda_warmup(task))

    try:
        fit = loop.fit()
    finally:
        trackers.close()
    if world > 1 and not fit.interrupted:
        barrier()  # every rank has finished training before rank 0 plots and reports
    history = run.path(HISTORY_FILE) if run else None
    if run and history.exists() and not fit.interrupted:
        plot_training(history, run.plots / PLOT_FILE, title=f"egnn_com {cfg.model.name}")
    result = TrainingResult(
        **{f.name: getattr(fit, f.name) for f in fields(FitResult)},
        checkpoint_dir=run.checkpoints if run else None,
        history=history,
        phases=dict(timer.phases),
        time_to_first_step=task.first_step_done_at - started if task.first_step_done_at else None,
    )
    result.run_dir = run.root if run else None
    if not fast and not main:  # the same folder rank 0 writes
        result.run_dir = Path(cfg.train.output_dir)
        result.checkpoint_dir = Path(cfg.train.checkpoint_dir)
        result.history = result.run_dir / HISTORY_FILE
    if main:
        _log_summary(log, run, result)
    return result


# plotted curves: series name in the history -> "label/axis" (labels sharing the part after "/" share an axis)
PLOTTED = {
    "train/loss": "train/loss (MAE)",
    "val/loss": "val/loss (MAE)",
    "train/mse": "train/MSE",
    "val/mse": "val/MSE",
    "val/mae_x": "x/val MAE per component",
    "val/mae_y": "y/val MAE per component",
    "val/mae_z": "z/val MAE per component",
    "lr": "learning rate",
}


def best_model(loop: Loop, result: FitResult) -> torch.nn.Module:
    """The model the trackers keep at the end of a run: the best checkpoint's weights, else the last ones."""
    from egnn_com.inference import load_from_checkpoint

    if result.best_checkpoint is not None:
        return load_from_checkpoint(result.best_checkpoint)[0]
    return loop.task.model


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


def _log_summary(log: logging.Logger, run: RunFolder | None, result: TrainingResult) -> None:
    if run is None:
        shown = ("train/loss", "val/loss", "val/mae")
        log.info(
            "fast_dev_run finished: %s",
            {k: round(v, 4) for k, v in result.metrics.items() if k.startswith(shown)},
        )
        return
    best = result.best_checkpoint
    log.info(
        "outputs in %s: config.yaml, %s, checkpoints in %s (best: %s), plots/, logs/ (%s)",
        run.root,
        HISTORY_FILE,
        run.checkpoints,
        best.name if best else "none",
        log_file_path(log),
    )
