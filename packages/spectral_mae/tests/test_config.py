"""Config composition: bundled groups, overrides, --cfg job, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import spectral_mae
from common.cli import run_cli
from common.config import config_to_dict
from common.errors import ConfigError
from spectral_mae import config as config_module
from spectral_mae.factory import check_config
from spectral_mae.model import VARIANTS
from spectral_mae.train import main

CONFIGS = Path(spectral_mae.__file__).parent / "configs"


def test_schema_defaults_equal_the_default_group_files():
    schema = config_module.SpectralMAEConfig()
    cfg = config_to_dict(schema)
    for group, name in config_module.DEFAULT_GROUPS.items():
        data = yaml.safe_load((CONFIGS / group / f"{name}.yaml").read_text())
        if group == "optimizer":  # the schema leaves both selectors empty: it means the same optimizer
            assert schema.optimizer.kind == data.pop("name") == config_module.load().optimizer.kind
            data.pop("_target_")
        for key, value in data.items():
            expected = cfg[group][key]
            assert value == expected or float(value) == pytest.approx(expected), (group, key)


def test_bundled_config_composes_defaults_and_its_own_values():
    cfg = config_module.load()
    assert (
        cfg.model.name == "mae_medium" and cfg.hparams.batch_size == 6 and cfg.general.device_ids == [0, 1, 2]
    )
    assert cfg.scheduler.name == "cosine" and cfg.loss.sam_weight == 0.1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_group_selects_each_variant(name):
    cfg = config_module.load(overrides=[f"model={name}"])
    arch = VARIANTS[name]
    assert (cfg.model.name, cfg.model.embed_dim, cfg.model.encoder_depth) == (
        name,
        arch.embed_dim,
        arch.encoder_depth,
    )


def test_documented_overrides():
    cfg = config_module.load(
        overrides=[
            "model=mae_large",
            "hparams.batch_size=4",
            "general.use_amp=true",
            'mlflow.tags.version="v1.0"',
            "general.experiment_name=custom_experiment",
            "optimizer.lr=1e-3",
            "hparams.epochs=100",
        ]
    )
    assert cfg.model.name == "mae_large" and cfg.hparams.batch_size == 4 and cfg.general.use_amp is True
    assert cfg.mlflow.tags == {"version": "v1.0"} and cfg.general.experiment_name == "custom_experiment"
    assert cfg.optimizer.lr == 1e-3 and cfg.hparams.epochs == 100


def test_cfg_job_prints_resolved_config_and_exits(tmp_path):
    result = CliRunner().invoke(
        main, ["--cfg", "job", "model=mae_tiny", "hparams.batch_size=16", "--output-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["model"]["name"] == "mae_tiny" and printed["hparams"]["batch_size"] == 16
    assert printed["general"]["output_dir"] == str(tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("hparams.batchsize=4", "batch_size"),  # unknown key: names the closest valid one
        ("hparams.batch_size=many", "hparams.batch_size"),  # uncoercible value
        ("model=mae_gigantic", "mae_tiny"),  # unknown group choice lists the valid ones
    ],
)
def test_bad_overrides_fail_clearly(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_module.load(overrides=[override])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.mask_ratio=1.5", "mask_ratio"),
        ("model.img_size=510", "divisible"),
        ("hparams.batch_size=0", "batch_size"),
    ],
)
def test_bad_values_fail_clearly(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_config(config_module.load(overrides=[override]))


def test_cli_error_is_one_paragraph_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--cfg", "job", "hparams.batchsize=4"])  # what `python -m spectral_mae.train` runs
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error:") and "Traceback" not in stderr and "batch_size" in stderr


def test_decoder_attention_option_and_configs_saved_before_it():
    assert config_module.load().model.decoder_attention == "divided"
    assert config_module.load(overrides=["model.decoder_attention=joint"]).model.decoder_attention == "joint"
    with pytest.raises(ConfigError, match="decoder_attention"):
        config_module.load(overrides=["model.decoder_attention=axial"])
    # A run saved before the option existed trained MAE's joint decoder: its config must load as "joint".
    old = config_to_dict(config_module.load())
    del old["model"]["decoder_attention"]
    assert config_module.load(config_module.upgrade_saved_config(old)).model.decoder_attention == "joint"
    new = config_to_dict(config_module.load())
    assert config_module.upgrade_saved_config(new) == new
