"""cabruca's training run on the shared loop: run folder, logging, trackers, the task, the loop, resume.

`python -m cabruca.train` (the command line, in `cabruca.train`) parses its options and calls `train` here;
library users and tests call `train(cfg)` directly. The run is `common.loop.Loop` over a
`cabruca.engine.CabrucaTask` with the common callbacks (trackers, LR monitor, early stopping, progress,
checkpoints under cabruca's file names), cabruca's own (system metrics, cache emptying, curves plot,
profiler) and the user's from the config's `callbacks` list.

Run folder: `<output_dir>/<experiment_name>` when the name was given explicitly (`--experiment-name`),
else `<output_dir>/<experiment_name>_<YYYYMMDD_HHMMSS>`; a named folder that already holds a run gets the
timestamp too, unless this run continues it (see `choose_run_folder`).

Under torchrun (WORLD_SIZE > 1) every process joins the process group (NCCL on CUDA, each rank on GPU
LOCAL_RANK; Gloo on CPU), trains its slice of each global batch (data.batch_size x world size x
training.gradient_accumulation_steps tiles per optimizer step; the learning rate is not rescaled), and only
rank 0 writes the run folder, whose name rank 0 chooses and broadcasts. Without torchrun nothing changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.allocator import tune_malloc
from common.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.checkpoint import load_checkpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, torch_device
from common.distributed import (
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_local_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from common.errors import CheckpointError, DeviceError
from common.logs import setup_logging
from common.loop import FitResult, Loop, Plan
from common.resume import find_checkpoint, read_training_checkpoint, run_folder_of
from common.runs import RunFolder
from common.trackers import LogFinalModel, build_trackers

from .callbacks import EmptyCache, HistoryPlot, SystemMetrics
from .config import CabrucaConfig
from .engine import HISTORY_FILE, CabrucaTask, load_from_checkpoint
from .optim import build_lr_schedule
from .pretrained import log_pretrained_report
from .profiling import BatchProfiler

COMMAND = "python -m cabruca.train"  # how a run is started: the resume hint a stopped run logs starts with it


def launch_command() -> str:
    """How this run was started, for the resume hint: torchrun with the per-node process count under it."""
    if get_world_size() <= 1:
        return COMMAND
    per_node = os.environ.get("LOCAL_WORLD_SIZE") or str(get_world_size())
    nodes = int(get_world_size()) // max(int(per_node), 1)
    multi = f" --nnodes {nodes} --rdzv-backend c10d --rdzv-endpoint HOST:PORT" if nodes > 1 else ""
    return f"torchrun{multi} --nproc_per_node {per_node} -m cabruca.train"


def rank_device(cfg: CabrucaConfig, log: logging.Logger | None = None) -> torch.device:
    """This process's device: under torchrun GPU LOCAL_RANK on CUDA (the CPU otherwise); in one process
    cfg.device, with a hint to use torchrun when several GPUs are visible (one process uses one GPU)."""
    device = torch_device(cfg.device)
    if device.type != "cuda":
        return device
    if get_world_size() > 1:
        return torch.device("cuda", get_local_rank())
    gpus = torch.cuda.device_count()
    if gpus > 1:
        (log or logging.getLogger("trainyard")).warning(
            "%d GPUs are visible but one process trains on one GPU (%s); to train on all of them run "
            "`torchrun --nproc_per_node %d -m cabruca.train ...` with the same options.",
            gpus,
            device,
            gpus,
        )
    return device


# Changing any of these between a checkpoint and a new run makes `--resume` a warm start (weights only).
_WARM_START_KEYS = ("experiment_name", "data.tile_size", "optimizer")
# What a checkpoint needs to continue its run exactly; checkpoint_best.pth (weights only) lacks them.
_LOOP_STATE_KEYS = ("loop", "rng")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def resume_plan(state: dict, cfg: CabrucaConfig) -> tuple[str, str]:
    """('continue' | 'weights', why). continue = the exact same run goes on; weights = a new run (new folder,
    fresh optimizer, schedule and epochs) starting from the checkpoint's weights, as in progressive training.

    `training.resume_mode: auto` continues only a complete checkpoint of the same experiment, tile size and
    optimizer; a weights-only file (checkpoint_best.pth) or a changed one of those starts a new run."""
    mode = cfg.training.resume_mode
    if mode != "auto":
        return mode, f"training.resume_mode is {mode}"
    reasons = []
    lacking = [k for k in _LOOP_STATE_KEYS if k not in state]
    if lacking:
        reasons.append(
            f"the checkpoint holds weights only (no {' or '.join(lacking)} state), so it starts a new run"
        )
    old, new = state.get("config", {}), config_to_dict(cfg)
    changed = [k for k in _WARM_START_KEYS if _get(old, k) != _get(new, k)] if old else ["config missing"]
    if changed:
        reasons.append(f"{', '.join(changed)} differ from the checkpoint's run")
    if reasons:
        return "weights", "; ".join(reasons)
    return "continue", "same experiment, tile size and optimizer as the checkpoint's run"


LATEST_CHECKPOINT = "checkpoint_latest.pth"


def resume_checkpoint(spec: str, output_dir: str | None) -> Path:
    """The file `--resume last | RUN | CKPT` continues from. For a run, its newest complete state,
    checkpoint_latest.pth: the weights-only checkpoint_best.pth is written after it by the same save, so
    the newest file on disk can be one that cannot continue the run."""
    found = find_checkpoint(spec, output_dir)
    latest = found.parent / LATEST_CHECKPOINT
    if Path(spec).is_file() or not latest.is_file():
        return found
    return latest


def read_resume_checkpoint(path: str | Path) -> dict:
    """A checkpoint to continue (loop state, config, RNG) or, failing that, one whose weights can start a new
    run (a weights-only file, or one written before the shared training loop)."""
    try:
        return read_training_checkpoint(path)
    except CheckpointError:
        state = load_checkpoint(path)  # a damaged file raises its own, clearer error here
        if "model" not in state:
            raise CheckpointError(
                f"{path} is not a cabruca training checkpoint (no model weights)."
            ) from None
        return state


def train(
    cfg: CabrucaConfig,
    *,
    resume: str | Path | None = None,
    state: dict | None = None,
    callbacks: Sequence[Any] = (),
    logger: logging.Logger | None = None,
    named_folder: bool = False,
) -> FitResult:
    """Run folder, logging, trackers, the task and the loop; the library entry point the tests use.

    `resume`: a checkpoint file (its state already read may be passed as `state`); `resume_plan` decides
    between continuing that run exactly and a warm start. `callbacks` are added to the config's.
    `named_folder`: the experiment name is the run folder's name (the user typed it), not a prefix of a
    timestamped one; see `choose_run_folder`."""
    device = rank_device(cfg, logger)
    t = cfg.training
    if t.mixed_precision and device.type != "cuda":
        raise DeviceError(
            f"--mixed-precision (float16 autocast with a GradScaler) needs a CUDA device; this run is on "
            f"{device.type}. Drop the option, or train with --device cuda on a machine with a GPU."
        )
    mode, why = None, ""
    if resume is not None:
        state = read_resume_checkpoint(resume) if state is None else state
        mode, why = resume_plan(state, cfg)
        missing = [k for k in _LOOP_STATE_KEYS if k not in state]
        if mode == "continue" and missing:
            raise CheckpointError(
                f"{resume} cannot continue its run exactly: it has no {', '.join(missing)} state (a weights-only "
                "checkpoint, or one written before the shared training loop). Start a new run from its "
                "weights with training.resume_mode=weights."
            )
    started = get_world_size() > 1 and init_distributed(device.type)
    try:
        # Data, model and pretrained weights are checked before the run folder exists: a refusal leaves none.
        task = CabrucaTask(cfg, device, init_weights=state["model"] if mode == "weights" else None)
        run, note = choose_run_folder(cfg, mode, resume, named=named_folder)
        result = _train(cfg, task, run, note, device, mode, why, resume, state, callbacks, logger)
        # rank 0 has finished writing before any process leaves (not after an error: it would hang)
        if started:
            barrier()
        return result
    finally:
        if started:
            cleanup_distributed()


def choose_run_folder(
    cfg: CabrucaConfig, mode: str | None, resume, *, named: bool = False
) -> tuple[RunFolder, str]:
    """The run folder and, when it is not the folder the user named, a note saying which one is used.

    - an exact continuation (`mode` "continue") writes on in the checkpoint's own run folder;
    - a named run (`named`: the user typed --experiment-name) writes to `<output_dir>/<experiment_name>`, so
      a later command can name its files (the progressive recipe's `--resume outputs/stage1_256/...`);
    - otherwise, or when that folder already holds a run this one does not continue, a new
      `<output_dir>/<experiment_name>_<YYYYMMDD_HHMMSS>`: an earlier run is never written over.
    Rank 0 chooses (and creates) it and broadcasts it, so every rank uses the same timestamp."""
    run, note = None, ""
    if is_main_process():
        wanted = Path(cfg.output_dir) / cfg.experiment_name
        if mode == "continue":
            run = RunFolder(run_folder_of(Path(resume).resolve()), resume=True)
        elif named and not _holds_files(wanted):
            run = RunFolder(wanted)
        else:
            run = RunFolder.timestamped(cfg.output_dir, cfg.experiment_name)
            if named:
                note = (
                    f"{wanted} already holds a run that this one does not continue, so this run writes to "
                    f"{run.root} (to continue that run: --resume {wanted})"
                )
    return broadcast_object((run, note))  # unpickling a RunFolder creates nothing


def _holds_files(folder: Path) -> bool:
    """True when `folder` is a file or has a file anywhere below it (an empty folder is free to use)."""
    return folder.exists() and (not folder.is_dir() or any(p.is_file() for p in folder.rglob("*")))


def _train(cfg, task, run, note, device, mode, why, resume, state, callbacks, logger) -> FitResult:
    t, main_process, world = cfg.training, is_main_process(), get_world_size()
    if logger is not None:
        log = logger
    elif main_process:
        log = setup_logging(run.logs, level="INFO")
    else:  # the other ranks log warnings to stderr and write no log file
        log = setup_logging(None, level="WARNING")
    if resume is not None:
        log.info(
            "resuming from %s: %s (%s)",
            resume,
            "exact continuation" if mode == "continue" else "new run from its weights",
            why,
        )
    if note:
        log.warning("%s", note)
    # the step's large activations recycled from the heap instead of page-faulted anew every step
    log.info("run folder %s; device %s; %s", run.root, describe_device(device), tune_malloc())
    if world > 1:
        log.info(
            "data parallel over %d processes: global batch %d = data.batch_size %d x %d processes x %d "
            "accumulation steps (learning rate as configured, not rescaled)",
            world,
            cfg.data.batch_size * world * t.gradient_accumulation_steps,
            cfg.data.batch_size,
            world,
            t.gradient_accumulation_steps,
        )
    if main_process:
        save_config(cfg, run.path("config.yaml"))
    tr = cfg.tracking
    trackers = build_trackers(
        run,
        history_file=HISTORY_FILE,
        tensorboard=tr.tensorboard,
        mlflow={"experiment": tr.project, "run_name": run.root.name, "tags": {k: "" for k in tr.tags}}
        if tr.mlflow
        else None,
        wandb={
            "project": tr.project,
            "name": run.root.name,
            "tags": tuple(tr.tags),
            "config": config_to_dict(cfg),
        }
        if tr.wandb
        else None,
        resume_step=int(state["global_step"]) if mode == "continue" else None,
        logger=log,
    )
    try:
        if main_process:
            trackers.log_params(config_to_dict(cfg))
            # a resumed run's weights replace the pretrained ones (and a continued run has logged them)
            if task.pretrained is not None and mode is None:
                log_pretrained_report(task.pretrained, log, trackers)
        groups = task.optimizer.param_groups
        log.info(
            "optimizer %s: %s",
            cfg.optimizer.type,
            ", ".join(f"{name} lr {g['lr']:g}" for name, g in zip(task.group_names, groups, strict=True)),
        )
        schedule, interval = build_lr_schedule(cfg, [g["lr"] for g in groups], task.steps_per_epoch)
        plan = Plan(
            max_epochs=t.num_epochs,
            accumulate=t.gradient_accumulation_steps,
            log_every_n_steps=t.log_every_n_steps,
            val_every_n_epochs=1,
            schedule_interval=interval,
            schedule_monitor=t.monitor_metric,
        )
        loop = Loop(
            task,
            plan,
            callbacks=[*loop_callbacks(cfg, run, task, trackers, log), *callbacks],
            schedule=schedule,
            resume=state if mode == "continue" else None,
            command=launch_command(),
        )
        result = loop.fit()
    finally:
        trackers.close()
    result.run_dir = run.root
    if result.interrupted:
        log.info("stopped by %s at step %d; outputs in %s", result.interrupted, result.global_step, run.root)
    else:
        log.info(
            "finished at epoch %d, step %d; outputs in %s", result.epochs_done, result.global_step, run.root
        )
    return result


def loop_callbacks(cfg: CabrucaConfig, run: RunFolder, task: CabrucaTask, trackers, log) -> list:
    """The run's callbacks, in order: cabruca's system metrics (logged before the trackers' epoch flush),
    trackers, LR, early stopping, progress, the curves plot (after the flush), the optional cache emptying and
    profiler, the config's `callbacks`, and the checkpoints (which the loop always runs last)."""
    t = cfg.training
    mode = "min" if t.minimize_metric else "max"
    main_process = is_main_process()
    # Under DDP the files and the console belong to rank 0; early stopping runs on every rank (the metrics
    # it reads are the same everywhere), and ModelCheckpoint skips its writes off rank 0 itself.
    callbacks = [
        *(
            [
                SystemMetrics(log),
                TrackerLogger(trackers),
                LogFinalModel(trackers, best_model, run.path("model")),
            ]
            if main_process
            else []
        ),
        LearningRateMonitor(logging_interval="step", names=task.group_names),
        EarlyStopping(t.monitor_metric, patience=t.early_stopping_patience or 10**9, mode=mode),
    ]
    if main_process:
        callbacks += [
            ProgressBar(),
            HistoryPlot(run.path(HISTORY_FILE), run.plots / "training_curves.png", log),
        ]
    if t.empty_cache_freq:
        callbacks.append(EmptyCache(t.empty_cache_freq))
    if t.profile and main_process:
        callbacks.append(BatchProfiler(t.profile_batches, run.path("profiler"), log))
    callbacks += build_callbacks(cfg.callbacks)
    # checkpoint_latest.pth is both the epoch-end "last" file and the mid-epoch step file, so it is always the
    # newest complete state and `--resume .../checkpoint_latest.pth` (or `--resume last`) continues exactly;
    # checkpoint_best.pth holds the weights only.
    callbacks.append(
        ModelCheckpoint(
            run.checkpoints,
            filename="checkpoint_best.pth",
            monitor=t.monitor_metric,
            mode=mode,
            save_last=LATEST_CHECKPOINT,
            every_n_epochs=t.checkpoint_every_n_epochs or None,
            periodic="checkpoint_epoch_{epoch}.pth",
            every_n_steps=t.save_every_n_steps,
            step_file=LATEST_CHECKPOINT,
            # the best file serves prediction and warm starts: model and config only, no optimizer state
            best_weights_only=True,
        )
    )
    return callbacks


def best_model(loop: Loop, result: FitResult):
    """The model the trackers keep at the end of a run (MLflow): the best checkpoint's weights, else the last."""
    if result.best_checkpoint is not None:
        return load_from_checkpoint(result.best_checkpoint)[0]
    return loop.task.model
