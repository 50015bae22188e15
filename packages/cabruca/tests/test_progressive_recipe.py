"""The progressive-resolution recipe of the README, as written: stage 1 named `stage1_256`, stage 2 resumed
from `outputs/stage1_256/checkpoints/checkpoint_best.pth` (weights only) under a new name, a larger tile
and a smaller learning rate. Plus the run-folder rule behind it: a typed experiment name is the folder's name,
timestamped only when that folder already holds a run that is not being continued."""

from __future__ import annotations

import json
import logging

import yaml

from cabruca.engine import HISTORY_FILE
from cabruca.training import choose_run_folder, train
from common.testing import history_series, run_command

from .conftest import make_cfg

# The recipe's own options come first, exactly as in the README; these only shrink the run to seconds.
TINY = [
    "--device",
    "cpu",
    "model.backbone=test_resnet",
    "model.fpn_channels=32",
    "model.head_channels=16",
    "data.tile_overlap=0",
    "data.batch_size=2",
    "data.num_workers=0",
    "training.max_steps_per_epoch=2",
    "training.log_every_n_steps=1",
    "training.save_every_n_steps=0",
    "tracking.tensorboard=false",
]


def test_the_progressive_recipe_runs_as_written(tiny_data, tmp_path):
    stage1 = run_command(
        "cabruca.train",
        *["--config", "configs/training_config.yaml", "--experiment-name", "stage1_256", "--epochs", "1"],
        *[*TINY, "--data-dir", tiny_data, "data.tile_size=64"],
        cwd=tmp_path,
    )
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    best = tmp_path / "outputs" / "stage1_256" / "checkpoints" / "checkpoint_best.pth"
    assert best.is_file()

    stage2 = run_command(
        "cabruca.train",
        *["--config", "configs/training_config.yaml"],
        *["--resume", "outputs/stage1_256/checkpoints/checkpoint_best.pth"],
        *["--experiment-name", "stage2_512", "--lr", "0.00001"],
        *[*TINY, "--data-dir", tiny_data, "data.tile_size=96", "training.num_epochs=1"],
        cwd=tmp_path,
    )
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    run2 = tmp_path / "outputs" / "stage2_512"
    log = "".join(p.read_text() for p in (run2 / "logs").iterdir())
    # a warm start from stage 1's weights (the best file cannot continue a run), said in the log
    assert "new run from its weights" in log and "weights only" in log
    config = yaml.safe_load((run2 / "config.yaml").read_text())
    assert config["data"]["tile_size"] == 96 and config["optimizer"]["lr"] == 1e-5
    h = history_series(run2 / HISTORY_FILE)
    assert h["lr"][0] == (1, 1e-5) and h["train/loss_step"][0][0] == 1  # fresh optimizer, schedule, steps
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["stage1_256", "stage2_512"]


ONE_STEP = {"training.num_epochs": 1, "training.max_steps_per_epoch": 1}


def test_a_named_folder_holding_a_run_gets_a_timestamp_unless_continued(tiny_data, tmp_path, caplog):
    out = tmp_path / "outputs"
    first = train(make_cfg(tiny_data, out, experiment_name="trial", **ONE_STEP), named_folder=True)
    assert first.run_dir == out / "trial"
    cfg = make_cfg(tiny_data, out, experiment_name="trial")
    run, note = choose_run_folder(cfg, None, None, named=True)
    assert run.root.name.startswith("trial_") and str(out / "trial") in note and "--resume" in note
    # continuing the run writes on in its own folder, named or not
    latest = first.run_dir / "checkpoints" / "checkpoint_latest.pth"
    run, note = choose_run_folder(cfg, "continue", latest, named=True)
    assert run.root == first.run_dir.resolve() and note == ""
    # without a typed name the folder is <experiment_name>_<timestamp>, as always
    assert choose_run_folder(cfg, None, None)[0].root.name.startswith("trial_")
    # and the note reaches the run's log
    with caplog.at_level(logging.WARNING, logger="trainyard"):
        second = train(
            make_cfg(tiny_data, out, experiment_name="trial", **ONE_STEP),
            named_folder=True,
            logger=logging.getLogger("trainyard"),
        )
    assert second.run_dir.name.startswith("trial_") and any(
        "already holds a run" in r.getMessage() for r in caplog.records
    )
    assert json.loads((first.run_dir / HISTORY_FILE).read_text())  # the first run is untouched
