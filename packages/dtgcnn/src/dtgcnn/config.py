"""The dtgcnn config schema: flat keys (`num_vertices`, `scheduler_type`, ...), as in the bundled YAML configs.

Loaded with `common.config.load_config(TrainConfig, source, package="dtgcnn", cli=..., overrides=...)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import require_at_least
from common.errors import ConfigError
from common.precision import canonical_precision
from common.schedules import ScheduleConfig


@dataclass
class TrainConfig:
    # --- data ---
    num_vertices: int = 1723  # vertices per mesh; every mesh is checked against it
    num_classes: int = 0  # identities; 0 = read from the training metadata
    use_normals: bool = True  # input features: xyz (3) or xyz + normals (6)
    center_meshes: bool = True  # subtract each mesh's centroid (pose translation is not identity)
    cache_data: bool = False  # keep every mesh in memory after its first read
    samples_per_label: int = 4  # K of the P x K sampler; P = batch_size // K labels per batch
    prefetch_batches: int = 2  # batches prepared ahead in a background thread
    # --- augmentation (training split only) ---
    augment: bool = True
    rotation_range: float = 15.0  # degrees, about a random axis
    scale_range: tuple[float, float] = (0.9, 1.1)  # uniform isotropic scale
    noise_std: float = 0.01  # Gaussian jitter on coordinates
    flip_probability: float = 0.0  # mirror x -> -x (a reflection changes chirality: off for identity)
    # --- model ---
    k: int = 20  # neighbours in each layer's k-NN graph
    edge_conv_dims: list[int] = field(default_factory=lambda: [64, 64, 128, 256])  # EdgeConv widths
    fusion_dim: int = 1024  # width of the per-point fusion layer over the concatenated multi-scale features
    hidden_dim: int = 512  # MLP between pooled features and the embedding
    embedding_dim: int = 256  # metric-learning embedding (L2-normalised)
    dropout: float = 0.5
    # --- loss ---
    classification_weight: float = 1.0
    triplet_weight: float = 0.5
    triplet_margin: float = 0.2
    mining_strategy: Literal["batch_hard", "batch_all", "semi_hard"] = "batch_hard"
    # --- optimisation ---
    batch_size: int = 32
    learning_rate: float = 0.001
    weight_decay: float = 0.0001
    num_epochs: int = 100
    gradient_clip_val: float = 1.0  # max global gradient norm; 0 disables clipping
    gradient_accumulation_steps: int = 1
    scheduler_type: Literal["cosine", "step", "exponential", "constant"] = "cosine"
    warmup_epochs: int = 5
    min_lr: float = 0.000001
    step_size: int = 30  # epochs between decays (step)
    gamma: float = 0.1  # decay factor (step, exponential)
    patience: int = 10  # early stopping: validations without a val/loss improvement of min_delta
    min_delta: float = 0.0001
    # --- hardware ---
    device: str = "auto"  # auto | cpu | gpu
    jit_compile: bool = True  # mx.compile the loss-and-gradient step
    # 32 | bf16-mixed | 16-mixed (as Lightning; also float32 / bfloat16 / float16): the compute dtype, with
    # the weights kept in float32
    precision: str = "32"
    memory_limit_gb: float = 0.0  # mx.set_memory_limit; 0 = MLX default
    clear_cache_every: int = 0  # epochs between mx.clear_cache(); 0 = never
    # --- logging, checkpoints ---
    log_interval: int = 50  # optimizer steps between train/<name>_step and lr rows (0 = none)
    plot_every: int = 10  # epochs between plots/training_curves_epoch_NNNN.png
    checkpoint_every: int = 50  # epochs between checkpoints/checkpoint_epoch_NNNN.npz
    checkpoint_every_steps: int = (
        0  # checkpoints/last_step.npz every N optimizer steps (SIGKILL safety); 0 = off
    )
    tensorboard: bool = False
    # MLflow (MLFLOW_TRACKING_URI, else mlflow.db where the command runs); the best weights are logged as the
    # run's model at the end (dtgcnn.load_mlflow_model reads them back)
    mlflow: bool = False
    seed: int = 42
    grad_norm_warn: float = 100.0  # warn about exploding gradients above this (pre-clip) norm
    collapse_warn: float = 0.01  # warn about embedding collapse below this embedding spread
    # training-loop callbacks added to the built-in ones (trackers, LR monitor, early stopping, progress,
    # checkpoints, plots): {class_path: package.module.Class, init_args: {...}} of a common.callbacks.Callback
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_at_least(
            self,
            1,
            "num_vertices",
            "k",
            "batch_size",
            "samples_per_label",
            "num_epochs",
            "gradient_accumulation_steps",
            "embedding_dim",
        )
        require_at_least(self, 0, "warmup_epochs", "dropout", "min_lr")
        if self.k > self.num_vertices:  # each point's k nearest come from its own mesh (itself included)
            raise ConfigError(
                f"k={self.k} neighbours per point, but a mesh has num_vertices={self.num_vertices} points; "
                f"set k to at most {self.num_vertices}."
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}.")
        self.precision = canonical_precision(self.precision)
        if self.precision.endswith("-true"):
            raise ConfigError(
                f"precision {self.precision!r}: dtgcnn keeps its weights in float32 and computes in the "
                "precision asked for; use bf16-mixed or 16-mixed."
            )


def schedule_config(cfg: TrainConfig, steps_per_epoch: int) -> tuple[ScheduleConfig, int]:
    """The common ScheduleConfig for the flat scheduler keys, and its total length in its own units.

    cosine and constant advance per optimizer step (warmup_epochs becomes steps, so the LR moves smoothly);
    step and exponential decay per epoch, as their step_size / gamma are counted in epochs.
    """
    name = {"cosine": "cosine", "step": "step", "exponential": "exponential", "constant": "constant"}[
        cfg.scheduler_type
    ]
    if name in ("step", "exponential"):
        return ScheduleConfig(
            name=name, step_size=cfg.step_size, gamma=cfg.gamma, interval="epoch"
        ), cfg.num_epochs
    total = max(2, cfg.num_epochs * steps_per_epoch)
    # A run shorter than its warm-up (a quick test of a long config) warms up for all but its last step.
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    return ScheduleConfig(name=name, warmup_steps=warmup, min_lr=cfg.min_lr, interval="step"), total


def config_source(source: str | None, default: str = "default_config") -> str:
    """`--config configs/default_config.yaml` names a bundled config by its file: when no such file exists
    here but its name is a bundled config, use the bundled one."""
    from common.config import bundled_configs

    if not source:
        return default
    path = Path(source)
    if not path.exists() and path.suffix in (".yaml", ".yml") and path.stem in bundled_configs("dtgcnn"):
        return path.stem
    return source


@dataclass
class DTGCNNConfig:
    """Triplet-text mode (`--mode triplets`): every model, graph, loss and training option users set,
    plus the run's own keys (marked (run))."""

    # --- model architecture ---
    input_dim: int = 0  # encoder width (0 = follow the encoder: 512 hashing, 384 MiniLM)
    hidden_dim: int = 256  # width of every GCN layer when hidden_dims is empty
    hidden_dims: list[int] = field(default_factory=list)  # per-GCN-layer widths (sets num_gcn_layers' widths)
    output_dim: int = 128  # embedding width (L2-normalised)
    num_gcn_layers: int = 3
    gcn_activation: Literal["relu", "gelu", "leaky_relu", "elu", "silu", "tanh"] = "relu"
    use_batch_norm: bool = True
    dropout_rate: float = 0.1
    # --- training parameters ---
    batch_size: int = 512  # triplets per batch (bare triplets) or sentences per batch (labelled)
    learning_rate: float = 0.0001
    weight_decay: float = 0.00001
    num_epochs: int = 50
    warmup_epochs: int = 5
    # --- loss ---
    triplet_margin: float = 0.2
    mining_strategy: Literal["none", "batch_hard", "semi_hard", "batch_all"] = "batch_hard"
    loss_reduction: Literal["mean", "sum"] = "mean"
    focal_gamma: float = 0.0  # focal triplet loss: each triplet's loss l times (1 - exp(-l))**gamma; 0 = off
    target_margin: float | None = None  # adaptive margin: triplet_margin at epoch 0 to this at the end
    # --- optimisation ---
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # adamw: decoupled weight_decay
    scheduler: Literal["cosine", "step", "exponential", "constant", "onecycle"] = "cosine"
    pct_start: float = 0.3  # onecycle: share of the run rising to learning_rate (its own warm-up)
    gradient_clip_val: float = 1.0  # max global gradient norm; 0 disables clipping
    gradient_accumulation_steps: int = 1
    weight_init: Literal["default", "xavier_uniform", "xavier_normal"] = "default"  # Linear weights; biases 0
    # --- graph construction ---
    graph_k_neighbors: int = 10  # neighbours of each node in the reference bank
    graph_similarity_threshold: float = 0.0  # edges below this cosine similarity are dropped
    dynamic_graph_update_freq: int = 10  # epochs between graph-space refreshes (0 = the encoder's space)
    # --- hardware ---
    mixed_precision: bool = False  # half-precision compute (mixed_precision_dtype), float32 master weights
    mixed_precision_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    gradient_checkpointing: bool = False  # recompute each GCN layer in the backward pass, not store it
    auto_batch_halving: bool = True  # out of memory: split every batch in two (global batch unchanged)
    num_workers: int = (
        0  # accepted for configs written for loaders: batches are row gathers, no workers needed
    )
    prefetch_factor: int = 2  # batches prepared ahead in a background thread
    persistent_workers: bool = False  # accepted for configs written for loaders (no worker processes)
    # --- templates ---
    early_stopping_patience: int = 10  # validations without a val/loss improvement of min_delta
    # --- (run) data and encoder ---
    encoder: str = "hashing"  # hashing | hashing:DIM | minilm | precomputed:PATH
    encoder_cache_dir: str = ""  # vector cache (empty: $TRAINYARD_CACHE or ~/.cache/trainyard)
    train_split: float = 0.9  # share of the file for training; the rest validates
    samples_per_label: int = 4  # labelled sentences: K per label in a P x K batch
    graph_bank_size: int = 256  # training texts in the reference bank every node's neighbours come from
    # --- (run) schedule, stopping, hardware ---
    min_lr: float = 0.000001
    step_size: int = 30  # epochs between decays (step)
    gamma: float = 0.1  # decay factor (step, exponential)
    min_delta: float = 0.0001
    device: str = "auto"  # auto | cpu | gpu
    jit_compile: bool = False  # mx.compile the step (batches of bare triplets vary in size: recompiles)
    memory_limit_gb: float = 0.0
    clear_cache_every: int = 0  # epochs between mx.clear_cache() (0 = never)
    clear_cache_every_steps: int = 0  # optimizer steps between mx.clear_cache() (0 = never)
    # --- (run) logging, checkpoints ---
    log_interval: int = 50  # optimizer steps between train/<name>_step rows (0 = none)
    plot_every: int = 10  # epochs between training-curve plots (0 = none)
    tsne_plot: bool = True  # plots/embeddings_tsne.png of the val embeddings after training
    checkpoint_every: int = 0  # epochs between checkpoint_epoch_NNNN.npz (0 = off)
    checkpoint_every_steps: int = 0  # last_step.npz every N optimizer steps (0 = off)
    tensorboard: bool = False
    # MLflow (MLFLOW_TRACKING_URI, else mlflow.db where the command runs); the best weights are logged as the
    # run's model at the end (dtgcnn.load_mlflow_model reads them back)
    mlflow: bool = False
    seed: int = 42
    grad_norm_warn: float = 100.0
    collapse_warn: float = 0.01
    callbacks: list[Any] = field(default_factory=list)
    # --- (run) training strategies (dtgcnn.strategies) ---
    # progressive: stage 1 trains the input projection (+ output projection), stage 2 the GCN layers with the
    # input projection frozen, stage 3 everything for num_epochs at learning_rate
    progressive: bool = False
    progressive_epochs: list[int] = field(default_factory=lambda: [5, 10])  # epochs of stages 1 and 2
    progressive_lrs: list[float] = field(default_factory=lambda: [0.001, 0.0005])  # LRs of stages 1 and 2
    curriculum: bool = False  # train on the easiest triplets first (difficulty d(a,n) - d(a,p))
    curriculum_stages: int = 4  # difficulty stages; the last one is the whole training set
    curriculum_difficulty: Literal["encoder", "model"] = "encoder"  # space the difficulty is measured in
    curriculum_advance: Literal["schedule", "plateau"] = "schedule"  # how the next stage starts
    curriculum_epochs_per_stage: int = 1  # schedule: epochs per stage
    curriculum_patience: int = 1  # plateau: validations without a val/loss improvement before advancing
    curriculum_pacing: Literal["cumulative", "bands"] = "cumulative"  # easiest share so far, or one band
    multitask: bool = False  # triplet + classification + regression heads (labelled sentences)
    num_classes: int = 0  # classification head width (0 = the data's labels)
    multitask_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.1])  # triplet, class, regr.
    ensemble_size: int = 1  # > 1: train that many members (seeds seed, seed+1, ...) and average them

    def __post_init__(self) -> None:
        # Users build this config directly in Python, where no schema coercion checks the choices.
        from typing import get_args, get_type_hints

        from common.errors import ConfigError

        for name, hint in get_type_hints(DTGCNNConfig).items():
            choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else ()
            if choices and getattr(self, name) not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}.")
        if self.hidden_dims and len(self.hidden_dims) != self.num_gcn_layers:
            raise ConfigError(
                f"hidden_dims {list(self.hidden_dims)} gives {len(self.hidden_dims)} GCN layers but "
                f"num_gcn_layers={self.num_gcn_layers}; give one width per layer."
            )
        if self.num_gcn_layers < 1 or self.graph_k_neighbors < 1 or self.output_dim < 1:
            raise ConfigError("num_gcn_layers, graph_k_neighbors and output_dim must be >= 1.")
        require_at_least(self, 0, "focal_gamma", "clear_cache_every", "clear_cache_every_steps")
        if self.focal_gamma and self.mining_strategy == "batch_all":
            raise ConfigError(
                "focal_gamma needs each triplet's own loss, and batch_all sums its triplets in closed form; "
                "use mining_strategy batch_hard or semi_hard with focal_gamma, or set focal_gamma=0."
            )
        if not 0.0 < self.pct_start < 1.0:
            raise ConfigError(
                f"pct_start must be between 0 and 1 (a share of the run), got {self.pct_start}."
            )

    @property
    def precision(self) -> str:
        """The compute dtype the shared step uses (weights stay float32)."""
        return self.mixed_precision_dtype if self.mixed_precision else "float32"

    @property
    def widths(self) -> list[int]:
        """Widths of the GCN layers."""
        return list(self.hidden_dims) if self.hidden_dims else [self.hidden_dim] * self.num_gcn_layers

    def schedule_config(self, steps_per_epoch: int) -> tuple[ScheduleConfig, int]:
        """The common schedule for `scheduler`, as the mesh mode builds it; onecycle (per optimizer step)
        rises to `learning_rate` over `pct_start` of the run, which is its warm-up: warmup_epochs does not
        apply to it."""
        if self.scheduler == "onecycle":
            if self.warmup_epochs:
                logging.getLogger("trainyard.dtgcnn").warning(
                    "scheduler onecycle warms up over pct_start=%s of the run; warmup_epochs=%d does not apply",
                    self.pct_start,
                    self.warmup_epochs,
                )
            total = max(2, self.num_epochs * steps_per_epoch)
            return ScheduleConfig(name="onecycle", pct_start=self.pct_start, interval="step"), total
        return schedule_config(
            TrainConfig(
                scheduler_type=self.scheduler,
                num_epochs=self.num_epochs,
                warmup_epochs=self.warmup_epochs,
                min_lr=self.min_lr,
                step_size=self.step_size,
                gamma=self.gamma,
            ),
            steps_per_epoch,
        )


# the triplet mode's configuration templates: `--config small` or a trailing `config=small`
TRIPLET_TEMPLATES = {"small": "triplet_small", "medium": "triplet_medium", "large": "triplet_large"}


def triplet_config_source(source: str | None, overrides: tuple[str, ...] | list[str]):
    """(config source, the other overrides) for the triplet mode: a trailing `config=NAME` acts as
    `--config NAME` (both given is an error), and the template names small / medium / large stand for the
    bundled triplet_small / triplet_medium / triplet_large."""
    rest, chosen = [], []
    for item in overrides:
        key, sep, value = item.lstrip("+").partition("=")
        if sep and key.strip() == "config":
            chosen.append(value.strip())
        else:
            rest.append(item)
    if len(chosen) > 1 or (chosen and source):
        raise ConfigError(
            "the config is given twice (--config and config=, or config= twice); give one, e.g. config=small."
        )
    source = chosen[0] if chosen else source
    return TRIPLET_TEMPLATES.get(source, source), rest
