"""Training on the shared loop: a short run learns and writes figures + MLflow; k micro-batches give one big
batch's gradients; SIGKILL at random steps and resumed ends bit-identical; SIGINT / SIGTERM exit 130 / 143."""

from __future__ import annotations

import logging
import os
import random
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.runs import RunFolder
from common.seeding import seed_everything
from common.testing import assert_torch_loadable, assert_trees_equal, history_series
from spectral_mae.factory import load_from_checkpoint
from spectral_mae.synthetic import SyntheticSpec, write_dataset
from spectral_mae.train import find_resume_checkpoint, main
from spectral_mae.trainer import SpectralMAETask, train

CPU = torch.device("cpu")
LOG = logging.getLogger("spectral_mae_test")


def run_training(cfg, folder, **kw):
    return train(cfg, RunFolder(folder), device=CPU, logger=LOG, **kw)


def history(folder):
    # wall-clock figures (system/...) differ between runs by nature; everything else must be identical
    return history_series(folder / "metrics_history.json")


@pytest.mark.slow
def test_short_run_loss_falls_writes_figures_and_mlflow(make_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the shared MLflow store is mlflow.db where the command runs
    cfg = make_config(
        "hparams.epochs=6",
        "hparams.valid_interval=3",
        "optimizer.lr=3e-3",
        "mlflow.enabled=true",
        "general.experiment_name=test_exp",
        "mlflow.tags.version=v1.0",
        "scheduler=constant",
    )
    run_dir = tmp_path / "run"
    result = run_training(cfg, run_dir)
    assert result.epochs_done == 6 and result.global_step == 18 and result.exit_code == 0
    assert result.run_dir == run_dir
    hist = history(run_dir)
    epoch_loss = [v for _, v in hist["train/mse"]]
    assert epoch_loss[-1] < 0.9 * epoch_loss[0], epoch_loss  # 18 steps: a clear, steady fall
    # The loop's metric names: per step train/<name>_step (every step here), per epoch train/<name>, val/<name>
    # at each validation, lr, epoch (epochs completed).
    assert [s for s, _ in hist["train/loss_step"]] == list(range(1, 19))
    assert {"train/grad_norm_step", "train/grad_norm", "lr", "lr/decay", "lr/no_decay"} <= hist.keys()
    assert [s for s, _ in hist["train/loss"]] == [3, 6, 9, 12, 15, 18]
    assert hist["epoch"] == [(3 * e, float(e)) for e in range(1, 7)]
    assert not any(name.startswith("train_epoch/") for name in hist)
    # Figures of every validation (epochs 3 and 6), the curves, the best checkpoint.
    for kind in ("rgb_reconstruction", "mse_per_wavelength", "spectral_comparison"):
        for epoch in (3, 6):
            assert (run_dir / "plots" / "predictions" / f"{kind}_epoch_{epoch:04d}.png").stat().st_size > 1000
    assert (run_dir / "plots" / "training_curves.png").is_file()
    assert result.best_checkpoint == run_dir / "checkpoints" / "best_model.ckpt"
    for ckpt in (result.best_checkpoint, run_dir / "checkpoints" / "last.ckpt"):
        assert_torch_loadable(ckpt, load_from_checkpoint, tmp_path)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test_exp")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.data.params["model.name"] == "test_tiny" and mlrun.data.params["hparams.epochs"] == "6"
    assert mlrun.data.tags["version"] == "v1.0"
    val_loss = client.get_metric_history(mlrun.info.run_id, "val/loss")
    assert [m.step for m in val_loss] == [9, 18]
    assert [m.value for m in val_loss] == pytest.approx([v for _, v in hist["val/loss"]])
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    # model: the best weights as an MLflow model (mlflow.pytorch.load_model)
    assert {"predictions", "best_model", "plots", "model"} <= artifacts
    # system metrics as in every package (the helper above leaves system/ out of `hist`)
    assert len(client.get_metric_history(mlrun.info.run_id, "system/rss_peak_mb")) == 6
    best = {a.path for a in client.list_artifacts(mlrun.info.run_id, "best_model")}
    # the weights are stored once, as the MLflow model; the raw file goes up only with mlflow.log_model off
    assert best == {"best_model/best_model.json"}


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    """16 cubes of 20x20x10 mixed from 2 endmembers, no vessels: any visible spectral group of a location
    determines the hidden ones there (a pixel's spectrum is one abundance along a fixed line)."""
    return write_dataset(
        tmp_path_factory.mktemp("easy_data"),
        SyntheticSpec(num_images=16, size=20, bands=10, num_endmembers=2, num_vessels=0, val_fraction=0.25),
    )


def test_short_run_beats_the_mean_predictor(config_factory, easy_data, tmp_path):
    # Catches a model that only learns the per-band mean (val MSE stuck at the zeros baseline), as the demo's
    # joint-attention decoder did: 96 steps on the easy set must get clearly below that baseline.
    cfg = config_factory(
        tmp_path,
        f"dataset.csv_file={easy_data}",
        "model.decoder_embed_dim=32",
        "hparams.epochs=16",
        "hparams.valid_interval=4",
        "optimizer.lr=3e-3",
        "scheduler=constant",
        "show_prediction.enabled=false",
    )
    run_training(cfg, tmp_path / "easy")
    hist = history(tmp_path / "easy")
    val_mse = [v for _, v in hist["val/mse"]]
    baseline = hist["val/mean_baseline_mse"][-1][1]  # the same fixed val masks at every validation
    # divided reaches 0.81x the baseline; the joint decoder 0.99x (both measured): 0.9x sits between them
    assert min(val_mse) < 0.9 * baseline, (val_mse, baseline)


def test_k_micro_batches_give_the_gradients_of_one_batch_k_times_larger(make_config):
    """The task's part of accumulation: each micro-batch's loss scaled by 1/k sums to the big batch's loss
    gradient (each sample carries its own mask noise, and every sample hides as many tokens)."""

    def gradients(batch_size: int, k: int) -> dict[str, torch.Tensor]:
        cfg = make_config(f"hparams.batch_size={batch_size}", "dataset.transform_type=augment_basic")
        seed_everything(cfg.general.seed)
        task = SpectralMAETask(cfg, device=CPU, rank=0, world_size=1)
        batches = task.batches(epoch=1, start=0)
        losses = [task.micro_step(next(batches), 1.0 / k)["loss"] for _ in range(k)]
        batches.close()
        grads = {name: p.grad.clone() for name, p in task.model.named_parameters() if p.grad is not None}
        return grads, float(np.mean(losses))

    big, big_loss = gradients(batch_size=6, k=1)  # the 6 training samples in one batch
    small, small_loss = gradients(batch_size=2, k=3)  # the same 6, in the same order, as 3 micro-batches
    assert small_loss == pytest.approx(big_loss, rel=1e-6)
    assert big.keys() == small.keys() and len(big) > 10
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


# 6 train samples / batch 2 = 3 micro-batches per epoch; 2 per optimizer step, so steps of 2 and 1 (the short
# last step is scaled by the loop); 3 epochs = 6 steps; augmentation on; a step checkpoint after every step.
RESUME = (
    "hparams.epochs=3",
    "hparams.accumulate_grad_batches=2",
    "general.checkpoint_every_n_steps=1",
    "scheduler.warmup_steps=2",
    "show_prediction.enabled=false",
)
TOTAL_STEPS = 6


def train_cli(override_factory, tmp_path, name, *extra):
    """`python -m spectral_mae.train` in a subprocess, into run folder tmp_path/name."""
    overrides = override_factory(tmp_path, *RESUME, f"general.run_dir={tmp_path / name}")
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "spectral_mae.train", "--device", "cpu", *overrides, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def callback(class_path: str, **init_args) -> str:
    args = ", ".join(f"{k}: {v}" for k, v in init_args.items())
    return f"callbacks=[{{class_path: {class_path}, init_args: {{{args}}}}}]"


def assert_same_run(reference, resumed):
    """Bit-identical: weights, optimizer, scaler, schedule, loop position and sums, callback states, RNG
    states (the file bookkeeping and the config, which names the run folder, differ by nature), and the
    whole metric history."""
    a = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    b = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == TOTAL_STEPS
    # "mlx": the in-process reference also records MLX's RNG when another package's tests imported MLX into
    # this pytest process; spectral_mae never draws from it
    assert_trees_equal(a, b, skip=("config", "manager", "mlx"))
    assert history(reference) == history(resumed)


@pytest.mark.slow
def test_sigkill_at_three_random_steps_then_resume_ends_bit_identical(override_factory, tmp_path):
    # The uninterrupted reference runs as the killed runs do, in a subprocess with their threads: in this
    # process it ran on the worker's thread settings, which other packages' tests may have changed.
    reference = train_cli(override_factory, tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    kills = sorted(random.Random(7).sample(range(2, TOTAL_STEPS + 1), 3))  # step 1 leaves no checkpoint
    for i, step in enumerate(kills):
        resume = ["--resume", "last"] if i else []
        killed = train_cli(
            override_factory, tmp_path, "killed", *resume, callback("common.testing.KillAt", step=step)
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = train_cli(override_factory, tmp_path, "killed", "--resume", "last", "callbacks=[]")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resumed at epoch" in finished.stderr
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_its_number(
    override_factory, tmp_path, capsys, name, code
):
    run_dir = tmp_path / "run"
    overrides = override_factory(tmp_path, *RESUME, f"general.run_dir={run_dir}")
    stop = callback("common.testing.SignalAt", step=3, signal=name)
    with pytest.raises(SystemExit) as info:
        run_cli(main, ["--device", "cpu", *overrides, stop])
    assert info.value.code == code
    state = load_checkpoint(run_dir / "checkpoints" / "last_step.ckpt")
    # step 3 is the first step of epoch 2 (micro-batches 1-2 of 3)
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 3)
    printed = capsys.readouterr().out
    assert f"stopped by {name} at step 3" in printed
    if name == "SIGTERM":
        return
    # The command the run printed continues it as printed: the checkpoint's saved config, no other option.
    command = shlex.split(printed.split("continue with: ", 1)[1].splitlines()[0])
    assert command[:4] == ["python", "-m", "spectral_mae.train", "--resume"] and len(command) == 5
    run_cli(main, command[3:])
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (3, TOTAL_STEPS)
    assert [s for s, _ in history(run_dir)["train/loss_step"]] == list(range(1, TOTAL_STEPS + 1))


def test_resume_last_finds_the_newest_run_under_the_output_dir(make_config, tmp_path):
    for name, mtime in (("spectral_mae_1", 1000), ("spectral_mae_2", 3000), ("other_3", 2000)):
        ckpt = tmp_path / name / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    cfg = make_config(f"general.output_dir={tmp_path}")
    assert find_resume_checkpoint("last", cfg) == tmp_path / "spectral_mae_2/checkpoints/last.ckpt"
    other = make_config(f"general.run_dir={tmp_path / 'other_3'}")
    assert find_resume_checkpoint("last", other) == tmp_path / "other_3/checkpoints/last.ckpt"


def test_overfit_batches_with_accumulation_and_bf16_autocast(make_config, tmp_path):
    cfg = make_config(
        "hparams.overfit_batches=2",
        "hparams.accumulate_grad_batches=2",
        "general.use_amp=true",
        "show_prediction.enabled=false",
        "early_stopping.enabled=true",
    )
    result = run_training(cfg, tmp_path / "overfit")
    assert result.global_step == 2  # 2 batches per epoch, one optimizer step per 2 micro-batches, 2 epochs
    hist = history(tmp_path / "overfit")
    assert len(hist["val/loss"]) == 2 and all(np.isfinite(v) for _, v in hist["val/loss"])
    assert not (tmp_path / "overfit" / "plots" / "predictions").exists()


def test_compiled_training_matches_eager(config_factory, tmp_path, assert_weights_close):
    """general.compile: the same run through torch.compile, to float tolerance; checkpoints keep plain keys."""
    overrides = ("hparams.epochs=2", "scheduler.warmup_steps=2", "show_prediction.enabled=false")
    eager_cfg = config_factory(tmp_path, *overrides)
    compiled_cfg = config_factory(tmp_path, *overrides, "general.compile=true")
    run_training(eager_cfg, tmp_path / "eager")
    run_training(compiled_cfg, tmp_path / "compiled")
    eager, compiled = history(tmp_path / "eager"), history(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()
    for name in eager:
        assert [s for s, _ in compiled[name]] == [s for s, _ in eager[name]], name
        assert [v for _, v in compiled[name]] == pytest.approx(
            [v for _, v in eager[name]], rel=1e-3, abs=1e-5
        ), name
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.ckpt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")["model"]  # no "_orig_mod." keys
    assert_weights_close(a, b, rtol=1e-3, atol=1e-5, lr=eager_cfg.optimizer.lr)
