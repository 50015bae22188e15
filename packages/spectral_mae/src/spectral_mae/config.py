"""Config schema (a Hydra-style tree of groups as dataclasses), loaded with common.config.load_config.

Bundled groups live in `spectral_mae/configs/<group>/<name>.yaml` and are picked with `group=name` on the
command line (`model=mae_large`); `a.b=value` overrides any key. The defaults below are configs/config.yaml's
default selections (DEFAULT_GROUPS); a test checks they equal those group files.

Sections that build one object carry the original project's `_target_` line (`model._target_:
models.spectral_gpt.mae_spectral.MAESpectral`), checked against `spectral_mae.targets` as the config is read:
a name outside that registry is an error, and nothing named by a config file is ever imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import load_config
from common.errors import ConfigError
from common.schedules import ScheduleConfig
from spectral_mae.targets import choice_of, lookup_target

PACKAGE = "spectral_mae"
DEFAULT_CONFIG = "config"  # configs/config.yaml
DEFAULT_GROUPS = {
    "dataset": "segmentation_dataset",
    "model": "mae_medium",
    "loss": "mae_spectral",
    "optimizer": "adamw",
    "scheduler": "cosine",
    "show_prediction": "plot_rgb",
    "augmentation": "augment_basic",
    "metric": "reconstruction",
    "accuracy": "none",
}
# Validation reconstruction metrics (spectral_mae.metrics computes them; named here so that reading a config
# does not import torch).
METRIC_NAMES = ("recon_mse", "sam_deg", "psnr", "ssim")


def _check_target(section: str, target: str) -> None:
    lookup_target(section, target)  # a dictionary look-up: refuses unknown names before anything is imported


@dataclass
class DatasetConfig:
    _target_: str = "dataset.segmentation_dataset.SegmentationDataset"  # spectral_mae.targets name
    csv_file: str = "data/dataset.csv"  # CSV index: `path` (HDF5 cube) and `split` columns
    stats_file: str | None = None  # per-band mean/std JSON; None = band_stats.json next to the CSV
    train_split: str = "train"  # value of the `split` column used for training
    val_split: str = "val"  # ... for validation
    # the original project's spelling of `augmentation=`: when set it must name the augmentation chosen
    transform_type: Literal["none", "flips", "augment_basic"] | None = None
    normalize: bool = True  # standardise each band with the stats file
    load_rgb: bool = True  # load (or make) RGB images for the visualisations
    check_values: bool = True  # read every cube up front and refuse NaN/inf (slower start on big data)

    def __post_init__(self):
        _check_target("dataset", self._target_)


@dataclass
class AugmentationConfig:
    name: Literal["none", "flips", "augment_basic"] = (
        "augment_basic"  # training-time transforms (data.TRANSFORMS)
    )


@dataclass
class ModelConfig:
    _target_: str = "models.spectral_gpt.mae_spectral.MAESpectral"  # spectral_mae.targets name
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

    def __post_init__(self):
        _check_target("model", self._target_)


@dataclass
class LossConfig:
    _target_: str = "losses.mae_spectral.MAESpectralLoss"  # spectral_mae.targets name
    name: str = "mae_spectral"  # label of the weighting (loss=mae_spectral, loss=mse)
    mse_weight: float = 1.0  # masked reconstruction MSE
    sam_weight: float = 0.1  # spectral angle (radians)
    variance_weight: float = 0.01  # |std(pred) - std(target)| per hidden token
    range_penalty_weight: float = 0.001  # squared excursion outside the target's range

    def __post_init__(self):
        _check_target("loss", self._target_)


@dataclass
class OptimizerConfig:
    # Either names the optimizer (`kind`); both null mean adamw. Neither is filled in from the other: the
    # common loader builds a section on top of its defaults, so a filled-in name would contradict a config
    # file that names only `_target_: torch.optim.SGD`.
    _target_: str | None = (
        None  # spectral_mae.targets name: torch.optim.AdamW | torch.optim.Adam | torch.optim.SGD
    )
    name: Literal["adamw", "adam", "sgd"] | None = None
    lr: float = 1.5e-4  # peak learning rate
    weight_decay: float = 0.05  # weight decay (decoupled for adamw; not applied to norms, biases, embeddings)
    betas: tuple[float, float] = (0.9, 0.95)  # Adam betas (MAE's); adamw and adam
    eps: float = 1e-8  # Adam epsilon; adamw and adam
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd

    def __post_init__(self):
        chosen = None if self._target_ is None else choice_of("optimizer", self._target_)
        if chosen is not None and self.name is not None and chosen != self.name:
            raise ConfigError(
                f"optimizer._target_ {self._target_!r} is the {chosen} optimizer but optimizer.name is "
                f"{self.name!r}; choose one with optimizer={self.name} (or optimizer={chosen})."
            )

    @property
    def kind(self) -> str:
        """The optimizer to build: adamw, adam or sgd."""
        if self._target_ is not None:
            return choice_of("optimizer", self._target_)
        return self.name or "adamw"


@dataclass
class MetricConfig:
    names: list[str] = field(default_factory=lambda: list(METRIC_NAMES))  # validation reconstruction metrics

    def __post_init__(self):
        unknown = [name for name in self.names if name not in METRIC_NAMES]
        if unknown:
            raise ConfigError(f"metric.names: unknown {unknown}; choose among {', '.join(METRIC_NAMES)}.")


@dataclass
class AccuracyConfig:
    # spectral_angle: `val/accuracy` = share of pixels reconstructed within `threshold_deg` of their spectrum
    name: Literal["none", "spectral_angle"] = "none"
    threshold_deg: float = 5.0  # spectral angle (degrees) a pixel's reconstruction may be off and still count


@dataclass
class ShowPredictionConfig:
    _target_: str = "plots.plot_bottleneck.display_rgb"  # spectral_mae.targets name
    enabled: bool = True  # write the PNGs at every validation
    nb_to_plot: int = 4  # validation samples drawn per figure
    save_format: Literal["png", "jpg", "pdf", "svg"] = "png"  # image format
    dpi: int = 150  # resolution of the figures
    pixels_per_image: int = 3  # sample pixels in the spectral comparison plot

    def __post_init__(self):
        _check_target("show_prediction", self._target_)


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
    log_model: bool = True  # the best weights also as an MLflow model (mlflow.pytorch.load_model) at the end


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
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=0, interval="step")
    )
    metric: MetricConfig = field(default_factory=MetricConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
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

    def __post_init__(self):
        spelled = self.dataset.transform_type
        if spelled is not None and spelled != self.augmentation.name:
            raise ConfigError(
                f"dataset.transform_type={spelled} and augmentation={self.augmentation.name} disagree; "
                f"pick the augmentation with augmentation={spelled} (dataset.transform_type is the older "
                "spelling and may be left out)."
            )


def upgrade_saved_config(data: dict) -> dict:
    """A run's saved config (its config.yaml or a checkpoint's "config" entry) as the current schema reads it.

    Runs saved before `model.decoder_attention` existed trained MAE's joint decoder; the default is now
    "divided", so a missing key must mean "joint" for their checkpoints to load and resume. Runs saved before
    the `augmentation` section chose it with `dataset.transform_type`.
    """
    model = data.get("model")
    if isinstance(model, dict) and "decoder_attention" not in model:
        data = {**data, "model": {**model, "decoder_attention": "joint"}}
    dataset = data.get("dataset")
    if "augmentation" not in data and isinstance(dataset, dict) and dataset.get("transform_type"):
        data = {**data, "augmentation": {"name": dataset["transform_type"]}}
    return data


def load(
    source: str | Path | None = DEFAULT_CONFIG,
    *,
    cli: dict | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> SpectralMAEConfig:
    """The resolved config: schema < YAML `source` < `group=name` < typed CLI options < `a.b=value`."""
    return load_config(SpectralMAEConfig, source, package=PACKAGE, cli=cli, overrides=list(overrides))
