"""`python -m cabruca.train`: train the multi-task cabruca model on the shared training loop.

python -m cabruca.train --config configs/training_config.yaml [--device cpu|cuda|mps] [--resume last|RUN|CKPT]
    [--use-mlflow] [--use-wandb] [--lr 1e-3] [--batch-size 8] [--epochs 50] [--grad-accum 4]
    [--experiment-name NAME] [--mixed-precision] [--compile] [key.sub=value ...]
python -m cabruca.train --demo
torchrun --nproc_per_node N -m cabruca.train [same options]       # data parallel, see README "Scale out"

The run is `common.loop.Loop` over a `cabruca.engine.CabrucaTask` with the common callbacks (trackers, LR
monitor, early stopping, progress, checkpoints under cabruca's file names), cabruca's own (system metrics,
cache emptying, curves plot, profiler) and the user's from the config's `callbacks` list.

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

import click
import torch

from common.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.checkpoint import load_checkpoint
from common.cli import (
    config_option,
    console_script,
    data_dir_option,
    device_option,
    output_dir_option,
    precision_option,
    resume_option,
    seed_option,
    typed_options,
)
from common.config import config_to_dict, dump_config, save_config
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
from common.errors import CheckpointError, ConfigError, DeviceError
from common.logs import setup_logging
from common.loop import FitResult, Loop, Plan
from common.resume import find_checkpoint, read_training_checkpoint, saved_config
from common.runs import RunFolder
from common.trackers import build_trackers

from . import config as config_mod
from .callbacks import EmptyCache, HistoryPlot, SystemMetrics
from .config import CabrucaConfig
from .engine import HISTORY_FILE, CabrucaTask
from .optim import build_lr_schedule
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


OPTION_KEYS = {
    "lr": "optimizer.lr",
    "batch_size": "data.batch_size",
    "epochs": "training.num_epochs",
    "grad_accum": "training.gradient_accumulation_steps",
    "experiment_name": "experiment_name",
    "mixed_precision": "training.mixed_precision",
    "precision": "training.precision",
    "compile": "training.compile",
    "device": "device",
    "data_dir": "data.data_dir",
    "output_dir": "output_dir",
    "seed": "seed",
    "tile_size": "data.tile_size",
    "use_mlflow": "tracking.mlflow",
    "use_wandb": "tracking.wandb",
    "num_workers": "data.num_workers",
}
# Changing any of these between a checkpoint and a new run makes `--resume` a warm start (weights only).
_WARM_START_KEYS = ("experiment_name", "data.tile_size", "optimizer")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def resume_plan(state: dict, cfg: CabrucaConfig) -> tuple[str, str]:
    """('continue' | 'weights', why). continue = the exact same run goes on; weights = a new run (new folder,
    fresh optimizer, schedule and epochs) starting from the checkpoint's weights, as in progressive training."""
    mode = cfg.training.resume_mode
    if mode != "auto":
        return mode, f"training.resume_mode is {mode}"
    old, new = state.get("config", {}), config_to_dict(cfg)
    changed = [k for k in _WARM_START_KEYS if _get(old, k) != _get(new, k)] if old else ["config missing"]
    if changed:
        return "weights", f"{', '.join(changed)} differ from the checkpoint's run"
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
) -> FitResult:
    """Run folder, logging, trackers, the task and the loop; the library entry point the tests use.

    `resume`: a checkpoint file (its state already read may be passed as `state`); `resume_plan` decides
    between continuing that run exactly and a warm start. `callbacks` are added to the config's."""
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
        missing = [k for k in ("loop", "rng") if k not in state]
        if mode == "continue" and missing:
            raise CheckpointError(
                f"{resume} cannot continue its run exactly: it has no {', '.join(missing)} state (a weights-only "
                "checkpoint, or one written before the shared training loop). Start a new run from its "
                "weights with training.resume_mode=weights."
            )
    started = get_world_size() > 1 and init_distributed(device.type)
    try:
        result = _train(cfg, device, mode, why, resume, state, callbacks, logger)
        if (
            started
        ):  # rank 0 has finished writing before any process leaves (not after an error: it would hang)
            barrier()
        return result
    finally:
        if started:
            cleanup_distributed()


def choose_run_folder(cfg: CabrucaConfig, mode: str | None, resume) -> RunFolder:
    """The run folder, chosen (and created) by rank 0 and broadcast: every rank uses the same timestamp."""
    run = None
    if is_main_process():
        if mode == "continue":
            run = RunFolder(Path(resume).resolve().parent.parent, resume=True)  # <run>/checkpoints/<file>
        else:
            run = RunFolder.timestamped(cfg.output_dir, cfg.experiment_name)
    return broadcast_object(run)  # unpickling a RunFolder creates nothing


def _train(cfg, device, mode, why, resume, state, callbacks, logger) -> FitResult:
    t, main_process, world = cfg.training, is_main_process(), get_world_size()
    run = choose_run_folder(cfg, mode, resume)
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
    log.info("run folder %s; device %s", run.root, describe_device(device))
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
        task = CabrucaTask(cfg, device, init_weights=state["model"] if mode == "weights" else None)
        if main_process:
            trackers.log_params(config_to_dict(cfg))
        schedule, interval = build_lr_schedule(
            cfg, [g["lr"] for g in task.optimizer.param_groups], task.steps_per_epoch
        )
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
        *([SystemMetrics(log), TrackerLogger(trackers)] if main_process else []),
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


