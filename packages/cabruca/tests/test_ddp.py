"""Data parallel under torchrun: two Gloo processes on CPU end where one process with the same global batch
ends, only rank 0 writes the run folder, and a SIGKILLed two-process run resumed with `--resume last` under
torchrun ends bit-identical to the uninterrupted two-process run. The kill takes rank 1 alone: torchrun must
end rank 0 too, at once, and name the lost rank.

The equality with one process needs per-process gradients whose mean is the gradient of the global batch:
the loss parts that are ratios over the whole batch are switched off (class-weighted cross-entropy, the
offset L1 normalised by the batch's tree pixels) and `training.norm_eval` keeps BatchNorm on its running
statistics (otherwise each rank normalises with the statistics of its 2 tiles, the single process with those
of 4: a real difference, not a rounding one). What remains differs only by float summation order, hence the
tolerance."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cabruca import config as config_mod
from cabruca.engine import HISTORY_FILE
from cabruca.train import train
from common import testing
from common.checkpoint import load_checkpoint
from common.testing import assert_trees_equal, history_series

from .test_train import callbacks_override, only_run, subprocess_env  # noqa: F401  (fixture)

# 12 tiles of 64 px; global batch 4 (2 per process, or 4 in one), 2 micro-batches per optimizer step:
# 3 micro-batches per epoch -> steps of 2 and 1 micro-batches, 2 epochs, 4 optimizer steps.
OVERRIDES = [
    "model.backbone=test_resnet",
    "model.fpn_channels=32",
    "model.head_channels=16",
    "data.tile_size=64",
    "data.tile_overlap=0",
    "data.num_workers=0",
    "training.num_epochs=2",
    "training.gradient_accumulation_steps=2",
    "training.save_every_n_steps=1",
    "training.log_every_n_steps=1",
    "training.norm_eval=true",
    "tracking.tensorboard=false",
    "optimizer.lr=0.003",
    "loss.semantic_class_weights=[]",
    "loss.offset_weight=0.0",
]
LATEST = "checkpoints/checkpoint_latest.pth"


def torchrun(env, *args, timeout=300):
    return testing.torchrun("cabruca.train", *args, env=env, timeout=timeout)


def base_args(data_dir, output_dir):
    return ["--config", "training_config_light", "--device", "cpu", "--data-dir", str(data_dir),
            "--output-dir", str(output_dir)]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory, subprocess_env):  # noqa: F811
    """The uninterrupted two-process run (per-process batch 2): its run folder."""
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(subprocess_env, *base_args(tiny_data, out), *OVERRIDES, "data.batch_size=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "data parallel over 2 processes: global batch 8" in proc.stderr
    return only_run(out)  # one run folder: rank 0 chose its timestamped name and both used it


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_data, tmp_path, ddp_run):
    cfg = config_mod.load(
        "training_config_light",
        cli={"data.data_dir": str(tiny_data), "output_dir": str(tmp_path), "device": "cpu"},
        overrides=[*OVERRIDES, "data.batch_size=4"],
    )
    single = train(cfg).run_dir
    a, b = load_checkpoint(single / LATEST), load_checkpoint(ddp_run / LATEST)
    assert a["global_step"] == b["global_step"] == 4
    for name, ref in a["model"].items():
        got = b["model"][name]
        if np.issubdtype(ref.dtype, np.floating):
            # 4 Adam steps of lr 3e-3: weights move by ~1e-2; summation order moves them by ~1e-7
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got, ref, err_msg=name)
    # Metrics reduced across ranks before logging; validation (rank 0, broadcast) equals the single run's.
    ha, hb = history_series(single / HISTORY_FILE), history_series(ddp_run / HISTORY_FILE)
    for key in ("train/loss", "train/loss_step", "val/loss", "val/mIoU", "val/canopy_IoU"):
        assert [s for s, _ in hb[key]] == [s for s, _ in ha[key]], key
        np.testing.assert_allclose([v for _, v in hb[key]], [v for _, v in ha[key]], rtol=1e-3, err_msg=key)
    # Only rank 0 wrote: one log file, one config, one history, no stray files.
    assert len(list((ddp_run / "logs").iterdir())) == 1
    assert {p.name for p in ddp_run.iterdir()} == {p.name for p in single.iterdir()}


@pytest.mark.slow
def test_sigkilled_two_process_run_resumed_under_torchrun_ends_bit_identical(
    tiny_data,
    tmp_path,
    ddp_run,
    subprocess_env,  # noqa: F811
):
    stamp = tmp_path.parent / f"{tmp_path.name}_killed_at"  # outside the output folder, which holds runs only
    killed = torchrun(
        subprocess_env,
        *base_args(tiny_data, tmp_path),
        *OVERRIDES,
        "data.batch_size=2",
        callbacks_override("common.testing.KillAt", step=3, rank=1, stamp=f"'{stamp}'"),
    )
    ended = time.time()
    assert killed.returncode != 0
    # torchrun's summary names the lost rank and how it died; rank 0 did not wait out a collective timeout
    assert ": 1 (local_rank: 1)" in killed.stderr and ("SIGKILL" in killed.stderr or "-9" in killed.stderr)
    assert ended - float(stamp.read_text()) < 60  # a liveness bound, not a speed figure
    run = only_run(tmp_path)
    # step 2's file, or step 3's when rank 0 wrote it before torchrun ended it (the kill came after its step)
    assert load_checkpoint(run / LATEST)["global_step"] in (2, 3)
    resumed = torchrun(subprocess_env, "--resume", "last", "--output-dir", str(tmp_path), "callbacks=[]")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "exact continuation" in resumed.stderr
    assert only_run(tmp_path) == run
    assert_trees_equal(
        load_checkpoint(ddp_run / LATEST), load_checkpoint(run / LATEST), skip=("config", "manager")
    )
    assert history_series(ddp_run / HISTORY_FILE) == history_series(run / HISTORY_FILE)
