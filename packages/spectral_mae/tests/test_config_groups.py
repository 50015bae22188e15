"""The original project's configuration tree: every group selectable with `group=name` and reaching the objects
built from it; its `_target_` YAML files accepted through the registry, and unknown targets refused unimported."""

from __future__ import annotations

import builtins
import importlib
import sys

import pytest
import torch
import yaml

from common.cli import run_cli
from common.config import bundled_groups
from common.errors import ConfigError
from common.schedules import build_schedule
from spectral_mae import config as config_module
from spectral_mae.factory import (
    build_dataset,
    build_loss_from_config,
    build_model_from_config,
    build_optimizer,
)
from spectral_mae.metrics import reconstruction_metrics, spectral_angle_accuracy
from spectral_mae.model import MaskedAutoencoderSpectral
from spectral_mae.targets import TARGETS, resolve_target
from spectral_mae.train import main

SEED_GROUPS = (
    "accuracy",
    "augmentation",
    "dataset",
    "loss",
    "metric",
    "model",
    "optimizer",
    "scheduler",
    "show_prediction",
)

# The original project's YAML examples, copied as its README shows them.
SEED_CONFIG = """\
defaults:
  - dataset: segmentation_dataset
  - model: mae_medium
  - loss: mae_spectral
  - optimizer: adamw
  - scheduler: cosine
  - show_prediction: plot_rgb

# Training hyperparameters
hparams:
  epochs: 200
  batch_size: 6
  valid_interval: 5
  accumulate_grad_batches: 1

# Hardware configuration
general:
  device_ids: [0, 1, 2]  # Multi-GPU setup
  num_workers: 8
"""
SEED_MODEL = """\
# mae_medium.yaml example
_target_: models.spectral_gpt.mae_spectral.MAESpectral
img_size: 500
patch_size: [25, 5]  # [spatial, spectral]
in_chans: 30
embed_dim: 512
encoder_depth: 16
encoder_num_heads: 16
decoder_embed_dim: 256
decoder_depth: 8
decoder_num_heads: 8
mask_ratio: 0.8
"""
SEED_LOSS = """\
# conf/loss/mae_spectral.yaml
_target_: losses.mae_spectral.MAESpectralLoss
mse_weight: 1.0
sam_weight: 0.1
variance_weight: 0.01
range_penalty_weight: 0.001
"""
SEED_DATASET = """\
# conf/dataset/segmentation_dataset.yaml
_target_: dataset.segmentation_dataset.SegmentationDataset
csv_file: "/path/to/dataset.csv"
transform_type: "augment_basic"
normalize: true
load_rgb: true
"""
SEED_SHOW_PREDICTION = """\
# conf/show_prediction/plot_rgb.yaml
_target_: plots.plot_bottleneck.display_rgb
nb_to_plot: 4
save_format: "png"
dpi: 150
"""


def _as_section(name: str, text: str) -> str:
    """A group file's text nested under `name:` (a whole config holding the original's group files)."""
    return f"{name}:\n" + "".join(f"  {line}\n" for line in text.splitlines())


def test_every_folder_of_the_seed_tree_is_a_group_whose_options_all_load():
    groups = bundled_groups(config_module.PACKAGE)
    assert set(SEED_GROUPS) <= set(groups)
    for group in SEED_GROUPS:
        assert config_module.DEFAULT_GROUPS.get(group, "cosine") in groups[group]
        for name in groups[group]:
            config_module.load(overrides=[f"{group}={name}"])  # each option composes without error


@pytest.mark.parametrize(
    "choice, optimizer_class",
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)
def test_optimizer_group_builds_the_chosen_optimizer(make_config, choice, optimizer_class):
    cfg = make_config(f"optimizer={choice}")
    optimizer = build_optimizer(cfg, build_model_from_config(cfg), torch.device("cpu"))
    assert type(optimizer) is optimizer_class
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    if choice == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["nesterov"] is True


def test_scheduler_group_reaches_the_schedule(make_config):
    lrs = {}
    for choice in ("cosine", "constant"):
        schedule = build_schedule(make_config(f"scheduler={choice}").scheduler, [1.0], 10)
        lrs[choice] = [schedule.step()[0] for _ in range(5)]
    assert lrs["constant"] == [1.0] * 5
    assert lrs["cosine"][-1] < lrs["cosine"][0] < 1.0


def test_loss_group_reaches_the_loss_weights(make_config):
    assert build_loss_from_config(make_config("loss=mse")).weights == {
        "mse": 1.0,
        "sam": 0.0,
        "variance": 0.0,
        "range_penalty": 0.0,
    }
    assert build_loss_from_config(make_config()).weights["sam"] == 0.1


@pytest.mark.parametrize(
    "choice, transforms",
    [("none", ()), ("flips", ("hflip", "vflip")), ("augment_basic", ("hflip", "vflip", "rot90"))],
)
def test_augmentation_group_reaches_the_training_dataset(make_config, choice, transforms):
    cfg = make_config(f"augmentation={choice}")
    assert build_dataset(cfg, "train", augment=True).transforms == transforms
    assert build_dataset(cfg, "val", augment=False).transforms == ()


