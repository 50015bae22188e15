"""DT-GCNN training on the shared loop (`common.loop`): what is dtgcnn's own, and `train()` that runs it.

- `DTGCNNTask`: the mesh data (label-balanced P x K batches, augmentation, prefetching), the MLX model, the
  joint loss and its metrics; the loop decides when an optimizer step ends, validates, schedules the LR,
  checkpoints and stops.
- dtgcnn's callbacks: `EpochSummary` (a log line, `system/` peak-memory metrics, the embedding-collapse
  warning), `TrainingPlots` (training curves, loss distribution) and `ClearMlxCache`.
- `train()`: builds them with the common callbacks (trackers, LR monitor, early stopping, progress,
  checkpoints, the user's callbacks from the config), fits, then evaluates the best checkpoint on the test
  split (test_metrics.json).

Exact resume: a checkpoint holds the model, AdamW state, schedule, callbacks' state (early stopping, the
epoch's step losses), the loop's position and running sums, and the RNG states. The batch order is
`PKOrder(epoch)` (a function of seed and epoch) and augmentation uses `sample_rng(seed, epoch, position)`,
so a resumed run asks for the epoch's batches from the saved index and replays nothing.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

import dtgcnn  # noqa: F401  (puts the fast BLAS in place before mlx loads)
from common import mlx_support
from common.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.checkpoint import load_checkpoint
from common.config import config_to_dict, save_config
from common.devices import describe_device, mlx_device, peak_memory_mb
from common.distributed import get_rank, get_world_size, is_main_process
from common.errors import CheckpointError, DataError
from common.logs import PhaseTimer
from common.loop import FitResult, Loop, Plan
from common.mlx_support import load_model_state, load_optimizer_state, model_state, optimizer_state
from common.resume import read_training_checkpoint
from common.runs import RunFolder, atomic_write_text
from common.schedules import build_schedule
from common.seeding import seed_everything
from common.trackers import LogFinalModel, Trackers, build_trackers
from dtgcnn import cpu_kernels, plotting
from dtgcnn.config import TrainConfig, schedule_config
from dtgcnn.data import MeshAugmentation, MeshSplit, PKOrder, pk_sampler, prefetch
from dtgcnn.engine import Stepper, StepperTask, evaluate_split
from dtgcnn.mlflow_model import export_model
from dtgcnn.model import DTGCNN, ModelSpec, count_parameters

log = logging.getLogger("trainyard.dtgcnn")

COMMAND = "python -m dtgcnn.train"


def load_splits(cfg: TrainConfig, data_dir: Path) -> dict[str, MeshSplit]:
    """train and val (required) and test (when its files exist), validated against each other."""
    train = MeshSplit.for_config(data_dir, "train", cfg, cfg.num_classes or None, cache=cfg.cache_data)
    splits = {"train": train}
    for name in ("val", "test"):
        if name == "test" and not (data_dir / "test_metadata.json").exists():
            continue
        splits[name] = MeshSplit.for_config(data_dir, name, cfg, train.num_classes, cache=cfg.cache_data)
    return splits


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> DTGCNN:
    model = DTGCNN(ModelSpec.from_config(cfg, in_channels, num_classes))
    mx.eval(model.parameters())
    return model


def setup_device(cfg: TrainConfig) -> str:
    device = mlx_device(cfg.device)
    mx.set_default_device(device)
    if cfg.memory_limit_gb > 0:
        mx.set_memory_limit(int(cfg.memory_limit_gb * 1024**3))
    return describe_device(device)


class DTGCNNTask(StepperTask):
    """DT-GCNN's side of the loop: P x K mesh batches, the MLX model and AdamW, the joint loss, metrics.

    A batch is (batch_index, x [B,N,C] float32, labels [B] int32). `micro_step` adds scale x the
    micro-batch's gradients to the step's pending sum (`engine.Stepper`); `optimizer_step` clips, checks
    and applies it. The model is built here, so seed the RNGs (`seed_everything(cfg.seed)`) before.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        splits: dict[str, MeshSplit],
        *,
        debug_dir: Path | None = None,
        data_dir: str | Path | None = None,
    ):
        self.cfg, self.splits = cfg, splits
        self.data_dir = None if data_dir is None else Path(data_dir)
        train = splits["train"]
        self.num_classes = train.num_classes
        # data parallel under mlx.launch: this process's share of each global batch (one P x K group)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.sampler = pk_sampler(
            train.labels,
            cfg.batch_size,
            cfg.samples_per_label,
            cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.augmentation = (
            MeshAugmentation(cfg.rotation_range, tuple(cfg.scale_range), cfg.noise_std, cfg.flip_probability)
            if cfg.augment
            else None
        )
        self.model = build_model(cfg, train.in_channels, self.num_classes)
        self.optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        self.stepper = Stepper(self.model, self.optimizer, cfg, debug_dir)
        # (embeddings [N,E], labels [N]) of the last validation, for the loss-distribution plot
        self.val_embeddings: tuple[Any, Any] | None = None

    @property
    def pk(self) -> PKOrder:
        return self.sampler.order_fn

    # -- the loop's calls ----------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return self.sampler.batches_per_epoch()

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch)
        return prefetch(
            self.splits["train"],
            list(self.sampler),
            augmentation=self.augmentation,
            seed=self.cfg.seed,
            epoch=epoch,
            start=start,
            depth=self.cfg.prefetch_batches,
            rank=self.rank,
            world_size=self.world_size,
        )

    def micro_step(self, batch, scale: float) -> dict[str, float]:
        _, x, y = batch
        return self.stepper.micro_step(x, y, scale=scale)

    def validate(self) -> dict[str, float]:
        # Every process evaluates the whole val split: the weights and BatchNorm statistics are the same on
        # every process (averaged each step), so are the metrics, and so are early stopping's decisions.
        metrics, emb, _, labels = evaluate_split(
            self.model, self.splits["val"], self.cfg, with_embeddings=True, max_batches=self.val_batch_limit
        )
        self.val_embeddings = (emb, labels)
        return metrics

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "model": model_state(self.model),
            "optimizer": optimizer_state(self.optimizer),
            "config": config_to_dict(self.cfg),
            "num_classes": self.num_classes,
        }
        if self.data_dir is not None:
            state["data_dir"] = str(self.data_dir)  # lets `--resume` find the data without --data-dir
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("num_classes", self.num_classes))
        if saved != self.num_classes:
            raise CheckpointError(
                f"The checkpoint was trained on {saved} identities, this data has {self.num_classes}."
            )
        load_model_state(self.model, state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])


