"""Two Gloo processes on CPU (torchrun + train_ddp) end where one process with the same global batch ends,
with gradient accumulation (the loop's no_sync skips the all-reduce on the first micro-batch of a step); a
SIGKILLed two-process run resumed under torchrun ends bit-identical to the uninterrupted one; a lost rank
ends the other with an error naming it."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.runs import RunFolder
from common.testing import assert_trees_equal, history_series, torchrun
from spectral_mae import config as config_module
from spectral_mae.trainer import train

from .conftest import tiny_overrides

# 6 train samples: global batch 2 -> 3 micro-batches per epoch, 2 per step: steps of 2 and 1 micro-batches,
# two epochs; val has 2 samples (1 per rank). A step checkpoint after every optimizer step.
RUN = [
    "hparams.epochs=2",
    "hparams.accumulate_grad_batches=2",
    "scheduler.warmup_steps=1",
    "optimizer.lr=3e-3",
    "general.checkpoint_every_n_steps=1",
]


@pytest.fixture(scope="module")
def ddp_dir(tiny_data, tmp_path_factory):
    """The uninterrupted two-process run (1 sample per process and micro-batch): its run folder."""
    out = tmp_path_factory.mktemp("spectral_ddp")
    ddp = out / "ddp"
    overrides = tiny_overrides(tiny_data, out, *RUN, "hparams.batch_size=1", f"general.run_dir={ddp}")
    proc = torchrun("spectral_mae.train_ddp", "--device", "cpu", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ddp


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    override_factory, tmp_path, assert_weights_close, ddp_dir
):
    overrides = override_factory(tmp_path, *RUN)
    single_cfg = config_module.load("config", overrides=[*overrides, "hparams.batch_size=2"])
    train(
        single_cfg,
        RunFolder(tmp_path / "single"),
        device=torch.device("cpu"),
        logger=logging.getLogger("spectral_mae_test"),
    )

    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.ckpt")
    ddp = load_checkpoint(ddp_dir / "checkpoints" / "last.ckpt")
    assert single["global_step"] == ddp["global_step"] == 4
    assert_weights_close(single["model"], ddp["model"], rtol=1e-4, atol=1e-6, lr=3e-3)
    # Only rank 0 wrote: one history, whose all-reduced validation metrics match the single process.
    hist = {
        name: json.loads((folder / "metrics_history.json").read_text())["metrics"]
        for name, folder in (("single", tmp_path / "single"), ("ddp", ddp_dir))
    }
    for key in ("val/loss", "val/psnr", "val/ssim", "train/loss"):
        a = [e["value"] for e in hist["single"][key]]
        b = [e["value"] for e in hist["ddp"][key]]
        np.testing.assert_allclose(b, a, rtol=1e-4, err_msg=key)
    assert len(list((ddp_dir / "logs").iterdir())) == 1
    assert {p.name for p in ddp_dir.iterdir()} <= {p.name for p in (tmp_path / "single").iterdir()}


@pytest.mark.slow
def test_a_sigkilled_two_process_run_resumes_under_torchrun_bit_identical(
    override_factory, tmp_path, ddp_dir
):
    run_dir = tmp_path / "killed"
    kill = "callbacks=[{class_path: common.testing.KillAt, init_args: {step: 3}}]"  # both ranks die
    overrides = override_factory(tmp_path, *RUN, "hparams.batch_size=1", f"general.run_dir={run_dir}")
    killed = torchrun("spectral_mae.train_ddp", "--device", "cpu", *overrides, kill)
    assert killed.returncode != 0
    step_file = run_dir / "checkpoints" / "last_step.ckpt"
    assert load_checkpoint(step_file)["global_step"] in (2, 3)  # mid-epoch 2: steps 3 and 4 are epoch 2's
    resumed = torchrun(
        "spectral_mae.train_ddp", "--device", "cpu", "--resume", str(step_file), "callbacks=[]"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (
        load_checkpoint(ddp_dir / "checkpoints" / "last.ckpt"),
        load_checkpoint(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert a["global_step"] == b["global_step"] == 4
    # weights, optimizer, every rank's RNG state: what the uninterrupted run ended with
    assert_trees_equal(a, b, skip=("config", "manager", "saved_at"))
    assert history_series(run_dir / "metrics_history.json") == history_series(
        ddp_dir / "metrics_history.json"
    )


@pytest.mark.slow
def test_a_lost_rank_ends_the_others_with_an_error_naming_it_and_keeps_the_last_checkpoint(
    override_factory, tmp_path
):
    run_dir, stamp = tmp_path / "ddp", tmp_path / "killed_at"
    kill = f"callbacks=[{{class_path: common.testing.KillAt, init_args: {{step: 3, rank: 1, stamp: '{stamp}'}}}}]"
    proc = torchrun(
        "spectral_mae.train_ddp",
        "--device",
        "cpu",
        *override_factory(tmp_path, "hparams.batch_size=1", "general.checkpoint_every_n_steps=1"),
        f"general.run_dir={run_dir}",
        kill,
    )
    ended = time.time()
    assert proc.returncode != 0
    # torchrun's summary names the lost rank and how it died
    assert "rank" in proc.stderr and ": 1 (local_rank: 1)" in proc.stderr, proc.stderr[-3000:]
    assert "SIGKILL" in proc.stderr or "-9" in proc.stderr
    # a liveness bound, not a speed figure: rank 0 must not wait out a long collective timeout
    assert ended - float(stamp.read_text()) < 60
    survivor = load_checkpoint(run_dir / "checkpoints" / "last_step.ckpt")  # intact and verified
    assert survivor["global_step"] in (2, 3)
