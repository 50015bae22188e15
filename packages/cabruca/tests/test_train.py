"""Training on the shared loop end to end on tiny synthetic data: learning, gradient accumulation, exact
resume after SIGKILL / SIGINT / SIGTERM, progressive resume, trackers, device refusals, profiling,
evaluation."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from cabruca.engine import HISTORY_FILE, CabrucaTask, load_from_checkpoint
from cabruca.evaluate import evaluate_checkpoint
from cabruca.train import main, resume_plan, train
from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.devices import torch_device
from common.errors import DeviceError
from common.testing import assert_torch_loadable, assert_trees_equal, history_series

from .conftest import make_cfg


def history(run_dir):
    """{metric: [(step, value), ...]} without wall-clock-dependent series (speed, memory)."""
    return history_series(run_dir / HISTORY_FILE)


def test_short_run_learns_and_writes_the_package_outputs(tiny_data, tmp_path):
    cfg = make_cfg(
        tiny_data,
        tmp_path,
        **{
            "training.num_epochs": 3,
            "training.checkpoint_every_n_epochs": 2,
            "training.profile": True,
            "training.profile_batches": [1, 2],
        },
    )
    result = train(cfg)
    run = result.run_dir
    h = history(run)
    losses = [v for _, v in h["train/loss"]]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0]
    for part in ("semantic", "instance", "centre", "offset", "crown", "density"):
        assert f"train/{part}" in h and f"val/{part}" in h
    for m in (
        "val/mAP",
        "val/mAP_50",
        "val/mAP_75",
        "val/canopy_IoU",
        "val/tree_count_accuracy",
        "val/shade_distribution_error",
    ):
        assert m in h
    assert run.name.startswith("cabruca_light_")  # <experiment>_<YYYYMMDD_HHMMSS>
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"checkpoint_best.pth", "checkpoint_latest.pth", "checkpoint_epoch_2.pth"} <= names
    assert (run / "config.yaml").is_file() and (run / "plots" / "training_curves.png").is_file()
    assert (run / "profiler" / "trace.json").is_file() and "aten::" in (
        run / "profiler" / "summary.txt"
    ).read_text()
    report = json.loads(
        evaluate_checkpoint(
            run / "checkpoints" / "checkpoint_best.pth", tiny_data, out_dir=tmp_path / "eval", device="cpu"
        ).read_text()
    )
    assert {"mAP_50", "canopy_IoU", "shade_distribution_error", "loss/loss"} <= report["metrics"].keys()
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 4
    model, saved = load_from_checkpoint(run / "checkpoints" / "checkpoint_best.pth")
    assert not model.training and saved.data.tile_size == 64 and saved.training.num_epochs == 3
    for name in ("checkpoint_best.pth", "checkpoint_latest.pth"):  # weights-only and full files
        assert_torch_loadable(run / "checkpoints" / name, load_from_checkpoint, tmp_path)


# -- gradient accumulation -----------------------------------------------------------------------------------


def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(tiny_data, tmp_path):
    """3 micro-batches of 2 tiles, each backpropagated with the loop's scale 1/3, give the gradient of one
    batch of the same 6 tiles: the loss is scaled exactly once (an extra division by the accumulation steps
    shrank every accumulated gradient 3-fold).

    The equality needs a loss that is a mean over tiles of equal size, so the test switches off the two
    parts that are ratios over the whole batch (class-weighted cross-entropy and the offset L1 normalised by
    the batch's tree pixels), and puts both models in eval mode so BatchNorm normalises with its running
    statistics instead of the statistics of each batch."""
    loss = {"loss.semantic_class_weights": [], "loss.offset_weight": 0.0}
    micro = make_cfg(
        tiny_data, tmp_path, **loss, **{"data.batch_size": 2, "training.gradient_accumulation_steps": 3}
    )
    whole = make_cfg(tiny_data, tmp_path, **loss, **{"data.batch_size": 6})
    device = torch_device("cpu")
    accumulated, single = CabrucaTask(micro, device), CabrucaTask(whole, device)
    for task in (accumulated, single):
        task.model.eval()
    for batch in itertools.islice(accumulated.batches(0, 0), 3):
        accumulated.micro_step(batch, 1.0 / 3)
    single.micro_step(next(iter(single.batches(0, 0))), 1.0)
    grads = [
        (name, p.grad, q.grad)
        for (name, p), (_, q) in zip(
            accumulated.model.named_parameters(), single.model.named_parameters(), strict=True
        )
        if q.grad is not None
    ]
    assert len(grads) > 10 and all(float(g.abs().max()) > 0 for _, _, g in grads[-4:])
    for name, acc, one in grads:
        torch.testing.assert_close(acc, one, rtol=1e-4, atol=1e-5 * float(one.abs().max()), msg=name)


# -- exact resume after SIGKILL, SIGINT, SIGTERM ---------------------------------------------------------------

# The tiny run of the resume tests as command-line overrides: 12 tiles of 64 px in micro-batches of 2,
# 2 per optimizer step (3 steps per epoch), a checkpoint after every step.
RESUME_OVERRIDES = [
    "model.backbone=test_resnet",
    "model.fpn_channels=32",
    "model.head_channels=16",
    "data.tile_size=64",
    "data.tile_overlap=0",
    "data.batch_size=2",
    "data.num_workers=0",
    "training.num_epochs=3",
    "training.gradient_accumulation_steps=2",
    "training.save_every_n_steps=1",
    "training.log_every_n_steps=1",
    "tracking.tensorboard=false",
    "optimizer.lr=0.003",
]


def callbacks_override(class_path: str, **init_args) -> str:
    args = ", ".join(f"{k}: {v}" for k, v in init_args.items())
    return f"callbacks=[{{class_path: {class_path}, init_args: {{{args}}}}}]"


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
    """One torch thread (identical kernels in every process), and compiled bytecode cached in a scratch
    folder shared by the test's processes, so only the first one pays for compiling torch's modules."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pycache = tmp_path_factory.mktemp("pycache")
    return {**env, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPYCACHEPREFIX": str(pycache)}


def train_cli(env, *args):
    command = [sys.executable, "-m", "cabruca.train", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def only_run(output_dir):
    (run,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run


def assert_same_run(reference, resumed):
    """Bit-identical final state (weights, optimizer, schedule, callbacks, RNG states) and metric history."""
    latest = "checkpoints/checkpoint_latest.pth"
    assert_trees_equal(
        load_checkpoint(reference / latest), load_checkpoint(resumed / latest), skip=("config", "manager")
    )
    assert history_series(reference / HISTORY_FILE) == history_series(resumed / HISTORY_FILE)


def test_sigkill_at_three_random_steps_then_resume_ends_bit_identical(tiny_data, tmp_path, subprocess_env):
    """SIGKILL after 3 random optimizer steps (nothing can clean up; the step's own checkpoint is not yet
    written), each time resumed with `--resume last` and the run's saved config: the final weights,
    optimizer state, RNG states and the whole metric history equal those of an uninterrupted run."""
    base = ["--config", "training_config_light", "--device", "cpu", "--data-dir", str(tiny_data)]
    reference = train_cli(
        subprocess_env, *base, "--output-dir", str(tmp_path / "reference"), *RESUME_OVERRIDES
    )
    assert reference.returncode == 0, reference.stderr
    killed_dir = tmp_path / "killed"
    total = 3 * 3  # optimizer steps of the whole run
    kills = sorted(random.Random(7).sample(range(2, total), 3))
    for i, step in enumerate(kills):
        kill = callbacks_override("common.testing.KillAt", step=step)
        if i == 0:
            args = [*base, "--output-dir", str(killed_dir), *RESUME_OVERRIDES, kill]
        else:
            args = ["--resume", "last", "--output-dir", str(killed_dir), kill]
        killed = train_cli(subprocess_env, *args)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = train_cli(subprocess_env, "--resume", "last", "--output-dir", str(killed_dir), "callbacks=[]")
    assert finished.returncode == 0, finished.stderr
    assert "exact continuation" in finished.stderr
    assert_same_run(only_run(tmp_path / "reference"), only_run(killed_dir))


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_its_number(
    tiny_data, tmp_path, capsys, name, code
):
    """The signal finishes the current step, writes checkpoint_latest.pth, logs the resume command and
    exits 130 (SIGINT) / 143 (SIGTERM). `--resume last` rebuilds the run from its saved config (the data
    folder, the per-group learning rates) and trains it to the end in the same folder."""
    args = [
        "--config",
        "training_config_light",
        "--device",
        "cpu",
        "--data_dir",  # the underscore spellings are accepted too
        str(tiny_data),
        "--output_dir",
        str(tmp_path),
        *RESUME_OVERRIDES,
        "training.num_epochs=2",
        "training.save_every_n_steps=0",
        "optimizer.param_groups=[{name: backbone, lr: 0.001}]",
        callbacks_override("common.testing.SignalAt", step=4, signal=name),
    ]
    with pytest.raises(SystemExit) as exc:
        run_cli(main, args)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert f"received {name}" in err and "python -m cabruca.train --resume " in err
    run = only_run(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "checkpoint_latest.pth")["global_step"] == 4
    if name == "SIGTERM":
        return
    run_cli(main, ["--resume", "last", "--output-dir", str(tmp_path), "--print-config"])
    shown = capsys.readouterr().out
    assert f"data_dir: {tiny_data}" in shown and "name: backbone" in shown
    run_cli(main, ["--resume", "last", "--output-dir", str(tmp_path), "callbacks=[]"])
    assert "resumed at epoch 2, batch 2, step 4" in capsys.readouterr().err
    assert only_run(tmp_path) == run
    h = history_series(run / HISTORY_FILE)
    assert [s for s, _ in h["train/loss_step"]] == list(range(1, 7))
    assert {"lr/backbone", "lr/default", "epoch"} <= h.keys()
    assert [s for s, _ in h["val/loss"]] == [3, 6]


def test_progressive_resume_with_a_new_tile_size_warm_starts(tiny_data, tmp_path):
    stage1 = train(
        make_cfg(tiny_data, tmp_path, **{"training.num_epochs": 1, "experiment_name": "stage1_64"})
    )
    best = stage1.run_dir / "checkpoints" / "checkpoint_best.pth"
    state = load_checkpoint(best)
    cfg2 = make_cfg(
        tiny_data,
        tmp_path,
        **{
            "data.tile_size": 96,
            "experiment_name": "stage2_96",
            "optimizer.lr": 1e-4,
            "training.num_epochs": 1,
        },
    )
    mode, why = resume_plan(state, cfg2)
    assert mode == "weights" and "experiment_name" in why and "data.tile_size" in why
    # The warm-started model starts from stage 1's weights, with a fresh optimizer.
    task = CabrucaTask(cfg2, torch_device("cpu"), init_weights=state["model"])
    first = next(iter(task.model.state_dict().items()))
    assert np.array_equal(first[1].numpy(), state["model"][first[0]])
    assert task.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4) and len(task.train_set) == 3 * 4
    stage2 = train(cfg2, resume=str(best))
    assert stage2.run_dir != stage1.run_dir and stage2.run_dir.name.startswith("stage2_96_")
    # a fresh step counter: epoch 1 of the new run, 96 px tiles
    assert stage2.global_step == len(task.train_set) // 2
    # Same experiment and tile size: an exact continuation of the complete latest checkpoint, but a new
    # run from the weights-only best file (it cannot continue a run).
    same = make_cfg(tiny_data, tmp_path, experiment_name="stage1_64")
    latest = load_checkpoint(stage1.run_dir / "checkpoints" / "checkpoint_latest.pth")
    assert resume_plan(latest, same)[0] == "continue"
    mode, why = resume_plan(state, same)
    assert mode == "weights" and "weights only" in why


class FailingTracker:
    """A tracker whose backend breaks at the first metric (server gone, disk full...)."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        raise ConnectionError("tracking server went away")

    def log_artifact(self, path, name=None):
        pass

    def close(self):
        pass


def test_tracker_fan_out_survives_a_failing_tracker(tiny_data, tmp_path, monkeypatch, caplog):
    """--use-wandb whose backend fails while training, next to TensorBoard: the failure is reported once,
    TensorBoard (read back with its own event reader) and the JSON history stay complete."""
    monkeypatch.setattr("common.trackers.factory._wandb", lambda *args: FailingTracker())
    cfg = make_cfg(
        tiny_data,
        tmp_path,
        **{
            "tracking.tensorboard": True,
            "tracking.wandb": True,
            "training.num_epochs": 1,
            "training.max_steps_per_epoch": 3,
        },
    )
    with caplog.at_level(logging.WARNING):
        result = train(cfg)
    warnings = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(warnings) == 1
    h = history(result.run_dir)
    assert [s for s, _ in h["train/loss_step"]] == [1, 2, 3] and "val/mAP_50" in h
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("train/loss_step")}
    assert tb == pytest.approx(dict(h["train/loss_step"]))


def test_unavailable_devices_and_precisions_are_refused(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(
            main,
            [
                "--config",
                "configs/training_config_light.yaml",
                "--device",
                "mps",
                "--data-dir",
                str(tiny_data),
                "--output-dir",
                str(tmp_path),
            ],
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "mps" in err and "Traceback" not in err
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        train(make_cfg(tiny_data, tmp_path, **{"training.mixed_precision": True}))


def test_cli_overrides_and_print_config(capsys):
    run_cli(
        main,
        [
            "--config",
            "configs/training_config.yaml",
            "--lr",
            "0.001",
            "--batch-size",
            "8",
            "--epochs",
            "50",
            "--grad-accum",
            "4",
            "scheduler.type=onecycle",
            "--print-config",
        ],
    )
    out = capsys.readouterr().out
    assert "lr: 0.001" in out and "batch_size: 8" in out and "num_epochs: 50" in out
    assert "gradient_accumulation_steps: 4" in out and "type: onecycle" in out
    with pytest.raises(SystemExit):
        run_cli(main, ["--print-config", "training.num_epoch=3"])
    assert "training.num_epochs" in capsys.readouterr().err  # the closest valid key is suggested


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(
            main,
            [
                "--config",
                "training_config_light",
                "--device",
                "cpu",
                "--data-dir",
                str(tmp_path / "nope"),
                "--output-dir",
                str(tmp_path),
            ],
        )
    assert "does not exist" in capsys.readouterr().err


def test_demo_option_is_wired(monkeypatch, tmp_path):
    from cabruca import demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda cli, overrides, **kw: seen.update(cli=cli, **kw))
    run_cli(main, ["--demo", "--output-dir", str(tmp_path), "--device", "cpu"])
    assert seen["cli"] == {"output_dir": str(tmp_path), "device": "cpu"}
