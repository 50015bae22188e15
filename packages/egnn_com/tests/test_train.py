"""Training runs in-process on tiny data: loss falls, checkpoint names and top-1 retention, fast_dev_run,
precision options, CUDA warm-up leaves no trace, and the CLIs (train, evaluate, predict)."""

import json
import re

import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import run_cli
from common.config import load_config
from common.errors import DeviceError
from common.testing import assert_torch_loadable
from egnn_com import evaluate as evaluate_cli
from egnn_com import predict as predict_cli
from egnn_com import train as train_cli
from egnn_com.config import EgnnComConfig
from egnn_com.inference import load_from_checkpoint
from egnn_com.pipeline import run_training

TINY = [
    "data.batch_size=8",
    "data.num_workers=0",
    "model.hidden_dim=16",
    "model.num_layers=2",
    "logging.tensorboard=false",
    "train.save_every_n_steps=0",
    "optim.lr=0.01",
]


def tiny_cfg(tmp_path, data, *overrides):
    cfg = load_config(EgnnComConfig, overrides=[*TINY, *overrides])
    cfg.data.data_dir, cfg.train.output_dir = str(data), str(tmp_path / "run")
    return cfg


def history(path):
    return {
        name: [(p["step"], p["value"]) for p in points]
        for name, points in json.loads(path.read_text())["metrics"].items()
    }


def test_egnn_loss_falls_and_checkpoints_keep_their_names(tmp_path, tiny_data):
    out = run_training(tiny_cfg(tmp_path, tiny_data, "model.name=egnn", "train.max_epochs=4"))
    h = history(out.history)
    train_loss = [v for _, v in h["train/loss"]]
    assert len(train_loss) == 4 and train_loss[-1] < 0.5 * train_loss[0]
    for key in (
        "val/mae_x",
        "val/mse_z",
        "train/mae_y",
        "train/loss_step",
        "train/grad_norm_step",
        "lr",
        "epoch",
        "system/epoch_time_s",
        "system/data_wait_share",
    ):
        assert key in h, key
    assert [v for _, v in h["epoch"]] == [1.0, 2.0, 3.0, 4.0]  # epochs completed
    assert [s for s, _ in h["val/loss"]] == [4, 8, 12, 16]  # logged at the optimizer step of the epoch end
    # top-1 best by val/loss + last.ckpt; {epoch} in the name counts completed epochs (from 1)
    files = sorted(p.name for p in out.checkpoint_dir.iterdir())
    best = [f for f in files if f.startswith("best-model-")]
    val = [v for _, v in h["val/loss"]]
    best_epoch = min(range(len(val)), key=val.__getitem__) + 1
    improvements = sum(v < min(val[:i]) for i, v in enumerate(val) if i)
    assert improvements >= 1  # a newer best replaced an older one: only the top 1 is kept
    assert best == [f"best-model-{best_epoch:02d}-{val[best_epoch - 1]:.4e}.ckpt"] and "last.ckpt" in files
    assert out.best_checkpoint.name == best[0] and out.checkpoint == out.checkpoint_dir / "last.ckpt"
    state = load_checkpoint(out.checkpoint_dir / "last.ckpt")
    assert {"model", "optimizer", "schedule", "stepper", "rng", "config", "manager", "loop"} <= set(state)
    assert state["epoch"] == 4 and state["batch_in_epoch"] == 0 and state["global_step"] == 4 * 4
    assert (out.epochs_done, out.global_step, out.exit_code, out.interrupted) == (4, 16, 0, None)
    assert (out.run_dir / "config.yaml").exists() and (out.run_dir / "plots" / "training_curves.png").exists()
    assert list((out.run_dir / "logs").glob("training_*.log"))
    for ckpt in (out.checkpoint_dir / "last.ckpt", out.best_checkpoint):  # full and weights-only files
        assert_torch_loadable(ckpt, load_from_checkpoint, tmp_path)


def test_plateau_schedule_halves_lr(tmp_path, tiny_data):
    cfg = tiny_cfg(
        tmp_path,
        tiny_data,
        "train.max_epochs=3",
        "optim.schedule.patience=0",
        "optim.schedule.threshold=10.0",
    )  # no epoch can improve by 1000%: reduce every epoch
    h = history(run_training(cfg).history)
    lrs = sorted({v for _, v in h["lr"]}, reverse=True)
    assert lrs == pytest.approx([0.01, 0.005, 0.0025])