def test_metric_and_accuracy_groups_choose_what_validation_computes(make_config):
    torch.manual_seed(0)
    assert make_config("metric=fast").metric.names == ["recon_mse", "sam_deg"]
    cube = torch.rand(2, 10, 8, 8) + 0.1
    assert set(reconstruction_metrics(cube, cube, torch.ones_like(cube), ["recon_mse", "sam_deg"])) == {
        "recon_mse",
        "sam_deg",
    }
    cfg = make_config("accuracy=spectral_angle", "accuracy.threshold_deg=2")
    assert (cfg.accuracy.name, cfg.accuracy.threshold_deg) == ("spectral_angle", 2.0)
    noisy = cube.clone()
    noisy[0] = torch.rand_like(cube[0])  # the first sample's spectra far off, the second's exact
    assert spectral_angle_accuracy(cube, cube, 2.0) == 1.0
    assert spectral_angle_accuracy(noisy, cube, 2.0) == pytest.approx(0.5, abs=0.05)


def test_cfg_job_shows_the_group_choices(capsys):
    run_cli(main, ["--cfg", "job", "optimizer=sgd", "scheduler=constant", "augmentation=none", "loss=mse"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"]["_target_"] == "torch.optim.SGD" and printed["optimizer"]["lr"] == 0.05
    assert printed["scheduler"]["name"] == "constant" and printed["augmentation"]["name"] == "none"
    assert printed["loss"]["name"] == "mse" and printed["model"]["_target_"].endswith("MAESpectral")


def test_the_seed_yaml_files_are_accepted(tmp_path):
    main_config = tmp_path / "config.yaml"
    main_config.write_text(SEED_CONFIG)
    cfg = config_module.load(main_config)
    assert cfg.model.name == "mae_medium" and cfg.general.device_ids == [0, 1, 2]

    whole = tmp_path / "seed_sections.yaml"
    whole.write_text(
        _as_section("model", SEED_MODEL)
        + _as_section("loss", SEED_LOSS)
        + _as_section("dataset", SEED_DATASET)
        + _as_section("show_prediction", SEED_SHOW_PREDICTION)
    )
    cfg = config_module.load(whole, overrides=["model=mae_tiny", "model.img_size=50"])
    assert cfg.dataset.csv_file == "/path/to/dataset.csv" and cfg.augmentation.name == "augment_basic"
    assert resolve_target("model", cfg.model._target_) is MaskedAutoencoderSpectral
    assert (
        resolve_target("show_prediction", cfg.show_prediction._target_).__name__ == "write_prediction_figures"
    )
    assert isinstance(build_model_from_config(cfg), MaskedAutoencoderSpectral)
    assert build_loss_from_config(config_module.load(whole)).weights["variance"] == 0.01

    sgd_only = tmp_path / "sgd.yaml"  # a Hydra-style optimizer file names only its _target_
    sgd_only.write_text("optimizer:\n  _target_: torch.optim.SGD\n  lr: 0.01\n")
    assert config_module.load(sgd_only).optimizer.kind == "sgd"


def test_every_registered_target_resolves_inside_the_package_or_torch():
    for name, target in TARGETS.items():
        assert target.module.split(".")[0] in ("spectral_mae", "torch"), name
        assert callable(resolve_target(target.section, name))


def test_an_unknown_target_is_refused_without_any_import(tmp_path, monkeypatch, capsys):
    bogus = "trainyard_bogus_pkg_7f3a"
    config = tmp_path / "evil.yaml"
    config.write_text(_as_section("model", SEED_MODEL.replace("models.spectral_gpt.mae_spectral", bogus)))
    imported: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    def recording_import_module(name, *args, **kwargs):
        imported.append(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    monkeypatch.setattr(importlib, "import_module", recording_import_module)
    with pytest.raises(ConfigError) as error:
        config_module.load(config)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--cfg", "job", "--config", str(config)])
    monkeypatch.undo()

    assert not [name for name in imported if bogus in name] and bogus not in sys.modules
    message = str(error.value)
    assert f"{bogus}.MAESpectral" in message and "models.spectral_gpt.mae_spectral.MAESpectral" in message
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith("error: ") and "Traceback" not in stderr


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("loss._target_=torch.optim.SGD", "belongs in section 'optimizer'"),
        ("optimizer.name=sgd", "choose one with optimizer=sgd"),
        ("dataset.transform_type=flips", "augmentation=flips"),
        ("metric.names=[recon_mse,accuracy]", "unknown ['accuracy']"),
    ],
)
def test_contradicting_or_unknown_choices_are_one_clear_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        config_module.load(overrides=[override])


def test_a_run_saved_before_the_augmentation_group_keeps_its_augmentation():
    saved = {"dataset": {"transform_type": "flips"}, "model": {"decoder_attention": "divided"}}
    assert config_module.load(config_module.upgrade_saved_config(saved)).augmentation.name == "flips"
