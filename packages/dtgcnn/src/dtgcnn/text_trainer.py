"""One triplet-text training run on the shared loop: run folder, trackers, callbacks, checkpoints, resume,
and the end-of-run outputs (curves, t-SNE of the val embeddings). `python -m dtgcnn.train --mode triplets`
and the Python API's `Trainer` / `AdvancedTrainer` all go through `fit_triplets`.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.config import config_to_dict, save_config
from common.distributed import get_rank, get_world_size, is_main_process
from common.loop import FitResult, Loop, Plan
from common.resume import read_training_checkpoint
from common.runs import RunFolder, atomic_write_text
from common.seeding import seed_everything
from common.trackers import LogFinalModel, build_trackers
from dtgcnn import plotting, strategies
from dtgcnn.config import DTGCNNConfig
from dtgcnn.memory import ClearCacheEverySteps
from dtgcnn.mlflow_model import export_model
from dtgcnn.text_data import TextLoader, TripletDataset
from dtgcnn.text_model import TextDTGCNN
from dtgcnn.text_task import TripletTask
from dtgcnn.trainer import ClearMlxCache, TrainingPlots, setup_device

log = logging.getLogger("trainyard.dtgcnn")
COMMAND = "python -m dtgcnn.train --mode triplets"


def create_model(cfg: DTGCNNConfig, input_dim: int | None = None) -> TextDTGCNN:
    """The text DT-GCNN a config describes (input_dim 0 follows the config's encoder)."""
    from dataclasses import replace

    import mlx.core as mx

    if input_dim is None:
        if cfg.input_dim:
            input_dim = cfg.input_dim
        else:
            from dtgcnn.encoders import get_encoder

            input_dim = get_encoder(cfg.encoder).dim
    if cfg.multitask:
        from dtgcnn.multitask import MultiTaskDTGCNN

        model = MultiTaskDTGCNN(replace(cfg, input_dim=input_dim))
    else:
        model = TextDTGCNN(replace(cfg, input_dim=input_dim))
    mx.eval(model.parameters())
    return model


def load_text_model(path: str | Path) -> tuple[TextDTGCNN, DTGCNNConfig]:
    """(model in eval mode, its config) from any triplet-mode checkpoint; `model.encode(texts)` is ready."""
    from common.checkpoint import load_checkpoint
    from common.config import load_config
    from common.errors import CheckpointError
    from common.mlx_support import load_model_state

    state = load_checkpoint(path)
    if state.get("mode") != "triplets" or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a triplet-mode dtgcnn checkpoint (no mode 'triplets').")
    cfg = load_config(DTGCNNConfig, state["config"], package="dtgcnn")
    model = create_model(cfg, int(state["input_dim"]))
    load_model_state(model, state["model"])
    model.encoder_name = cfg.encoder
    model.eval()
    return model, cfg


def loaders_for(cfg: DTGCNNConfig, data: str | Path) -> tuple[TextLoader, TextLoader]:
    dataset = TripletDataset(
        data, cfg.encoder, cache_dir=cfg.encoder_cache_dir or None, samples_per_label=cfg.samples_per_label
    )
    # under mlx.launch each process trains on its slice of every global batch (batch_size x processes)
    return dataset.create_dataloaders(
        cfg.batch_size, cfg.train_split, cfg.seed, rank=get_rank(), world_size=get_world_size()
    )


class TextEpochSummary(Callback):
    """One log line per epoch and the collapse warning."""

    def __init__(self, num_epochs: int, collapse_warn: float) -> None:
        self.num_epochs, self.collapse_warn = num_epochs, collapse_warn

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        get = lambda name: metrics.get(name, math.nan)  # noqa: E731
        log.info(
            "epoch %d/%d step %d: train loss %.4f triplet acc %.3f | val loss %.4f MAP@R %.3f P@1 %.3f "
            "(encoder alone: MAP@R %.3f P@1 %.3f) | lr %.2e",
            loop.pos.epoch + 1,
            self.num_epochs,
            loop.pos.step,
            get("train/loss"),
            get("train/triplet_accuracy"),
            get("val/loss"),
            get("val/map_at_r"),
            get("val/precision_at_1"),
            get("val/encoder_map_at_r"),
            get("val/encoder_precision_at_1"),
            loop.lrs_used[0],
        )
        if metrics.get("train/embedding_spread", math.inf) < self.collapse_warn:
            log.warning("embedding collapse: spread below %.4f; lower learning_rate", self.collapse_warn)


def warn_if_slow_precision(cfg: DTGCNNConfig) -> None:
    """Half precision on the CPU saves memory but not time: MLX's CPU half-precision matmul does not go
    through BLAS (a 1024 x 1024 bfloat16 matmul took ~40x the float32 one on MKL here)."""
    import mlx.core as mx

    if cfg.mixed_precision and mx.default_device() == mx.cpu:
        log.warning(
            "mixed_precision on the CPU: %s matmuls run without BLAS and are much slower than float32 "
            "(they save memory, not time); set mixed_precision=false for speed on the CPU",
            cfg.mixed_precision_dtype,
        )


def bind_to_run(callbacks: Sequence[Callback], run: RunFolder, resume_step: int | None) -> None:
    """Give callbacks made without a folder (e.g. `ModelCheckpoint(save_top_k=3)`,
    `TensorboardLogger()`) the run folder."""
    for cb in callbacks:
        bind = getattr(cb, "bind_run", None)
        if bind is not None:
            bind(run, resume_step)


def fit_triplets(
    cfg: DTGCNNConfig,
    output_dir: str | Path,
    *,
    data: str | Path | None = None,
    model: TextDTGCNN | None = None,
    train_loader: TextLoader | None = None,
    val_loader: TextLoader | None = None,
    resume: str | Path | None = None,
    resume_state: dict | None = None,
    callbacks: Sequence[Callback] = (),
    max_steps: int | None = None,
    run: RunFolder | None = None,
) -> FitResult:
    """Train the text DT-GCNN in `output_dir` on `data` (a triplet / sentence file) or on given loaders.

    `run`: the run folder when the caller already claimed it (the CLI does, before its log file exists)."""
    if cfg.ensemble_size > 1:
        from common.errors import ConfigError
        from dtgcnn.ensemble import fit_ensemble

        if model is not None or train_loader is not None or max_steps is not None:
            raise ConfigError(
                f"ensemble_size={cfg.ensemble_size} trains its own members from the data file, each a full "
                "run: give data (no model, loaders or step limit), or call dtgcnn.fit_ensemble."
            )
        return fit_ensemble(
            cfg, output_dir, data=data, resume=resume is not None, callbacks=callbacks, run=run
        )
    started = time.perf_counter()
    run = run or RunFolder(Path(output_dir).resolve(), resume=resume is not None)
    log.info(dtgcnn.BLAS.describe())
    log.info("device: %s", setup_device(cfg))
    warn_if_slow_precision(cfg)
    if resume is not None and resume_state is None:
        resume_state = read_training_checkpoint(resume)
    if train_loader is None:
        data = data or (resume_state or {}).get("data_path")
        train_loader, val_loader = loaders_for(cfg, data)
    cfg = strategies.resolve(cfg, train_loader)
    seed_everything(cfg.seed)
    if model is None:
        model = create_model(cfg, train_loader.dataset.input_dim)
    task, strategy_callbacks = strategies.build_task(
        cfg, model, train_loader, val_loader, debug_dir=run.path("debug")
    )
    epochs = strategies.run_epochs(cfg)
    accumulate = max(1, cfg.gradient_accumulation_steps)
    schedule, interval = strategies.build_run_schedule(cfg, math.ceil(task.num_batches(0) / accumulate))
    plan = Plan(
        max_epochs=epochs,
        max_steps=max_steps,
        accumulate=accumulate,
        log_every_n_steps=cfg.log_interval,
        schedule_interval=interval,
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
    if is_main_process():
        save_config(cfg, run.path("config.yaml"))
    user = [*build_callbacks(cfg.callbacks), *callbacks]
    bind_to_run(user, run, resume_step)
    defaults: list[Callback] = [
        TextEpochSummary(epochs, cfg.collapse_warn),
        TrackerLogger(trackers),
        # the best weights (weights-only) as the run's model, where a tracker keeps models (MLflow)
        LogFinalModel(
            trackers,
            lambda loop, result: export_model(result.best_checkpoint or result.checkpoint, run.path("model")),
        ),
    ]
    if not any(isinstance(cb, LearningRateMonitor) for cb in user):
        defaults.append(LearningRateMonitor())
    if not any(isinstance(cb, EarlyStopping) for cb in user):
        defaults.append(
            EarlyStopping("val/loss", patience=cfg.early_stopping_patience, min_delta=cfg.min_delta)
        )
    defaults += [
        ProgressBar(),
        TrainingPlots(run, cfg.plot_every, epochs),
        ClearMlxCache(cfg.clear_cache_every),
        ClearCacheEverySteps(cfg.clear_cache_every_steps),
        *strategy_callbacks,
    ]
    savers = [cb for cb in user if isinstance(cb, ModelCheckpoint)]
    if not savers:
        savers = [
            ModelCheckpoint(
                run.checkpoints,
                filename="best_model.npz",
                monitor="val/loss",
                save_last="last.npz",
                every_n_epochs=cfg.checkpoint_every or None,
                periodic="checkpoint_epoch_{epoch:04d}.npz",
                every_n_steps=cfg.checkpoint_every_steps,
                step_file="last_step.npz",
            )
        ]
        user.append(savers[0])
    data_path = train_loader.dataset.path.resolve()
    loop = Loop(
        task,
        plan,
        callbacks=[*defaults, *user],
        schedule=schedule,
        resume=resume_state,
        resume_path=resume,
        command=f"{COMMAND} --data {shlex.quote(str(data_path))}",
    )
    log.info(
        "data: %s (%s); %d train / %d val rows, %d batches per epoch; encoder %s (%d wide); bank %d texts",
        data_path,
        train_loader.dataset.kind,
        len(train_loader.items),
        len(val_loader.items) if val_loader is not None else 0,
        task.num_batches(0),
        train_loader.dataset.encoder_spec,
        train_loader.dataset.input_dim,
        model.bank_size,
    )
    if get_world_size() > 1:
        log.info(
            "data parallel: %d processes (mx.distributed); global batch %d = %d per process x %d processes "
            "x %d accumulation steps; the learning rate is the config's (%g), not rescaled",
            get_world_size(),
            cfg.batch_size * get_world_size() * accumulate,
            cfg.batch_size,
            get_world_size(),
            accumulate,
            cfg.learning_rate,
        )
    try:
        result = loop.fit()
        result.run_dir = run.root
        if not result.interrupted and is_main_process() and val_loader is not None and task.val_embeddings:
            final_outputs(task, run, cfg, savers[0].best_path, trackers, result)
    finally:
        trackers.close()
    log.info(
        "%s after %.1f s: %d epochs, %d optimizer steps; outputs in %s",
        "stopped" if result.interrupted or result.stopped_early else "finished",
        time.perf_counter() - started,
        result.epochs_done,
        result.global_step,
        run.root,
    )
    return result


def final_outputs(task: TripletTask, run: RunFolder, cfg: DTGCNNConfig, best, trackers, result) -> None:
    """The training curves, the t-SNE of the val embeddings (legend: the label names) and
    retrieval_metrics.json (last weights)."""
    from dtgcnn.text_plots import embeddings_tsne

    if cfg.plot_every:
        plotting.training_curves(run.path("metrics_history.json"), run.plots, result.epochs_done)
    if cfg.tsne_plot:
        emb, labels = task.val_embeddings
        path = run.plots / "embeddings_tsne.png"
        embeddings_tsne(emb, labels, path, cfg.seed, label_names=val_label_names(task))
    metrics = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    atomic_write_text(run.path("retrieval_metrics.json"), json.dumps(metrics, indent=2))


def val_label_names(task: TripletTask) -> list[str] | None:
    """The names of the val embeddings' integer labels: the file's label names for labelled sentences; None
    for bare triplets, whose classes are only groups of linked texts (the legend shows their numbers)."""
    dataset = task.val_loader.dataset
    return list(dataset.label_names) if dataset.kind == "sentences" else None