# -- dtgcnn's callbacks ------------------------------------------------------------------------------------


class EpochSummary(Callback):
    """After each epoch: one log line, the peak memory as `system/<name>` metrics, and a warning when the
    embeddings collapse (train/embedding_spread below `collapse_warn`)."""

    def __init__(self, num_epochs: int, collapse_warn: float) -> None:
        self.num_epochs, self.collapse_warn = num_epochs, collapse_warn

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        memory = peak_memory_mb()
        loop.log({f"system/{k}": v for k, v in memory.items()})
        get = lambda name: metrics.get(name, math.nan)  # noqa: E731
        log.info(
            "epoch %d/%d step %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f recall@1 %.3f "
            "AUC %.3f | lr %.2e | peak %s",
            loop.pos.epoch + 1,
            self.num_epochs,
            loop.pos.step,
            get("train/loss"),
            get("train/accuracy"),
            get("val/loss"),
            get("val/accuracy"),
            get("val/recall_at_1"),
            get("val/roc_auc"),
            loop.lrs_used[0],
            ", ".join(f"{k} {v:.0f}" for k, v in memory.items()),
        )
        spread = metrics.get("train/embedding_spread", math.inf)
        if spread < self.collapse_warn:
            log.warning(
                "embedding collapse: spread %.4f < %.4f; lower triplet_weight or learning_rate",
                spread,
                self.collapse_warn,
            )


