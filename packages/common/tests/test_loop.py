"""The shared training loop, on common's NumPy regression task: counters, accumulation, hooks, the ready
callbacks against hand-computed expectations, and exact resume after SIGKILL / SIGINT / SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from common.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, build_callbacks
from common.checkpoint import load_checkpoint
from common.demo import DemoConfig, RegressionTask, train
from common.errors import CheckpointError, ConfigError
from common.loop import Loop, Plan, Task, fit
from common.resume import read_training_checkpoint
from common.schedules import ScheduleConfig, StepSchedule
from common.testing import CrashAt, SimulatedCrash, assert_trees_equal, history_series


def small(tmp_path, name: str = "run", **kw) -> DemoConfig:
    base = DemoConfig(samples=96, epochs=3, batch_size=8, save_every_steps=1, dropout=0.2)
    return replace(base, output_dir=str(tmp_path / name), **kw)


# -- accumulation ------------------------------------------------------------------------------------------


def one_step_weights(cfg: DemoConfig) -> np.ndarray:
    np.random.seed(0)
    task = RegressionTask(cfg)
    fit(task, Plan(max_epochs=1, max_steps=1, accumulate=cfg.accumulate, log_every_n_steps=0))
    return task.w


def test_k_micro_batches_give_the_gradient_of_one_batch_k_times_larger(tmp_path):
    big = one_step_weights(small(tmp_path, dropout=0.0, batch_size=32, accumulate=1))
    accumulated = one_step_weights(small(tmp_path, dropout=0.0, batch_size=8, accumulate=4))
    np.testing.assert_allclose(accumulated, big, rtol=1e-12, atol=1e-14)


class Scales(Task):
    """Records the loss scale of every micro-batch; 5 micro-batches per epoch."""

    def __init__(self):
        self.scales, self.steps = [], 0

    def num_batches(self, epoch):
        return 5

    def batches(self, epoch, start):
        return range(start, 5)

    def micro_step(self, batch, scale):
        self.scales.append(scale)
        return {"loss": float(batch)}

    def optimizer_step(self):
        self.steps += 1
        return None

    def validate(self):
        return {"loss": 0.0}

    def state_dict(self):
        return {}


def test_the_short_last_step_of_an_epoch_averages_its_own_micro_batches():
    task = Scales()
    result = fit(task, Plan(max_epochs=2, accumulate=2, log_every_n_steps=0))
    assert task.scales == [0.5, 0.5, 0.5, 0.5, 1.0] * 2  # steps of 2, 2, 1 micro-batches
    assert (task.steps, result.global_step, result.epochs_done) == (6, 6, 2)
    assert result.metrics["train/loss"] == pytest.approx(2.0)  # mean of 0..4 over micro-batches


# -- hooks and ready callbacks ----------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("on_") and name != "on_log":
            calls = object.__getattribute__(self, "calls")

            def record(loop, *args):
                calls.append((name, loop.pos.epoch, loop.pos.step))
                return attr(loop, *args)

            return record
        return attr


def test_a_user_callback_receives_every_hook_in_order(tmp_path):
    recorder = Recorder()
    cfg = small(tmp_path, epochs=2, samples=32, batch_size=16, save_every_steps=0, schedule=ScheduleConfig())
    train(cfg, callbacks=[recorder])
    names = [c[0] for c in recorder.calls]
    epoch = ["on_train_epoch_start", "on_train_batch_end", "on_train_batch_end", "on_validation_end"]
    # on_save_checkpoint comes from inside ModelCheckpoint's on_train_epoch_end, after the other callbacks'
    expected = ["on_fit_start", *epoch, "on_train_epoch_end", "on_save_checkpoint"]
    expected += [*epoch, "on_train_epoch_end", "on_save_checkpoint", "on_fit_end"]
    assert names == expected, names
    assert recorder.calls[2] == ("on_train_batch_end", 0, 1)  # after the first optimizer step
    assert recorder.calls[-1] == ("on_fit_end", 2, 4)


class Scripted(Task):
    """A task whose validation returns a fixed sequence: one optimizer step per epoch."""

    def __init__(self, values):
        self.values, self.epoch = list(values), 0

    def num_batches(self, epoch):
        return 1

    def batches(self, epoch, start):
        self.epoch = epoch
        return range(start, 1)

    def micro_step(self, batch, scale):
        return {"loss": 1.0}

    def optimizer_step(self):
        return 1.0

    def validate(self):
        return {"loss": self.values[self.epoch]}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_early_stopping_stops_after_patience_validations_without_improvement():
    # best 1.0 at epoch 2; 0.995 does not beat it by min_delta 0.01; patience 2 -> stop after epoch 4
    stopper = EarlyStopping("val/loss", patience=2, min_delta=0.01)
    result = fit(Scripted([2.0, 1.0, 0.995, 1.5, 0.1, 0.1]), Plan(max_epochs=6), callbacks=[stopper])
    assert (result.epochs_done, result.stopped_early) == (4, True)
    assert stopper.best_score == 1.0 and stopper.wait_count == 2
    assert "early stopping" in result.stop_reason


def test_model_checkpoint_keeps_the_top_2_and_the_last(tmp_path):
    saver = ModelCheckpoint(
        tmp_path, filename="best-{epoch}-{val_loss:.1f}.ckpt", monitor="val/loss", save_top_k=2
    )
    result = fit(Scripted([5.0, 3.0, 4.0, 1.0, float("nan"), 2.0]), Plan(max_epochs=6), callbacks=[saver])
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["best-4-1.0.ckpt", "best-6-2.0.ckpt", "last.ckpt"]
    assert [p.name for p in saver.kept] == ["best-4-1.0.ckpt", "best-6-2.0.ckpt"]
    assert result.best_checkpoint == tmp_path / "best-4-1.0.ckpt"
    assert load_checkpoint(tmp_path / "best-4-1.0.ckpt")["global_step"] == 4


class Logged(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, loop, metrics):
        self.rows.append((loop.pos.step, dict(metrics)))


def test_learning_rate_monitor_logs_the_lr_each_step_trained_with():
    rows = Logged()
    schedule = StepSchedule([1.0], step_size=2, gamma=0.5)
    plan = Plan(max_epochs=5, log_every_n_steps=1, schedule_interval="step")
    fit(Scripted([1.0] * 5), plan, callbacks=[LearningRateMonitor(), rows], schedule=schedule)
    lrs = [(step, row["lr"]) for step, row in rows.rows if "lr" in row]
    assert lrs == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, 0.25)]


def test_learning_rate_monitor_per_epoch_logs_at_each_epoch_start():
    rows = Logged()
    schedule = StepSchedule([0.1, 0.2], step_size=1, gamma=0.1)
    fit(
        Scripted([1.0] * 3),
        Plan(max_epochs=3),
        callbacks=[LearningRateMonitor(names=["a", "b"]), rows],
        schedule=schedule,
    )
    lrs = [(step, row) for step, row in rows.rows if "lr" in row]
    assert [s for s, _ in lrs] == [0, 1, 2]
    assert [r["lr/b"] for _, r in lrs] == pytest.approx([0.2, 0.02, 0.002])
    assert [r["lr"] for _, r in lrs] == [r["lr/a"] for _, r in lrs]


def test_callbacks_from_config_and_clear_errors():
    built = build_callbacks(
        ["LearningRateMonitor", {"class_path": "common.testing.CrashAt", "init_args": {"step": 3}}]
    )
    assert isinstance(built[0], LearningRateMonitor) and isinstance(built[1], CrashAt)
    with pytest.raises(ConfigError, match="not a subclass"):
        build_callbacks(["common.loop.Plan"])
    with pytest.raises(ConfigError, match="unknown keys"):
        build_callbacks([{"class_path": "ProgressBar", "args": {}}])
    with pytest.raises(ConfigError, match="lacks"):
        Loop(Scripted([1.0]), Plan(), callbacks=[object()])


# -- exact resume -----------------------------------------------------------------------------------------


def final_state(run_dir):
    return load_checkpoint(run_dir / "checkpoints/last.npz")


def assert_same_run(reference, resumed):
    assert_trees_equal(final_state(reference), final_state(resumed), skip=("config", "manager"))
    assert history_series(reference / "metrics_history.json") == history_series(
        resumed / "metrics_history.json"
    )


def test_an_in_process_crash_and_resume_match_an_uninterrupted_run(tmp_path):
    train(small(tmp_path, "reference", accumulate=2))
    crashed = small(tmp_path, "crashed", accumulate=2)
    with pytest.raises(SimulatedCrash):
        train(crashed, callbacks=[CrashAt(7)])
    train(crashed, resume=tmp_path / "crashed/checkpoints/last_step.npz")
    assert_same_run(tmp_path / "reference", tmp_path / "crashed")


def demo_cli(tmp_path, name, *extra):
    command = [sys.executable, "-m", "common.demo", "--output-dir", str(tmp_path / name)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    overrides = [
        "samples=96",
        "epochs=3",
        "batch_size=8",
        "save_every_steps=1",
        "dropout=0.2",
        "accumulate=2",
    ]
    return subprocess.run(
        [*command, *overrides, *extra], env=env, capture_output=True, text=True, timeout=120
    )


def test_sigkill_at_three_random_steps_then_resume_ends_bit_identical(tmp_path):
    reference = demo_cli(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr
    total = 3 * 96 // 16  # optimizer steps of the whole run
    kills = sorted(random.Random(1).sample(range(2, total), 3))
    for i, step in enumerate(kills):
        kill = f"callbacks=[{{class_path: common.testing.KillAt, init_args: {{step: {step}}}}}]"
        resume = ["--resume", "last"] if i else []
        killed = demo_cli(tmp_path, "killed", *resume, kill)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = demo_cli(tmp_path, "killed", "--resume", "last", "callbacks=[]")
    assert finished.returncode == 0, finished.stderr
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_its_number(tmp_path, name, code):
    stop = f"callbacks=[{{class_path: common.testing.SignalAt, init_args: {{step: 5, signal: {name}}}}}]"
    stopped = demo_cli(tmp_path, "run", stop)
    assert stopped.returncode == code, stopped.stderr
    assert "--resume" in stopped.stderr and f"received {name}" in stopped.stderr
    assert load_checkpoint(tmp_path / "run/checkpoints/last_step.npz")["global_step"] == 5
    resumed = demo_cli(tmp_path, "run", "--resume", "last", "callbacks=[]")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch 1, batch 10, step 5" in resumed.stderr


def test_resuming_on_another_number_of_processes_only_at_an_epoch_boundary(tmp_path, monkeypatch):
    cfg = small(tmp_path, epochs=2, save_every_steps=2)
    with pytest.raises(SimulatedCrash):
        train(cfg, callbacks=[CrashAt(3)])
    mid_epoch = read_training_checkpoint(tmp_path / "run/checkpoints/last_step.npz")
    assert mid_epoch["loop"]["world_size"] == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # as if launched on two processes
    with pytest.raises(CheckpointError, match="Resume it with 1 process"):
        train(cfg, resume=mid_epoch)
    monkeypatch.delenv("WORLD_SIZE")
    train(cfg, resume=mid_epoch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    end_of_epoch = read_training_checkpoint(tmp_path / "run/checkpoints/last.npz")  # may change the count
    assert train(replace(cfg, epochs=3), resume=end_of_epoch).epochs_done == 3
