"""Config schema (a Hydra-style tree of groups as dataclasses), loaded with common.config.load_config.

Bundled groups live in `spectral_mae/configs/<group>/<name>.yaml` and are picked with `group=name` on the
command line (`model=mae_large`); `a.b=value` overrides any key. The defaults below are configs/config.yaml's
default selections (dataset=segmentation_dataset, model=mae_medium, loss=mae_spectral, optimizer=adamw,
scheduler=cosine, show_prediction=plot_rgb); a test checks they equal those group files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import load_config
from common.schedules import ScheduleConfig

PACKAGE = "spectral_mae"
DEFAULT_CONFIG = "config"  # configs/config.yaml
DEFAULT_GROUPS = {
    "dataset": "segmentation_dataset",
    "model": "mae_medium",
    "loss": "mae_spectral",
    "optimizer": "adamw",
    "scheduler": "cosine",
    "show_prediction": "plot_rgb",
}


@dataclass
class DatasetConfig:
    csv_file: str = "data/dataset.csv"  # CSV index: `path` (HDF5 cube) and `split` columns
    stats_file: str | None = None  # per-band mean/std JSON; None = band_stats.json next to the CSV
    train_split: str = "train"  # value of the `split` column used for training
    val_split: str = "val"  # ... for validation
    transform_type: Literal["none", "flips", "augment_basic"] = "augment_basic"  # training augmentation
    normalize: bool = True  # standardise each band with the stats file
    load_rgb: bool = True  # load (or make) RGB images for the visualisations
    check_values: bool = True  # read every cube up front and refuse NaN/inf (slower start on big data)


@dataclass
class ModelConfig:
    name: str = "mae_medium"  # variant name, for the logs and the MLflow experiment
    img_size: int = 500  # cube height and width, pixels
    patch_size: tuple[int, int] = (25, 5)  # [spatial pixels, spectral bands] per token
    in_chans: int = 30  # spectral bands
    embed_dim: int = 512  # encoder width
    encoder_depth: int = 16  # encoder blocks
    encoder_num_heads: int = 16  # encoder attention heads
    decoder_embed_dim: int = 256  # decoder width
    decoder_depth: int = 8  # decoder blocks
    decoder_num_heads: int = 8  # decoder attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    mask_ratio: float = 0.8  # share of tokens hidden from the encoder
    # decoder blocks: "divided" = attention across the spectral groups of each location, then across the
    # locations of each group (TimeSformer-style); "joint" = MAE's plain decoder, attention over all tokens
    decoder_attention: Literal["divided", "joint"] = "divided"


@dataclass
class LossConfig:
    name: str = "mae_spectral"  # the only loss: losses.MAESpectralLoss
    mse_weight: float = 1.0  # masked reconstruction MSE
    sam_weight: float = 0.1  # spectral angle (radians)
    variance_weight: float = 0.01  # |std(pred) - std(target)| per hidden token
    range_penalty_weight: float = 0.001  # squared excursion outside the target's range


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"  # torch.optim.AdamW
    lr: float = 1.5e-4  # peak learning rate
    weight_decay: float = 0.05  # decoupled weight decay (not applied to norms, biases, embeddings)
    betas: tuple[float, float] = (0.9, 0.95)  # Adam betas (MAE's)
    eps: float = 1e-8  # Adam epsilon


@dataclass
class ShowPredictionConfig:
    enabled: bool = True  # write the PNGs at every validation
    nb_to_plot: int = 4  # validation samples drawn per figure
    save_format: Literal["png", "jpg", "pdf", "svg"] = "png"  # image format
    dpi: int = 150  # resolution of the figures
    pixels_per_image: int = 3  # sample pixels in the spectral comparison plot


@dataclass
class HParamsConfig:
    epochs: int = 200  # training epochs
    batch_size: int = 6  # samples per micro-batch (per process in DDP: the global batch is this x processes)
    valid_interval: int = 5  # validate every N epochs (and after the last)
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step
    overfit_batches: int = 0  # >0: train and validate on the first N training batches only (sanity check)
    clip_grad_norm: float | None = None  # max gradient norm; None = no clipping


@dataclass
class GeneralConfig:
    experiment_name: str = "spectral_mae"  # MLflow experiment and run-folder prefix
    output_dir: str = "working_env"  # runs are written to <output_dir>/<experiment_name>_<timestamp>/
    run_dir: str | None = None  # exact run folder instead of a timestamped one
    overwrite: bool = False  # a new run may replace the run already in run_dir (refused otherwise)
    seed: int = 42  # seeds data order, augmentation, masks and init
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    device_ids: list[int] = field(default_factory=lambda: [0])  # GPUs for train_ddp (one process each)
    num_workers: int = 0  # DataLoader worker processes
    use_amp: bool = False  # mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA
    precision: str = ""  # 32 | bf16-mixed | 16-mixed | 16-true | bf16-true ("": from use_amp)
    compile: bool = False  # torch.compile the training forward (the first step compiles: ~75 s for mae_base on 2 CPU cores)
    debug: bool = False  # DEBUG logging, startup phase timings, anomaly detection
    log_every_n_steps: int = 10  # train metrics to the trackers every N optimizer steps
    checkpoint_every_n_steps: int = 0  # mid-epoch checkpoint (checkpoints/last_step.ckpt); 0 = off


@dataclass
class MlflowConfig:
    enabled: bool = True  # log to MLflow (file store in the run folder unless MLFLOW_TRACKING_URI is set)
    tracking_uri: str | None = None  # explicit tracking URI (the environment variable still wins)
    run_name: str | None = None  # MLflow run name; None = the run folder name
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags, e.g. mlflow.tags.version="v1.0"


@dataclass
class CheckpointConfig:
    monitor: str = "val/loss"  # metric deciding the best model
    mode: Literal["min", "max"] = "min"  # lower or higher is better
    save_top_k: int = 1  # best checkpoints kept


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False  # stop when `monitor` stops improving
    monitor: str = "val/loss"  # metric watched at each validation
    mode: Literal["min", "max"] = "min"
    patience: int = 10  # validations without improvement before stopping
    min_delta: float = 0.0  # smallest change that counts as an improvement


@dataclass
class SpectralMAEConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=0, interval="step")
    )
    show_prediction: ShowPredictionConfig = field(default_factory=ShowPredictionConfig)
    hparams: HParamsConfig = field(default_factory=HParamsConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Extra training-loop callbacks (common.callbacks.build_callbacks): a common callback's name
    # ("LearningRateMonitor") or {class_path: package.module.Class, init_args: {...}} for your own
    # common.callbacks.Callback subclass; the config lists code to import, so list only code you trust.
    callbacks: list[Any] = field(default_factory=list)


def upgrade_saved_config(data: dict) -> dict:
    """A run's saved config (its config.yaml or a checkpoint's "config" entry) as the current schema reads it.

    Runs saved before `model.decoder_attention` existed trained MAE's joint decoder; the default is now
    "divided", so a missing key must mean "joint" for their checkpoints to load and resume.
    """
    model = data.get("model")
    if isinstance(model, dict) and "decoder_attention" not in model:
        data = {**data, "model": {**model, "decoder_attention": "joint"}}
    return data


def load(
    source: str | Path | None = DEFAULT_CONFIG,
    *,
    cli: dict | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> SpectralMAEConfig:
    """The resolved config: schema < YAML `source` < `group=name` < typed CLI options < `a.b=value`."""
    return load_config(SpectralMAEConfig, source, package=PACKAGE, cli=cli, overrides=list(overrides))
