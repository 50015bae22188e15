"""Typed configuration schema for cabruca, loaded with `common.config.load_config`.

Sections: model / data / optimizer / scheduler / loss / postprocess / training / tracking, with `device`,
`seed` and the user's training-loop `callbacks` at the top level (see the bundled configs/*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEMANTIC_CLASSES = ["background", "cacao", "shade_tree", "other_tree", "bare_soil", "water"]
INSTANCE_CLASSES = ["cacao_tree", "shade_tree", "dead_or_other_tree"]
# Score thresholds evaluation reports side by side (python -m cabruca.evaluate --sweep).
SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)


@dataclass
class ModelConfig:
    backbone: str = "resnet34"  # any timm model that supports features_only=True
    pretrained: bool = False  # download timm weights (off: the machines here are offline)
    pretrained_checkpoint: str | None = None  # local weights: a cabruca checkpoint or a backbone state_dict
    pretrained_min_match: float = 0.5  # share of backbone parameter values the checkpoint must fill (0: any)
    pretrained_strict: bool = True  # refuse a checkpoint below pretrained_min_match (false: load what fits)
    num_semantic_classes: int = 6  # semantic head outputs (must match data.semantic_classes)
    num_instance_classes: int = 3  # centre-heatmap channels (must match data.instance_classes)
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # backbone stages fed to the FPN
    fpn_channels: int = 128  # channels of every FPN level
    head_channels: int = 64  # channels of the fused stride-4 feature the heads read


@dataclass
class AugmentConfig:
    enabled: bool = True  # augment training tiles (validation tiles never)
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rot90: bool = True  # rotate by a random multiple of 90 degrees
    brightness: float = 0.2  # colour jitter: brightness factor drawn from [1-b, 1+b]
    contrast: float = 0.2  # colour jitter: contrast factor drawn from [1-c, 1+c]
    saturation: float = 0.2  # colour jitter: saturation factor drawn from [1-s, 1+s]


@dataclass
class DataConfig:
    data_dir: str = "data/cabruca"  # folder holding <train_split>/ and <val_split>/
    labels: str = "masks"  # masks: masks/ + COCO annotations.json | boxes: box labels (cabruca.box_labels)
    box_annotations: str = ""  # labels=boxes: annotation file/folder in each split ("" = found by name)
    train_split: str = "train"  # sub-folder of training images
    val_split: str = "val"  # sub-folder of validation images
    batch_size: int = 4  # tiles per micro-batch
    tile_size: int = 512  # square tile side in pixels cut from each image
    tile_overlap: int = 64  # pixels shared by neighbouring tiles
    num_workers: int = 4  # DataLoader worker processes (0 = load in the main process)
    pin_memory: bool = False  # pin host memory (useful for CUDA only)
    semantic_classes: list[str] = field(default_factory=lambda: list(SEMANTIC_CLASSES))  # mask ids 0..n-1
    instance_classes: list[str] = field(default_factory=lambda: list(INSTANCE_CLASSES))  # COCO ids 1..n
    instance_semantic_ids: list[int] = field(
        default_factory=lambda: [1, 2, 3]
    )  # semantic id of each instance class
    centre_sigma: float = 3.0  # std (px) of the Gaussian marking each tree centre in the heatmap target
    density_sigma: float = 4.0  # std (px) of the per-tree kernel in the density target
    density_scale: float = 100.0  # density target multiplier (keeps tiny per-pixel values well-conditioned)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ParamGroupConfig:
    name: str = "heads"  # backbone | decoder | heads ("heads" also takes the decoder unless it has its own)
    lr: float = 1e-4  # learning rate of this group (the max LR under onecycle)
    weight_decay: float | None = None  # None: optimizer.weight_decay


@dataclass
class OptimizerConfig:
    type: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-4  # learning rate of every parameter not in a param group
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (adam, sgd) weight decay
    momentum: float = 0.9  # sgd only
    param_groups: list[ParamGroupConfig] = field(default_factory=list)  # per-part learning rates


@dataclass
class SchedulerConfig:
    type: str = "cosine"  # none | cosine | onecycle | plateau | warm_restarts
    T_max: int | None = None  # cosine: epochs to anneal over (None: training.num_epochs)
    eta_min: float = 0.0  # cosine / warm_restarts: lowest LR
    max_lr: float | None = None  # onecycle: peak LR (None: optimizer / param-group LRs)
    pct_start: float = 0.3  # onecycle: share of steps spent warming up
    div_factor: float = 25.0  # onecycle: initial LR = max_lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final LR = initial LR / final_div_factor
    factor: float = 0.5  # plateau: LR multiplier on a plateau
    patience: int = 10  # plateau: epochs without improvement before reducing
    T_0: int = 10  # warm_restarts: epochs of the first cycle
    T_mult: int = 1  # warm_restarts: cycle length multiplier
    warmup_steps: int = 0  # cosine: linear warm-up epochs


@dataclass
class LossConfig:
    semantic_weight: float = 1.0  # cross-entropy on the semantic logits
    semantic_class_weights: list[float] = field(default_factory=list)  # per-class CE weights ([] = equal)
    centre_weight: float = 200.0  # MSE on the centre heatmaps (Panoptic-DeepLab's weight)
    offset_weight: float = 0.01  # L1 on centre offsets (pixels) over tree pixels
    crown_weight: float = 1.0  # BCE on crown boundaries
    crown_pos_weight: float = 5.0  # boundary pixels are rare: up-weight positives
    density_weight: float = 1.0  # MSE on the (scaled) density map


@dataclass
class PostprocessConfig:
    centre_threshold: float = 0.3  # a heatmap peak below this is no tree
    nms_kernel: int = 7  # max-pool window for peak picking (px)
    top_k: int = 200  # most trees kept per tile
    min_area: int = 4  # instances smaller than this many pixels are dropped


@dataclass
class TrainingConfig:
    num_epochs: int = 100  # epochs to train
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_clip: float | None = 1.0  # max global grad norm (None: no clipping)
    mixed_precision: bool = False  # float16 autocast + GradScaler (CUDA only); same as precision=16-mixed
    precision: str = ""  # 32 | bf16-mixed | 16-mixed | 16-true | bf16-true ("": from mixed_precision)
    compile: bool = False  # wrap the model in torch.compile
    norm_eval: bool = False  # keep BatchNorm layers in eval mode while training (running statistics)
    sync_batchnorm: bool = True  # under torchrun on CUDA: SyncBatchNorm (statistics over the global batch)
    empty_cache_freq: int = 0  # empty the CUDA/MPS cache every N optimizer steps (0: never)
    monitor_metric: str = "val/mAP_50"  # metric for the best checkpoint, plateau LR and early stopping
    minimize_metric: bool = False  # lower monitor_metric is better
    early_stopping_patience: int = 20  # epochs without improvement before stopping (0: off)
    checkpoint_every_n_epochs: int = 10  # write checkpoint_epoch_N.pth every N epochs
    save_every_n_steps: int = 50  # mid-epoch checkpoint_latest.pth every N optimizer steps (0: off)
    log_every_n_steps: int = 10  # training losses to the trackers every N optimizer steps
    max_steps_per_epoch: int | None = None  # cap optimizer steps per epoch (quick runs)
    profile: bool = False  # torch profiler over profile_batches
    profile_batches: list[int] = field(
        default_factory=lambda: [10, 20]
    )  # [first, last] optimizer steps profiled (counted from 0 in this process)
    resume_mode: str = "auto"  # auto | continue | weights (see README: progressive training)


@dataclass
class TrackingConfig:
    tensorboard: bool = True  # tensorboard/ in the run folder
    mlflow: bool = False  # MLflow file store in mlruns/ (or MLFLOW_TRACKING_URI)
    wandb: bool = False  # Weights & Biases (offline without WANDB_API_KEY)
    project: str = "cabruca"  # MLflow experiment / W&B project
    tags: list[str] = field(default_factory=list)  # run tags


@dataclass
class CabrucaConfig:
    # run folder: <output_dir>/<experiment_name>_<YYYYMMDD_HHMMSS>, or <output_dir>/<experiment_name> when
    # typed as --experiment-name (timestamped all the same when that folder already holds another run)
    experiment_name: str = "cabruca"
    output_dir: str = "outputs"  # parent of run folders
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 42  # data order, augmentation and initialisation
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Extra training-loop callbacks: class paths or {class_path, init_args} (common.callbacks.build_callbacks)
    callbacks: list[Any] = field(default_factory=list)


def load(source=None, *, cli=None, overrides=()) -> CabrucaConfig:
    """Resolve the config (schema < YAML < CLI < key=value) and check cross-field consistency."""
    from common.config import load_config, require_at_least
    from common.errors import ConfigError

    cfg = load_config(CabrucaConfig, source, package="cabruca", cli=cli, overrides=overrides)
    d = cfg.data
    require_at_least(d, 1, "batch_size", "tile_size", prefix="data.")
    require_at_least(d, 0, "tile_overlap", "num_workers", prefix="data.")
    require_at_least(cfg.training, 1, "num_epochs", "gradient_accumulation_steps", prefix="training.")
    if d.tile_overlap >= d.tile_size:
        raise ConfigError(
            f"data.tile_overlap ({d.tile_overlap}) must be smaller than data.tile_size ({d.tile_size})."
        )
    if len(d.semantic_classes) != cfg.model.num_semantic_classes:
        raise ConfigError(
            f"data.semantic_classes names {len(d.semantic_classes)} classes but model.num_semantic_classes is "
            f"{cfg.model.num_semantic_classes}; make them agree."
        )
    if len(d.instance_classes) != cfg.model.num_instance_classes or len(d.instance_semantic_ids) != len(
        d.instance_classes
    ):
        raise ConfigError(
            "data.instance_classes, data.instance_semantic_ids and model.num_instance_classes must have the same "
            f"length (got {len(d.instance_classes)}, {len(d.instance_semantic_ids)}, {cfg.model.num_instance_classes})."
        )
    if (
        cfg.loss.semantic_class_weights
        and len(cfg.loss.semantic_class_weights) != cfg.model.num_semantic_classes
    ):
        raise ConfigError(
            f"loss.semantic_class_weights has {len(cfg.loss.semantic_class_weights)} values for "
            f"{cfg.model.num_semantic_classes} semantic classes; give one per class or leave it empty."
        )
    if d.tile_overlap >= d.tile_size or d.tile_size < 32:
        raise ConfigError(
            f"data.tile_size must be at least 32 and larger than data.tile_overlap (got {d.tile_size}, {d.tile_overlap})."
        )
    if d.labels not in {"masks", "boxes"}:
        raise ConfigError(f"data.labels {d.labels!r} is not one of masks, boxes.")
    if cfg.scheduler.type not in {
        "none",
        "constant",
        "cosine",
        "onecycle",
        "plateau",
        "warm_restarts",
        "cosine_restarts",
    }:
        raise ConfigError(
            f"scheduler.type {cfg.scheduler.type!r} is not one of none, cosine, onecycle, plateau, warm_restarts."
        )
    if cfg.optimizer.type not in {"adamw", "adam", "sgd"}:
        raise ConfigError(f"optimizer.type {cfg.optimizer.type!r} is not one of adamw, adam, sgd.")
    if not 0.0 <= cfg.model.pretrained_min_match <= 1.0:
        raise ConfigError(
            f"model.pretrained_min_match {cfg.model.pretrained_min_match} must be a share between 0 and 1 "
            "(0.5: the checkpoint must fill half of the backbone's parameter values)."
        )
    if cfg.training.resume_mode not in {"auto", "continue", "weights"}:
        raise ConfigError(
            f"training.resume_mode {cfg.training.resume_mode!r} is not one of auto, continue, weights."
        )
    return cfg


def resolve_source(source: str | None) -> str | None:
    """`--config configs/training_config.yaml` with no such file in the current folder means the config of
    that name bundled in cabruca/configs/."""
    from pathlib import Path

    if source is None:
        return "training_config"
    p = Path(source)
    if not p.exists() and p.parent.name == "configs":
        return p.name
    return source


def from_dict(d: dict) -> CabrucaConfig:
    """Rebuild a config saved in a checkpoint (config_to_dict output), with the same coercion and checks."""
    return load(d)
