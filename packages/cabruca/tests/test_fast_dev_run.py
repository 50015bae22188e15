"""`python -m cabruca.train --fast-dev-run N`: N steps and one validation on the tiny scenes; no files."""

from __future__ import annotations

import tempfile

from cabruca.train import main
from common.cli import run_cli

TINY = [
    "model.backbone=test_resnet",
    "model.fpn_channels=32",
    "model.head_channels=16",
    "data.tile_size=64",
    "data.tile_overlap=0",
    "data.batch_size=2",
    "data.num_workers=0",
    "training.save_every_n_steps=0",
]


def test_fast_dev_run_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = ["--config", "training_config_light", "--data_dir", str(tiny_data), "--output-dir", "outputs"]
    run_cli(main, [*args, "--fast-dev-run", "2", "--device", "cpu", "--use-mlflow", *TINY])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fast-dev-run passed: 2 optimizer step(s); train/loss ")
    assert "val/loss" in line and line.endswith("nothing written")
    assert list(cwd.iterdir()) == []  # no run folder, no MLflow store
    # the run's scratch folder is gone (libraries imported on the way may keep caches of their own there)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("cabruca")] == []