def test_fast_dev_run_writes_nothing(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data, "train.fast_dev_run=2", "model.name=gcn")
    out = run_training(cfg)
    assert out.run_dir is None and out.checkpoint_dir is None and not (tmp_path / "run").exists()
    assert out.metrics["train/loss"] > 0 and len(out.phases) == 8 and out.global_step == 2


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_bf16_precisions_run_on_cpu(tmp_path, tiny_data, precision):
    out = run_training(
        tiny_cfg(
            tmp_path,
            tiny_data,
            f"train.precision={precision}",
            "train.fast_dev_run=2",
            "model.name=egnn",
            "train.device=cpu",
        )
    )
    assert torch.isfinite(torch.tensor(out.metrics["val/loss"]))


def test_16_mixed_is_refused_clearly_on_cpu(tmp_path, tiny_data, capsys):
    cfg = tiny_cfg(
        tmp_path, tiny_data, "train.precision=16-mixed", "train.device=cpu", "train.fast_dev_run=1"
    )
    with pytest.raises(DeviceError, match="16-mixed"):
        run_training(cfg)
    with pytest.raises(SystemExit) as exc:  # the documented GPU command line, on a CPU-only machine
        run_cli(
            train_cli.main,
            [
                "--precision",
                "16-mixed",
                "--use_wandb",
                "--max_epochs",
                "200",
                "--data_dir",
                str(tiny_data),
                "--device",
                "cpu",
                "--output_dir",
                str(tmp_path / "p"),
            ],
        )
    assert exc.value.code == 2 and not (tmp_path / "p").exists()  # refused before any folder is made
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bf16-mixed" in err and "Traceback" not in err


def test_documented_command_lines_both_spellings(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ["--num_workers", "0", "--hidden_dim", "16", "--num_layers", "2"]
    run_cli(train_cli.main, ["--fast_dev_run", "3", "--debug", "--data_dir", str(tiny_data), *small])
    run_cli(
        train_cli.main,
        ["--fast-dev-run", "2", "--data-dir", str(tiny_data), "--num-workers", "0", "--batch-size", "8"],
    )
    assert not (tmp_path / "runs").exists()  # fast_dev_run: no run folder
    err = capsys.readouterr().err
    assert "startup phases:" in err and "dataset_loading" in err and "model_compilation" in err
    assert "load graph_00000.pt: ok" in err and "parameters" in err and "batch_size=16 num_workers=0" in err
    assert "library imports" in err and "batch 1: data" in err
    # the documented custom-configuration line (one short epoch)
    run_cli(
        train_cli.main,
        [
            "--data_dir",
            str(tiny_data),
            "--checkpoint_dir",
            "experiments/run_1",
            "--batch_size",
            "32",
            "--hidden_dim",
            "256",
            "--wandb_name",
            "large_model_experiment",
            "--num_workers",
            "0",
            "train.max_epochs=1",
            "logging.tensorboard=false",
        ],
    )
    names = [p.name for p in (tmp_path / "experiments" / "run_1").iterdir()]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "checkpoints").exists() and (run_dir / "metrics_history.json").exists()
    assert "last.ckpt" in names and any(
        re.fullmatch(r"best-model-01-\d\.\d{4}e[-+]\d\d\.ckpt", n) for n in names
    )


