"""Typed configuration schema for egnn_com, loaded with `common.config.load_config`.

Defaults: batch 16, hidden 128, 4 layers, AdamW lr 1e-3, weight decay 1e-5, gradient clipping at norm 1,
ReduceLROnPlateau on val/loss (patience 10, factor 0.5, min lr 1e-6), 4 background loading workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from common.config import load_config
from common.schedules import ScheduleConfig


def _plateau() -> ScheduleConfig:
    # ReduceLROnPlateau(monitor=val/loss, patience=10, factor=0.5, min_lr=1e-6), stepped once per epoch.
    return ScheduleConfig(name="plateau", factor=0.5, patience=10, min_lr=1e-6, mode="min", interval="epoch")


@dataclass
class DataConfig:
    data_dir: str = "data/processed_sh"  # folder of per-graph .pt (tensor dict) or .npz files
    val_fraction: float = 0.2  # share of graphs held out for validation (seeded split)
    batch_size: int = 16  # graphs per training batch
    num_workers: int = 4  # background loading when > 0 (0 = load in the main process, between steps)
    prefetch_factor: int = 4  # batches prefetched per worker (only when num_workers > 0)
    # thread: build packed batches in one background thread (num_workers x prefetch_factor ahead); process:
    # num_workers persistent DataLoader worker processes (always used for graphs that cannot be packed)
    worker_type: Literal["thread", "process"] = "thread"
    strict: bool = False  # True: any invalid file is an error; False: skip and report it
    # graph: seeded shuffle of graphs; molecule: whole molecules (ids from molecules.csv, see egnn_com.splits)
    # on one side, so conformers of one molecule never sit in both training and validation
    split_by: Literal["graph", "molecule"] = "graph"


@dataclass
class ModelConfig:
    name: Literal["gcn", "egnn"] = "gcn"  # gcn = GCN baseline; egnn = E(n)-equivariant network
    hidden_dim: int = 128  # width of node embeddings
    num_layers: int = 4  # message-passing layers (gcn: input + num_layers-2 hidden + output GCNConv)
    dropout: float = 0.1  # dropout in the gcn MLP head (egnn is deterministic: no dropout)
    pooling: Literal["mean", "add", "max"] = "mean"  # gcn global pooling (PyG global_*_pool)
    # atomic masses as a node feature (both models) and as the weights of the egnn's centre-of-mass readout;
    # checkpoints from before this option load with it off (see egnn_com.inference)
    use_mass: bool = True


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adam"] = "adamw"  # torch.optim optimizer (both with weight decay)
    lr: float = 1e-3  # base learning rate
    weight_decay: float = 1e-5  # L2 regularisation
    gradient_clip_val: float = 1.0  # max global gradient norm (0 = no clipping)
    # micro-batches (of data.batch_size graphs) per optimizer step: the step sees their mean loss
    accumulate_grad_batches: int = 1
    schedule: ScheduleConfig = field(default_factory=_plateau)  # common LR schedule section


@dataclass
class TrainConfig:
    max_epochs: int = 100  # epochs to train (a resumed run continues up to this)
    precision: str = "32"  # 32 | 16 | bf16 | 16-mixed | bf16-mixed
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int = 0  # torch CPU threads (0 = torch's default: one per core)
    seed: int = 42  # seeds the split, data order and weights
    output_dir: str | None = None  # run folder (default: runs/egnn_com_<timestamp>)
    checkpoint_dir: str | None = None  # checkpoint folder (default: <output_dir>/checkpoints)
    save_every_n_steps: int = 50  # mid-epoch checkpoint last-step.ckpt every N optimizer steps (0 = off)
    # name of the best checkpoint (top 1 by val/loss): {epoch} (epochs completed), {step}, {val_loss} and any
    # other metric with "/" as "_"; checkpoints/manifest.json names the best file whatever the template
    checkpoint_filename: str = "best-model-{epoch:02d}-{val_loss:.4e}.ckpt"
    best_weights_only: bool = False  # best checkpoint without optimizer state (last.ckpt stays complete)
    overwrite: bool = False  # a new run may replace the run already in output_dir (refused otherwise)
    fast_dev_run: int = 0  # N > 0: N train + N val batches, one epoch, no checkpoints or trackers
    use_compile: bool = False  # wrap the model in torch.compile
    cuda_warmup: bool = True  # run a few warm-up steps on CUDA before training (skipped in fast_dev_run)
    debug: bool = False  # startup phase timings, per-file load report, model and loader details


@dataclass
class LoggingConfig:
    use_wandb: bool = False  # also log to Weights & Biases (offline without WANDB_API_KEY)
    wandb_project: str = "equivariant-center-of-mass"  # W&B project name
    wandb_name: str | None = None  # W&B run name (auto when empty)
    wandb_tags: list[str] = field(default_factory=list)  # W&B tags
    tensorboard: bool = True  # TensorBoard event files in <output_dir>/tensorboard
    use_mlflow: bool = (
        False  # also log to MLflow (MLFLOW_TRACKING_URI, else mlflow.db where the command runs)
    )
    mlflow_experiment: str = "equivariant-center-of-mass"  # MLflow experiment name
    mlflow_log_model: bool = True  # log the best model as an MLflow model at the end (a few MB)
    log_every_n_steps: int = 1  # train/<metric>_step rows every N optimizer steps (0 = none)


@dataclass
class EgnnComConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # extra training-loop callbacks: class paths or {class_path: pkg.mod.Class, init_args: {...}}
    # (common.callbacks.build_callbacks; short names: EarlyStopping, LearningRateMonitor, ProgressBar)
    callbacks: list[Any] = field(default_factory=list)


def config_from_dict(saved: dict, *, cli: dict | None = None, overrides=()) -> EgnnComConfig:
    """Rebuild the config stored in a checkpoint (validated and coerced like any YAML), then apply `cli`/overrides."""
    model = saved.get("model") if isinstance(saved, dict) else None
    if isinstance(model, dict) and "use_mass" not in model:
        # written before model.use_mass existed: those models were built without the mass feature
        saved = {**saved, "model": {**model, "use_mass": False}}
    return load_config(EgnnComConfig, saved, package="egnn_com", cli=cli, overrides=overrides)
