"""--resume last | RUN | CKPT, and refusing checkpoints that cannot resume a run."""

import os

import pytest

from common.checkpoint import save_checkpoint
from common.errors import CheckpointError
from common.resume import find_checkpoint, newest_run, read_training_checkpoint, saved_config


def test_last_is_the_newest_checkpoint_of_the_run(tmp_path):
    ckpts = tmp_path / "run/checkpoints"
    for i, name in enumerate(["best.ckpt", "last.ckpt", "last_step.ckpt"]):
        save_checkpoint(ckpts / name, {"i": i})
        os.utime(ckpts / name, ns=(i * 10**9, i * 10**9))
    (ckpts / ".last.ckpt.trainyard-x.tmp").write_bytes(b"torn")
    assert find_checkpoint("last", tmp_path / "run") == ckpts / "last_step.ckpt"
    assert find_checkpoint(tmp_path / "run") == ckpts / "last_step.ckpt"
    assert find_checkpoint(ckpts / "best.ckpt") == ckpts / "best.ckpt"


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="needs the run folder"):
        find_checkpoint("last")
    with pytest.raises(CheckpointError, match="no such"):
        find_checkpoint(tmp_path / "nothing.ckpt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint("last", tmp_path)
    save_checkpoint(tmp_path / "weights.ckpt", {"model": {}})
    with pytest.raises(CheckpointError, match="cannot resume a run"):
        read_training_checkpoint(tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="no run config"):
        saved_config({"config": None})


def test_last_under_a_folder_of_timestamped_runs_is_the_newest_run(tmp_path):
    for i, run in enumerate(["exp_20260101_000000", "exp_20260102_000000", "other"]):
        ckpt = tmp_path / run / "checkpoints/last.ckpt"
        save_checkpoint(ckpt, {"i": i})
        os.utime(ckpt, ns=((3 - i) * 10**9,) * 2)  # the first run's checkpoint is the newest
    assert newest_run(tmp_path) == tmp_path / "exp_20260101_000000"
    assert find_checkpoint("last", tmp_path) == tmp_path / "exp_20260101_000000/checkpoints/last.ckpt"
    assert newest_run(tmp_path / "other") == tmp_path / "other"
    assert newest_run(tmp_path / "missing") is None


def test_the_run_folder_of_a_checkpoint(tmp_path):
    from common.resume import run_folder_of

    assert run_folder_of(tmp_path / "run/checkpoints/last.ckpt") == tmp_path / "run"
    assert run_folder_of(tmp_path / "elsewhere/weights.ckpt") == tmp_path / "elsewhere"