def run_demo(output_dir: str, device: str, extra_overrides: tuple[str, ...]) -> int:
    """Synthetic scenes, light config, a short run, evaluation, and where everything is."""
    from .evaluate import evaluate_checkpoint
    from .synthetic import generate

    if get_world_size() > 1:
        raise ConfigError("--demo runs in one process; start it with python -m cabruca.train, not torchrun.")

    data_dir = Path(output_dir) / "demo_data"
    if not (data_dir / "val" / "annotations.json").exists():
        click.echo(f"generating synthetic scenes in {data_dir} ...")
        generate(data_dir, num_train=6, num_val=2, image_size=256, seed=0)
    cfg = config_mod.load(
        "training_config_light",
        cli={
            "experiment_name": "demo",
            "output_dir": output_dir,
            "device": device,
            "data.data_dir": str(data_dir),
            "training.num_epochs": 6,
            "training.max_steps_per_epoch": 8,
            "training.checkpoint_every_n_epochs": 3,
            "scheduler.type": "onecycle",
            "optimizer.lr": 0.003,
            # mAP stays near 0 in two minutes; the best checkpoint (evaluated below) follows the validation loss.
            "training.monitor_metric": "val/loss",
            "training.minimize_metric": True,
        },
        overrides=extra_overrides,
    )
    result = train(cfg)
    if result.interrupted:
        return result.exit_code
    best = result.run_dir / "checkpoints" / "checkpoint_best.pth"
    report = evaluate_checkpoint(
        best if best.exists() else result.run_dir / "checkpoints" / "checkpoint_latest.pth",
        data_dir,
        split="val",
        out_dir=result.run_dir / "evaluation",
        device=device,
    )
    hist = result.run_dir / HISTORY_FILE
    click.echo(
        "\n".join(
            [
                "",
                f"demo finished: {result.epochs_done} epochs, {result.global_step} steps",
                f"  run folder:      {result.run_dir}",
                f"  history:         {hist}",
                f"  curves:          {result.run_dir / 'plots' / 'training_curves.png'}",
                f"  evaluation:      {report}",
                f"  TensorBoard:     tensorboard --logdir {result.run_dir / 'tensorboard'}",
                f"  dashboard:       python -m cabruca.monitor --runs-dir {Path(output_dir)}",
                f"  continue:        {COMMAND} --resume {result.run_dir} --epochs 12",
            ]
        )
    )
    return 0


def _option(dashed: str, **kw):
    """A click option spelled with dashes that also accepts underscores (--batch-size, --batch_size)."""
    underscored = "--" + dashed[2:].replace("-", "_")
    names = (dashed, underscored) if underscored != dashed else (dashed,)
    return click.option(*names, **kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": False})
@config_option(
    "cabruca",
    default=None,
    help="YAML path or bundled config name (training_config, training_config_light). Default: "
    "training_config, or the checkpoint's own config with --resume.",
)
@device_option(type=str)
@resume_option(
    help="Continue a run: 'last' (the newest checkpoint under --output-dir), a run folder or a checkpoint "
    "file. It uses the run's saved config; options typed beside it override it. A changed experiment name, "
    "tile size or optimizer starts a new run from the checkpoint's weights instead (progressive training)."
)
@_option(
    "--use-mlflow",
    is_flag=True,
    help="Also log to MLflow (mlruns/ in the run folder or MLFLOW_TRACKING_URI).",
)
@_option("--use-wandb", is_flag=True, help="Also log to Weights & Biases (offline without WANDB_API_KEY).")
@_option("--lr", type=float, help="optimizer.lr.")
@_option("--batch-size", type=int, help="data.batch_size.")
@_option("--epochs", type=int, help="training.num_epochs.")
@_option("--grad-accum", type=int, help="training.gradient_accumulation_steps.")
@_option("--experiment-name", type=str, help="Run folder prefix: <output-dir>/<name>_<timestamp>.")
@_option("--mixed-precision", is_flag=True, help="float16 autocast + GradScaler (CUDA only).")
@precision_option(help="32 | bf16-mixed | 16-mixed | 16-true | bf16-true (training.precision).")
@_option("--compile", is_flag=True, help="torch.compile the model.")
@data_dir_option(type=str, help="data.data_dir (holds train/ and val/).")
@output_dir_option(type=str, help="Parent folder of run folders (default outputs).")
@_option("--tile-size", type=int, help="data.tile_size.")
@_option("--num-workers", type=int, help="data.num_workers.")
@seed_option(help="Seed for data order, augmentation and initialisation.")
@_option("--demo", is_flag=True, help="Synthetic data + light config: a two-minute CPU run, then evaluation.")
@_option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(ctx, config, resume, demo, print_config, overrides, **_):
    """Train cabruca's multi-task segmentation model. Trailing key.sub=value arguments override the config.

    Exits 0 when training finished, 130 after SIGINT (Ctrl+C) and 143 after SIGTERM; a stopped run has saved
    its state and logged the command that resumes it."""
    cli = typed_options(ctx, dict(OPTION_KEYS))
    if demo:
        return run_demo(cli.pop("output_dir", "outputs"), cli.pop("device", "auto"), overrides)
    source, state, checkpoint = config_mod.resolve_source(config), None, None
    if resume:
        output_dir = cli.get("output_dir")
        if output_dir is None:  # --resume last: the output folder the config (with its overrides) names
            output_dir = config_mod.load(source, cli=cli, overrides=overrides).output_dir
        checkpoint = resume_checkpoint(resume, output_dir)  # 'last': the newest run under output_dir
        state = read_resume_checkpoint(checkpoint)
        if config is None and isinstance(state.get("config"), dict):
            source = saved_config(state, CabrucaConfig)
    cfg = config_mod.load(source, cli=cli, overrides=overrides)
    if print_config:
        if is_main_process():
            click.echo(dump_config(cfg))
        return 0
    return train(cfg, resume=checkpoint, state=state).exit_code


cli = console_script(main)  # the installed command


if __name__ == "__main__":
    cli()