def test_print_config_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(
        train_cli.main, ["--print_config", "--model", "egnn", "--lr", "1e-3", "optim.schedule.patience=3"]
    )
    out = capsys.readouterr().out
    assert "name: egnn" in out and "patience: 3" in out and "factor: 0.5" in out
    for args, needle in [
        (["optim.lrr=1"], "optim.lr"),
        (["--data_dir", str(tmp_path / "nope")], "does not exist"),
        (["stray"], "unexpected argument"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(train_cli.main, args)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start


def test_wandb_tags_like_the_seed(capsys):
    run_cli(train_cli.main, ["--print_config", "--wandb_tags", "tag1", "tag2", "--wandb_name", "x"])
    out = capsys.readouterr().out
    tags = out[out.index("wandb_tags:") :].splitlines()[1:3]
    assert [t.strip() for t in tags] == ["- tag1", "- tag2"]


def test_evaluate_and_predict_clis(tmp_path, tiny_data, capsys):
    out = run_training(tiny_cfg(tmp_path, tiny_data, "model.name=egnn", "train.max_epochs=1"))
    last = out.checkpoint_dir / "last.ckpt"
    model, cfg = load_from_checkpoint(last)
    assert not model.training and cfg.model.name == "egnn" and model.in_features == 5
    state = load_checkpoint(last)
    del state["num_features"]  # a checkpoint that does not record the width: read from the weights
    save_checkpoint(tmp_path / "old.ckpt", state)
    assert load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu")[0].in_features == 5
    run_cli(evaluate_cli.main, ["--checkpoint", str(last), "--output", str(tmp_path / "m.json")])
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["split"] == "val" and result["num_graphs"] == 8
    # oracle: the training run's own validation metrics for the same weights
    assert result["metrics"]["mae_z"] == pytest.approx(out.metrics["val/mae_z"], rel=1e-4)
    capsys.readouterr()
    unlabelled = tmp_path / "new.pt"  # a graph without target: predicted, no error columns
    raw = torch.load(tiny_data / "graph_00001.pt", weights_only=True)
    torch.save({k: v for k, v in raw.items() if k != "y"}, unlabelled)
    run_cli(predict_cli.main, ["--checkpoint", str(last), str(tiny_data / "graph_00000.pt"), str(unlabelled)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,num_nodes,pred_x") and len(lines) == 3
    first, second = lines[1].split(","), lines[2].split(",")
    assert first[-1] != "" and second[0].endswith("new.pt") and second[-4:] == ["", "", "", ""]


def test_accumulation_and_user_callbacks_from_the_config(tmp_path, tiny_data):
    cfg = tiny_cfg(
        tmp_path,
        tiny_data,
        "train.max_epochs=5",
        "optim.accumulate_grad_batches=3",  # 4 batches per epoch: steps of 3 and 1 micro-batches
        # nothing improves by 1e9: early stopping ends the run after the second validation
        "callbacks=[{class_path: EarlyStopping, init_args: {monitor: val/loss, patience: 1, min_delta: 1.0e+9}}]",
    )
    out = run_training(cfg)
    assert (out.epochs_done, out.global_step, out.stopped_early) == (2, 4, True)
    assert "early stopping" in out.stop_reason and out.exit_code == 0
    assert load_checkpoint(out.checkpoint_dir / "last.ckpt")["callbacks"]["EarlyStopping"]["wait"] == 1


def test_tensorboard_events_hold_the_epoch_metrics(tmp_path, tiny_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run_training(tiny_cfg(tmp_path, tiny_data, "logging.tensorboard=true", "train.max_epochs=2"))
    acc = EventAccumulator(str(out.run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val/loss", "train/mae_x", "lr", "train/loss_step"} <= set(tags)
    tb = [e.value for e in acc.Scalars("val/loss")]
    assert tb == pytest.approx([v for _, v in history(out.history)["val/loss"]], rel=1e-6)


@pytest.mark.slow
def test_wandb_offline_run(tmp_path, tiny_data, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg(
        tmp_path,
        tiny_data,
        "logging.use_wandb=true",
        "train.max_epochs=1",
        "logging.wandb_name=tiny",
        "logging.wandb_tags=[a,b]",
    )
    out = run_training(cfg)
    assert list((out.run_dir / "wandb").glob("offline-run-*"))


def test_demo_cli_compares_models(tmp_path, capsys, monkeypatch):
    from egnn_com import demo

    monkeypatch.setattr(demo, "DEMO_GRAPHS", 40)  # the real demo uses 200; same code path, fewer batches
    run_cli(train_cli.main, ["--demo", "--output_dir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert "egnn MAE =" in out and "python -m egnn_com.evaluate --checkpoint" in out
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^\s+(gcn|egnn)\s+([\d.]+)\s", out, re.MULTILINE)}
    assert rows["egnn"] < 0.5 * rows["gcn"]
    assert len(list((tmp_path / "demo").glob("egnn_*/checkpoints/best-model-*.ckpt"))) == 1
