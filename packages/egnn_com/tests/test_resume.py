"""Exact resume: a run stopped mid-epoch (cleanly, or "killed" after a periodic step checkpoint) and resumed
ends with the same weights and the same metrics history as an uninterrupted run (CPU, deterministic ops)."""

import json

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.config import load_config
from egnn_com import train as train_cli
from egnn_com.config import EgnnComConfig
from egnn_com.engine import StopTraining
from egnn_com.pipeline import run_training
from egnn_com.resume import load_resume_state

# 32 train graphs / batch 8 = 4 steps per epoch, 3 epochs = 12 steps
BASE = [
    "data.batch_size=8",
    "data.num_workers=0",
    "model.hidden_dim=16",
    "model.num_layers=2",
    "logging.tensorboard=false",
    "train.max_epochs=3",
    "optim.lr=0.01",
    "optim.schedule.patience=0",
]


def cfg_for(tmp_path, data, name, model, *extra):
    cfg = load_config(EgnnComConfig, overrides=[*BASE, f"model.name={model}", *extra])
    cfg.data.data_dir, cfg.train.output_dir = str(data), str(tmp_path / name)
    return cfg


def final_state(out):
    return load_checkpoint(out.checkpoint_dir / "last.ckpt")


def metric_values(history_path):
    """{name: [(step, value), ...]} without wall-clock times."""
    metrics = json.loads(history_path.read_text())["metrics"]
    skip = ("epoch_time_s", "data_wait_share", "memory_rss_peak_mb")
    return {k: [(p["step"], p["value"]) for p in v] for k, v in metrics.items() if k not in skip}


def assert_same_run(a, b):
    sa, sb = final_state(a), final_state(b)
    for key, value in sa["model"].items():
        assert (value == sb["model"][key]).all(), key
    assert sa["schedule"] == sb["schedule"] and sa["global_step"] == sb["global_step"] == 12
    assert metric_values(a.history) == metric_values(b.history)


@pytest.mark.parametrize("model", ["gcn", "egnn"])  # gcn: dropout draws from the RNG, so RNG state matters
def test_graceful_stop_mid_epoch_then_resume_is_exact(tmp_path, tiny_data, model):
    reference = run_training(cfg_for(tmp_path, tiny_data, "ref", model))
    stopped = run_training(cfg_for(tmp_path, tiny_data, "run", model), stop_hook=lambda step: step == 6)
    assert stopped.fit.stopped_early and stopped.fit.checkpoint.endswith("last-step.ckpt")
    state = load_resume_state(stopped.fit.checkpoint)
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 6)  # mid-epoch
    resumed = run_training(cfg_for(tmp_path, tiny_data, "run", model), resume_state=state)
    assert resumed.run_dir == stopped.run_dir
    assert_same_run(reference, resumed)


def test_crash_after_periodic_checkpoint_then_cli_resume_is_exact(tmp_path, tiny_data):
    reference = run_training(cfg_for(tmp_path, tiny_data, "ref", "gcn"))

    def crash(step):
        if step == 7:  # dies without saving anything: only the step-5 checkpoint survives
            raise StopTraining

    with pytest.raises(StopTraining):
        # the interrupted run loads in a background thread, the reference in the main process: same batches
        run_training(
            cfg_for(tmp_path, tiny_data, "run", "gcn", "train.save_every_n_steps=5", "data.num_workers=2"),
            stop_hook=crash,
        )
    ckpt = tmp_path / "run" / "checkpoints" / "last-step.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 5
    # resume through the CLI: the checkpoint's config is the base, nothing else needs repeating
    run_cli(train_cli.main, ["--ckpt_path", str(ckpt)])
    resumed_history = tmp_path / "run" / "metrics_history.json"
    assert metric_values(reference.history) == metric_values(resumed_history)
    ref_state, res_state = (
        final_state(reference),
        load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt"),
    )
    for key, value in ref_state["model"].items():
        assert torch.equal(torch.from_numpy(value), torch.from_numpy(res_state["model"][key])), key


def test_resume_auto_and_bad_checkpoint(tmp_path, tiny_data, capsys):
    run_training(cfg_for(tmp_path, tiny_data, "run", "egnn", "train.max_epochs=1"))
    run_cli(train_cli.main, ["--resume", "auto", "--output_dir", str(tmp_path / "run"), "--max_epochs", "2"])
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] == 2
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"truncated")
    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, ["--ckpt_path", str(bad)])
    assert exc.value.code == 2 and "bad.ckpt" in capsys.readouterr().err