class TrainingPlots(Callback):
    """plots/training_curves_epoch_NNNN.png every `plot_every` epochs and after the last, and
    plots/loss_distribution.png after every epoch (the epoch's training loss per optimizer step, and the
    validation distances of same- vs different-identity pairs). `plot_every=0` draws neither.

    The epoch's step losses are callback state, so a run resumed mid-epoch draws the same histogram."""

    def __init__(self, run: RunFolder, plot_every: int, num_epochs: int) -> None:
        self.run, self.plot_every, self.num_epochs = run, plot_every, num_epochs
        self.losses: list[float] = []

    def on_train_batch_end(self, loop: Loop, outputs: dict[str, float]) -> None:
        if self.plot_every:
            self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        epoch = loop.pos.epoch + 1
        if self.plot_every and is_main_process():
            if epoch % self.plot_every == 0 or epoch == self.num_epochs:
                plotting.training_curves(self.run.path("metrics_history.json"), self.run.plots, epoch)
            validated = getattr(loop.task, "val_embeddings", None)
            if validated is not None and "val/loss" in metrics:
                emb, labels = validated
                plotting.loss_distribution(
                    self.run.plots / "loss_distribution.png", self.losses, emb, labels, epoch
                )
        self.losses = []

    def state_dict(self) -> dict:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [float(v) for v in state.get("losses", [])]


