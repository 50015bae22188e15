"""The dtgcnn config schema: flat keys (`num_vertices`, `scheduler_type`, ...), as in the bundled YAML configs.

Loaded with `common.config.load_config(TrainConfig, source, package="dtgcnn", cli=..., overrides=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    precision: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype; weights stay float32
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
    seed: int = 42
    grad_norm_warn: float = 100.0  # warn about exploding gradients above this (pre-clip) norm
    collapse_warn: float = 0.01  # warn about embedding collapse below this embedding spread
    # training-loop callbacks added to the built-in ones (trackers, LR monitor, early stopping, progress,
    # checkpoints, plots): {class_path: package.module.Class, init_args: {...}} of a common.callbacks.Callback
    callbacks: list[Any] = field(default_factory=list)


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
