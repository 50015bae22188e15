"""Training loop end to end on tiny synthetic data: learning, exact resume, progressive resume, trackers,
device refusals, profiling, evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cabruca import train as train_mod
from cabruca.engine import Trainer
from cabruca.evaluate import evaluate_checkpoint
from cabruca.train import main, resume_plan, train
from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.devices import torch_device
from common.errors import DeviceError
from common.runs import RunFolder
from common.trackers import JsonHistory, Trackers

from .conftest import make_cfg


def history(run_dir):
    """{metric: [(step, value), ...]} without wall-clock-dependent series (speed, memory)."""
    data = json.loads((run_dir / "training_history.json").read_text())["metrics"]
    return {k: [(e["step"], e["value"]) for e in v] for k, v in data.items() if not k.startswith("system/")}


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_short_run_learns_and_writes_the_seed_outputs(tiny_data, tmp_path):
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


RESUME_CLI = {"training.max_steps_per_epoch": 3}


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    """The uninterrupted reference run (2 epochs x 3 steps) the resume tests compare against."""
    return train(make_cfg(tiny_data, tmp_path_factory.mktemp("full"), **RESUME_CLI))


@pytest.mark.parametrize("accum", [1, 2])
def test_exact_resume_after_a_stop_mid_epoch(tiny_data, tmp_path, accum, full_run):
    """Stop after step 2 of 3 in epoch 1 (as SIGINT would), resume: same weights and history as one run."""
    cli = {
        "training.gradient_accumulation_steps": accum,
        "data.batch_size": 2 if accum == 1 else 1,
        **RESUME_CLI,
    }
    full = full_run if accum == 1 else train(make_cfg(tiny_data, tmp_path / "a", **cli))
    stopped = train(make_cfg(tiny_data, tmp_path / "b", **cli), stop_after_steps=2)
    assert stopped.interrupted and stopped.global_step == 2
    ckpt = stopped.run_dir / "checkpoints" / "checkpoint_latest.pth"
    resumed = train(make_cfg(tiny_data, tmp_path / "b", **cli), resume=str(ckpt))
    assert resumed.run_dir == stopped.run_dir and resumed.global_step == full.global_step == 6
    assert_same_weights(weights(full.run_dir / "checkpoints" / "checkpoint_latest.pth"), weights(ckpt))
    assert history(full.run_dir) == history(resumed.run_dir)


def test_exact_resume_after_a_crash_from_the_periodic_checkpoint(tiny_data, tmp_path, monkeypatch, full_run):
    """A crash in step 5 (stand-in for SIGKILL) leaves the step-4 periodic checkpoint; resuming from it
    replays steps 5.. and ends identical to the uninterrupted run (periodic saving changes no result)."""
    cli = {"training.save_every_n_steps": 2, **RESUME_CLI}
    full = full_run
    real = Trainer.micro_step

    def crash_in_step_5(self, batch, micro):
        if self.global_step == 4:
            raise RuntimeError("simulated crash")
        return real(self, batch, micro)

    monkeypatch.setattr(Trainer, "micro_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(tiny_data, tmp_path / "b", **cli))
    monkeypatch.setattr(Trainer, "micro_step", real)
    run = next((tmp_path / "b").iterdir())
    ckpt = run / "checkpoints" / "checkpoint_latest.pth"
    assert load_checkpoint(ckpt)["global_step"] == 4
    resumed = train(make_cfg(tiny_data, tmp_path / "b", **cli), resume=str(ckpt))
    assert_same_weights(weights(full.run_dir / "checkpoints" / "checkpoint_latest.pth"), weights(ckpt))
    assert history(full.run_dir) == history(resumed.run_dir)


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
    # The warm-started model starts from stage 1's weights, with a fresh optimizer and step counter.
    run = RunFolder(tmp_path / "probe")
    trainer = Trainer(
        cfg2,
        run,
        torch_device("cpu"),
        trackers=Trackers([JsonHistory(run.path("h.json"))]),
        init_weights=state["model"],
    )
    first = next(iter(trainer.model.state_dict().items()))
    assert np.array_equal(first[1].numpy(), state["model"][first[0]]) and trainer.global_step == 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4) and len(trainer.train_set) == 3 * 4
    stage2 = train(cfg2, resume=str(best))
    assert stage2.run_dir != stage1.run_dir and stage2.run_dir.name.startswith("stage2_96_")
    assert stage2.global_step == len(trainer.train_set) // 2  # epoch 1 of the new run, 96 px tiles
    # Same experiment and tile size: an exact continuation instead.
    assert resume_plan(state, make_cfg(tiny_data, tmp_path, experiment_name="stage1_64"))[0] == "continue"


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
    seen = {}
    monkeypatch.setattr(
        train_mod, "run_demo", lambda out, device, overrides: seen.update(out=out, device=device)
    )
    run_cli(main, ["--demo", "--output-dir", str(tmp_path), "--device", "cpu"])
    assert seen == {"out": str(tmp_path), "device": "cpu"}