class ClearMlxCache(Callback):
    """`mx.clear_cache()` every `every` epochs (0: never): returns MLX's cached buffers to the system."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        if self.every and (loop.pos.epoch + 1) % self.every == 0:
            mx.clear_cache()


# -- the run -----------------------------------------------------------------------------------------------


def distributed_command(world_size: int, command: str = COMMAND) -> str:
    """`command`, under `mlx.launch -n <world_size>` when the run has several processes."""
    return command if world_size <= 1 else f"mlx.launch -n {world_size} -- {command}"


def resume_command(data_dir: str | Path, command: str = COMMAND) -> str:
    """The command line a run prints for resuming (the loop appends `--resume <checkpoint>`): it names the
    data folder, and the run folder follows from the checkpoint's path."""
    return f"{command} --data-dir {shlex.quote(str(Path(data_dir).resolve()))}"


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    resume: str | Path | None = None,
    resume_state: dict | None = None,
    callbacks: Sequence[Callback] = (),
    max_steps: int | None = None,
) -> FitResult:
    """Train in `output_dir` until num_epochs, early stopping, `max_steps` optimizer steps or a signal.

    `resume`: a checkpoint to continue from exactly (`resume_state`: its contents when already read).
    `callbacks`: added to the config's `callbacks`. Returns the loop's FitResult with `run_dir` and `test`
    (the best checkpoint's test metrics, when the run finished and the data has a test split)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"Data directory {data_dir} does not exist (make one with python -m dtgcnn.synthetic)."
        )
    started = time.perf_counter()
    mlx_support.init_distributed()  # joins the group when mlx.launch started this process; else nothing
    main = is_main_process()  # only rank 0 writes the run folder
    run = RunFolder(Path(output_dir).resolve(), resume=resume is not None or resume_state is not None)
    timer = PhaseTimer(log)
    log.info(dtgcnn.BLAS.describe())
    log.info("CPU: %s; %s", dtgcnn.MALLOC, cpu_kernels.describe())
    log.info("device: %s", setup_device(cfg))
    with timer.phase("load_data"):
        splits = load_splits(cfg, data_dir)
    seed_everything(cfg.seed)
    with timer.phase("build_model"):
        task = DTGCNNTask(
            cfg, splits, debug_dir=run.path("debug") if main else None, data_dir=data_dir.resolve()
        )
    if resume is not None and resume_state is None:
        with timer.phase("resume"):
            resume_state = read_training_checkpoint(resume)
    accumulate = max(1, cfg.gradient_accumulation_steps)
    steps_per_epoch = math.ceil(task.num_batches(0) / accumulate)
    sched_cfg, total = schedule_config(cfg, steps_per_epoch)
    plan = Plan(
        max_epochs=cfg.num_epochs,
        max_steps=max_steps,
        accumulate=accumulate,
        log_every_n_steps=cfg.log_interval,
        schedule_interval=sched_cfg.interval,
    )
    resume_step = None if resume_state is None else int(resume_state["global_step"])
    trackers = build_trackers(
        run,
        tensorboard=cfg.tensorboard,
        mlflow={"experiment": "dtgcnn", "run_name": run.root.name} if cfg.mlflow else None,
        resume_step=resume_step,
        logger=log,
    )
    if resume_state is None:
        trackers.log_params(config_to_dict(cfg))
    if main:
        save_config(cfg, run.path("config.yaml"))
    checkpoints = ModelCheckpoint(
        run.checkpoints,
        filename="best_model.npz",
        monitor="val/loss",
        save_last="last.npz",
        every_n_epochs=cfg.checkpoint_every or None,
        periodic="checkpoint_epoch_{epoch:04d}.npz",
        every_n_steps=cfg.checkpoint_every_steps,
        step_file="last_step.npz",
    )
    loop = Loop(
        task,
        plan,
        callbacks=[
            EpochSummary(cfg.num_epochs, cfg.collapse_warn),  # before TrackerLogger: its row is flushed too
            TrackerLogger(trackers),
            # the best weights (weights-only) as the run's model, where a tracker keeps models (MLflow)
            LogFinalModel(
                trackers,
                lambda loop, result: export_model(
                    result.best_checkpoint or result.checkpoint, run.path("model")
                ),
            ),
            LearningRateMonitor(),
            EarlyStopping(monitor="val/loss", patience=cfg.patience, min_delta=cfg.min_delta),
            ProgressBar(),
            TrainingPlots(run, cfg.plot_every, cfg.num_epochs),
            ClearMlxCache(cfg.clear_cache_every),
            *build_callbacks(cfg.callbacks),
            *callbacks,
            checkpoints,
        ],
        schedule=build_schedule(sched_cfg, cfg.learning_rate, total),
        resume=resume_state,
        resume_path=resume,
        command=resume_command(data_dir, distributed_command(task.world_size)),
    )
    if task.world_size > 1:
        log.info(
            "data parallel: %d processes (mx.distributed); global batch %d = %d per process x %d processes "
            "x %d accumulation steps; the learning rate is the config's (%g), not rescaled",
            task.world_size,
            cfg.batch_size * task.world_size * accumulate,
            cfg.batch_size,
            task.world_size,
            accumulate,
            cfg.learning_rate,
        )
    log.info(
        "data: %s; %d train / %d val meshes, %d identities, %d batches (P=%d x K=%d) per epoch, "
        "%d micro-batches per optimizer step",
        data_dir,
        len(splits["train"]),
        len(splits["val"]),
        task.num_classes,
        task.num_batches(0),
        task.pk.p,
        task.pk.k,
        accumulate,
    )
    log.info(
        "model: %d parameters; k=%d, edge convs %s",
        count_parameters(task.model),
        cfg.k,
        list(cfg.edge_conv_dims),
    )
    timer.report()
    try:
        result = loop.fit()
        result.run_dir = run.root
        paused = (
            max_steps is not None and result.global_step >= max_steps and result.epochs_done < cfg.num_epochs
        )
        if not result.interrupted and not paused and main:
            result.test = final_test(task, checkpoints.best_path, trackers, run, result.global_step)
    finally:
        trackers.close()
        for split in splits.values():
            split.close()
    log.info(
        "%s after %.1f s: %d epochs, %d optimizer steps; outputs in %s",
        f"stopped ({result.interrupted or result.stop_reason})"
        if result.interrupted or result.stopped_early
        else "finished",
        time.perf_counter() - started,
        result.epochs_done,
        result.global_step,
        run.root,
    )
    return result


def final_test(
    task: DTGCNNTask, best: Path | None, trackers: Trackers, run: RunFolder, step: int
) -> dict[str, float] | None:
    """Test metrics of the best checkpoint (or the current weights) -> test_metrics.json and test/<name>."""
    if "test" not in task.splits:
        return None
    if best is not None and best.exists():
        load_model_state(task.model, load_checkpoint(best)["model"])
    test = evaluate_split(task.model, task.splits["test"], task.cfg)
    trackers.log_metrics({f"test/{k}": v for k, v in test.items()}, step=step)
    atomic_write_text(run.path("test_metrics.json"), json.dumps(test, indent=2))
    log.info(
        "test (%s): loss %.4f acc %.3f recall@1 %.3f AUC %.3f",
        best.name if best else "last weights",
        test["loss"],
        test["accuracy"],
        test["recall_at_1"],
        test["roc_auc"],
    )
    return test
