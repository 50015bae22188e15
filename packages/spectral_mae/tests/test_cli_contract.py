"""The command-line contract, through the real command (subprocesses): bad input gets exit 2 and one
`error:` paragraph without a traceback, earlier outputs stay byte-identical and a refused run leaves no
folder; a finished run resumed with more epochs gets a re-planned learning-rate schedule."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from common.cli import run_cli
from common.testing import assert_user_error, file_digests, history_series, make_finished_run, run_command
from spectral_mae.train import main


def train(override_factory, tmp_path, *extra):
    overrides = override_factory(tmp_path / "runs", "show_prediction.enabled=false", *extra)
    return run_command("spectral_mae.train", "--device", "cpu", *overrides)


def test_run_dir_that_is_a_file_is_refused(override_factory, tmp_path):
    (tmp_path / "out").write_text("keep me")
    result = train(override_factory, tmp_path, f"general.run_dir={tmp_path / 'out'}")
    assert_user_error(result, "existing file")
    assert (tmp_path / "out").read_text() == "keep me"


def test_a_new_run_into_an_existing_run_folder_is_refused_and_it_stays_byte_identical(
    override_factory, tmp_path
):
    run = make_finished_run(tmp_path / "run")
    before = file_digests(run)
    result = train(override_factory, tmp_path, f"general.run_dir={run}")
    assert_user_error(result, "already holds a run", "--overwrite")
    assert file_digests(run) == before


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("hparams.nonsense=1", "nonsense"),
        ("hparams.batch_size=0", "batch_size"),
        ("model.in_chans=12", "12"),  # the cubes have 10 bands
    ],
    ids=["unknown-key", "batch-size-0", "wrong-band-count"],
)
def test_bad_config_is_refused_and_leaves_no_run_folder(override_factory, tmp_path, override, fragment):
    result = train(override_factory, tmp_path, f"general.run_dir={tmp_path / 'run'}", override)
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()


def _damaged_copy(tiny_data, tmp_path, damage) -> str:
    """A copy of the tiny dataset with its first cube damaged; returns (csv, damaged cube's name)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    cube = sorted(p for p in data.rglob("*.h5"))[0]
    damage(cube)
    return data / tiny_data.name, cube.name


def _nan_pixel(path):
    with h5py.File(path, "r+") as h5:
        name = next(k for k in h5 if h5[k].ndim == 3)
        values = h5[name][()].astype(np.float32)
        values[0, 0, 0] = np.nan
        del h5[name]
        h5[name] = values


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("damage", [_nan_pixel, _truncate], ids=["nan", "truncated"])
def test_a_damaged_cube_is_named(override_factory, tiny_data, tmp_path, damage):
    csv_file, cube = _damaged_copy(tiny_data, tmp_path, damage)
    result = train(
        override_factory, tmp_path, f"general.run_dir={tmp_path / 'run'}", f"dataset.csv_file={csv_file}"
    )
    assert_user_error(result, cube)
    assert not (tmp_path / "run").exists()


def test_resuming_from_another_packages_checkpoint_is_refused(override_factory, tmp_path):
    from common.demo import DemoConfig
    from common.demo import train as demo_train
    from common.schedules import ScheduleConfig

    demo_train(DemoConfig(output_dir=str(tmp_path / "demo"), epochs=1, schedule=ScheduleConfig()))
    result = train(override_factory, tmp_path, "--resume", tmp_path / "demo" / "checkpoints" / "last.npz")
    assert_user_error(result, "written by another package")


def test_a_finished_run_resumed_with_more_epochs_replans_its_learning_rate(override_factory, tmp_path):
    run = tmp_path / "run"
    cosine = ("scheduler.name=cosine", "scheduler.warmup_steps=0", f"general.run_dir={run}")
    overrides = override_factory(tmp_path, "show_prediction.enabled=false", *cosine)
    run_cli(main, ["--device", "cpu", *overrides])
    first = history_series(run / "metrics_history.json")["lr"]
    run_cli(main, ["--device", "cpu", "--resume", str(run), "hparams.epochs=4"])
    lrs = history_series(run / "metrics_history.json")["lr"]
    assert lrs[: len(first)] == first  # the finished part is kept as it was
    added = [lr for _, lr in lrs[len(first) :]]
    assert added and min(added) > 0 and added[0] > added[-1]  # a new decay, not the minimum learning rate
