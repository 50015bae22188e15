"""The progressive-resolution recipe of the README, as written: stage 1 named `stage1_256`, stage 2 resumed
from `outputs/stage1_256/checkpoints/checkpoint_best.pth` (weights only) under a new name, a larger tile
and a smaller learning rate. Plus the run-folder rule behind it: a typed experiment name is the folder's name,
timestamped only when that folder already holds a run that is not being continued."""

from __future__ import annotations

import yaml

from cabruca.engine import HISTORY_FILE
from cabruca.training import choose_run_folder
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


def test_a_named_folder_holding_a_run_gets_a_timestamp_unless_continued(tiny_data, tmp_path):
    out = tmp_path / "outputs"
    cfg = make_cfg(tiny_data, out, experiment_name="trial")
    run, note = choose_run_folder(cfg, None, None, named=True)
    assert run.root == out / "trial" and note == ""  # a typed name is the folder's name
    (run.root / "config.yaml").write_text("experiment_name: trial\n")  # now it holds a run
    again, note = choose_run_folder(cfg, None, None, named=True)
    assert again.root.name.startswith("trial_") and str(out / "trial") in note and "--resume" in note
    assert (run.root / "config.yaml").read_text() == "experiment_name: trial\n"  # untouched
    # continuing the run writes on in its own folder, named or not
    latest = run.root / "checkpoints" / "checkpoint_latest.pth"
    continued, note = choose_run_folder(cfg, "continue", latest, named=True)
    assert continued.root == run.root.resolve() and note == ""
    # without a typed name the folder is <experiment_name>_<timestamp>, as always
    assert choose_run_folder(cfg, None, None)[0].root.name.startswith("trial_")
