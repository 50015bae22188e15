"""The original project's script names (`train_model_medium`, `train_model`, `train_model_ddp`) and its
evaluation example (`load_trained_model(checkpoint_path)` + `evaluate_model_dataloader`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from common.cli import run_cli
from spectral_mae import config as config_module
from spectral_mae import train, train_ddp, train_model, train_model_ddp, train_model_medium
from spectral_mae.factory import build_dataset
from spectral_mae.model import MaskedAutoencoderSpectral


@pytest.fixture(scope="module")
def medium_run(tmp_path_factory, override_factory):
    """One short real run of `python -m spectral_mae.train_model_medium`, shrunk by overrides but keeping the
    model group's name (mae_medium) so the saved config shows the entry's choice."""
    out = tmp_path_factory.mktemp("medium_runs")
    overrides = [
        item
        for item in override_factory(out, "hparams.epochs=1", "show_prediction=none")
        if not item.startswith("model.name=")
    ]
    done = subprocess.run(
        [sys.executable, "-m", "spectral_mae.train_model_medium", "--device", "cpu", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_train_model_medium_trains_mae_medium_with_the_overrides_on_top(medium_run):
    saved = yaml.safe_load((medium_run / "config.yaml").read_text())
    assert saved["model"]["name"] == "mae_medium"
    assert saved["model"]["img_size"] == 20 and saved["hparams"]["epochs"] == 1  # the typed overrides apply
    assert (medium_run / "checkpoints" / "best_model.ckpt").is_file()


def test_train_model_medium_cfg_job(capsys):
    run_cli(train_model_medium.main, ["--cfg", "job", "--config", "demo", "hparams.batch_size=2"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"]["name"], printed["model"]["embed_dim"]) == ("mae_medium", 512)
    assert (
        printed["hparams"]["batch_size"] == 2 and printed["general"]["experiment_name"] == "spectral_mae_demo"
    )
    run_cli(train_model_medium.main, ["--cfg", "job", "model=mae_tiny"])  # a typed choice still wins
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "mae_tiny"


def test_seed_script_names_are_the_train_commands():
    assert train_model.main is train.main and train_model_ddp.main is train_ddp.main


def test_load_trained_model_returns_the_model_in_eval_mode(medium_run):
    from spectral_mae import load_trained_model

    model = load_trained_model(medium_run / "checkpoints" / "best_model.ckpt")
    assert isinstance(model, MaskedAutoencoderSpectral) and not model.training
    assert next(model.parameters()).device == torch.device("cpu")


def test_the_seed_evaluation_example_runs(medium_run, tmp_path, monkeypatch):
    checkpoint_path = medium_run / "checkpoints" / "best_model.ckpt"
    cfg = config_module.load(medium_run / "config.yaml")
    test_loader = DataLoader(build_dataset(cfg, "val", augment=False), batch_size=2)
    monkeypatch.chdir(tmp_path)

    # The example as the original project's README writes it (its `utils.evaluate_model` import is this
    # package's top level).
    from spectral_mae import evaluate_model_dataloader, load_trained_model

    # Load trained model
    model = load_trained_model(checkpoint_path)

    # Evaluate on test set
    results = evaluate_model_dataloader(model=model, dataloader=test_loader, output_folder="results/")

    assert {"loss", "recon_mse", "psnr"} <= set(results) or {"recon_mse", "psnr"} <= set(results)
    assert (tmp_path / "results" / "metrics.json").is_file()
