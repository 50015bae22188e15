"""Training on the shared loop: outputs, metric names, accumulation, exact resume after a crash / SIGKILL /
signal, the CLIs."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from mlx.utils import tree_flatten

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.errors import NonFiniteError
from common.seeding import seed_everything
from common.testing import CrashAt, SimulatedCrash, assert_trees_equal, history_series
from dtgcnn import evaluate as evaluate_cli
from dtgcnn import profile as profile_cli
from dtgcnn import train as train_cli
from dtgcnn import visualize as visualize_cli
from dtgcnn.checkpoints import load_from_checkpoint
from dtgcnn.data import make_batch
from dtgcnn.trainer import DTGCNNTask, load_splits, train


def history_values(run_dir):
    """{metric: [(step, value), ...]} without wall-clock times and system/ readings."""
    return history_series(run_dir / "metrics_history.json")


def test_short_training_run_learns_and_writes_the_run_outputs(tiny_data, tiny_config, tmp_path):
    cfg = tiny_config(num_epochs=3, jit_compile=True, plot_every=3)
    result = train(cfg, tiny_data, tmp_path / "run")
    hist = history_values(tmp_path / "run")
    losses = [v for _, v in hist["train/loss"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # 24 meshes, P x K = 8: 3 optimizer steps per epoch; epoch rows at the epoch's last step
    assert (result.epochs_done, result.global_step) == (3, 9)
    assert [s for s, _ in hist["train/loss"]] == [3, 6, 9] == [s for s, _ in hist["val/loss"]]
    assert [s for s, _ in hist["train/loss_step"]] == list(range(1, 10))  # log_interval=1
    assert [v for _, v in hist["epoch"]] == [1.0, 2.0, 3.0]
    run = tmp_path / "run"
    for rel in (
        "checkpoints/best_model.npz",
        "checkpoints/checkpoint_epoch_0003.npz",
        "checkpoints/last.npz",
        "plots/loss_distribution.png",
        "plots/training_curves_epoch_0003.png",
        "config.yaml",
        "test_metrics.json",
    ):
        assert (run / rel).is_file(), rel
    for key in (
        "val/recall_at_1",
        "val/roc_auc",
        "train/grad_norm",
        "train/grad_norm_step",
        "train/triplet_accuracy",
        "train/hard_negative_ratio",
        "train/embedding_spread",
        "val/mean_negative_distance",
        "lr",
        "test/recall_at_1",
    ):
        assert key in hist, key
    system = json.loads((run / "metrics_history.json").read_text())["metrics"]
    assert {"system/epoch_time_s", "system/rss_peak_mb"} <= system.keys()
    assert (
        result.run_dir == run.resolve()
        and result.best_checkpoint == run.resolve() / "checkpoints/best_model.npz"
    )
    assert result.test is not None and 0 <= result.test["recall_at_1"] <= 1
    assert json.loads((run / "test_metrics.json").read_text()) == pytest.approx(result.test)
    model, cfg_back = load_from_checkpoint(result.best_checkpoint, map_location="cpu")
    assert not model.training and cfg_back == cfg


def test_a_crash_and_resume_match_an_uninterrupted_run(tiny_data, tiny_config, tmp_path):
    """Dropout, augmentation and a short last step (3 micro-batches, 2 per step) in every epoch."""
    cfg = tiny_config(num_epochs=2, plot_every=0, gradient_accumulation_steps=2, checkpoint_every_steps=1)
    full = train(cfg, tiny_data, tmp_path / "full")
    with pytest.raises(SimulatedCrash):
        train(cfg, tiny_data, tmp_path / "part", callbacks=[CrashAt(4)])  # the short last step of epoch 2
    step_ckpt = (
        tmp_path / "part" / "checkpoints" / "last_step.npz"
    )  # written after step 3, as a crash leaves it
    state = load_checkpoint(step_ckpt)
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 3)
    resumed = train(cfg, tiny_data, tmp_path / "part", resume=step_ckpt)
    assert resumed.global_step == full.global_step == 4
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.npz")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.npz")
    assert_trees_equal(a, b, skip=("config", "manager"))
    assert history_values(tmp_path / "full") == history_values(tmp_path / "part")


def accumulated_gradients(cfg, splits, batches):
    """The pending gradient sum and the updated weights after one optimizer step over `batches`."""
    seed_everything(cfg.seed)
    task = DTGCNNTask(cfg, splits)
    task.model.eval()  # BatchNorm on running statistics, no dropout: per-sample terms only
    for i, (x, y) in enumerate(batches):
        task.micro_step((i, x, y), 1.0 / len(batches))
    pending = {k: np.array(v) for k, v in tree_flatten(task.stepper.pending)}
    task.optimizer_step()
    return pending, {k: np.array(v) for k, v in tree_flatten(task.model.trainable_parameters())}


@pytest.mark.parametrize("jit", [False, True])
def test_k_micro_batches_give_the_gradients_of_one_batch_k_times_larger(tiny_data, tiny_config, jit):
    """With the cross-entropy only (triplet_weight 0: the triplet loss mines across the whole batch) and the
    model in eval mode (BatchNorm uses running statistics instead of batch statistics, dropout is off), the
    loss of a batch is the mean of per-sample terms. So 4 micro-batches of 2 with scale 1/4 give the mean
    over all 8 samples: the gradients (and the update) of one batch of 8, up to float rounding."""
    cfg = tiny_config(triplet_weight=0.0, classification_weight=1.0, jit_compile=jit, gradient_clip_val=0.0)
    splits = load_splits(cfg, tiny_data)
    x, y = make_batch(splits["train"], np.arange(0, 24, 3), None, 0, 0, 0)  # 8 meshes of 4 identities
    big_grads, big_weights = accumulated_gradients(cfg, splits, [(x, y)])
    small_grads, small_weights = accumulated_gradients(
        cfg, splits, [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    )
    assert big_grads.keys() == small_grads.keys()
    assert any(np.abs(g).max() > 1e-4 for g in big_grads.values())
    for name, g in big_grads.items():
        np.testing.assert_allclose(small_grads[name], g, rtol=1e-4, atol=1e-6, err_msg=name)
    for name, w in big_weights.items():
        np.testing.assert_allclose(small_weights[name], w, rtol=1e-4, atol=1e-6, err_msg=name)


# A tiny model on the tiny data: 3 micro-batches per epoch, 2 per optimizer step (a short last step), with
# dropout, augmentation, a per-step cosine schedule, mx.compile and a step checkpoint after every step.
TINY_RUN = [
    "num_vertices=48",
    "k=4",
    "edge_conv_dims=[8,8,16]",
    "fusion_dim=32",
    "hidden_dim=16",
    "embedding_dim=8",
    "dropout=0.1",
    "batch_size=8",
    "learning_rate=0.01",
    "num_epochs=3",
    "warmup_epochs=1",
    "gradient_accumulation_steps=2",
    "prefetch_batches=1",
    "log_interval=1",
    "plot_every=0",
    "checkpoint_every=1",
    "checkpoint_every_steps=1",
    "jit_compile=true",
    "seed=5",
]


def cli_run(tiny_data, run_dir, *extra):
    command = [
        sys.executable,
        "-m",
        "dtgcnn.train",
        "--data-dir",
        str(tiny_data),
        "--output-dir",
        str(run_dir),
    ]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([*command, *TINY_RUN, *extra], env=env, capture_output=True, text=True, timeout=180)


def callback(class_path: str, **init_args) -> str:
    args = ", ".join(f"{k}: {v}" for k, v in init_args.items())
    return f"callbacks=[{{class_path: {class_path}, init_args: {{{args}}}}}]"


def assert_same_run(reference, resumed):
    a = load_checkpoint(reference / "checkpoints" / "last.npz")
    b = load_checkpoint(resumed / "checkpoints" / "last.npz")
    assert_trees_equal(a, b, skip=("config", "manager"))  # weights, AdamW state, RNG, loop, schedule...
    assert history_values(reference) == history_values(resumed)


def test_sigkill_at_three_random_steps_then_resume_ends_bit_identical(tiny_data, tmp_path):
    reference = cli_run(tiny_data, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    total = 3 * 2  # optimizer steps: 3 epochs of 2
    kills = sorted(random.Random(7).sample(range(2, total), 3))  # after step 1 a checkpoint exists
    for i, step in enumerate(kills):
        resume = ["--resume", "last"] if i else []
        killed = cli_run(
            tiny_data, tmp_path / "killed", *resume, callback("common.testing.KillAt", step=step)
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = cli_run(tiny_data, tmp_path / "killed", "--resume", "last", "callbacks=[]")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resumed at epoch" in finished.stderr
    assert_same_run(tmp_path / "reference", tmp_path / "killed")
    assert json.loads((tmp_path / "killed/test_metrics.json").read_text()) == json.loads(
        (tmp_path / "reference/test_metrics.json").read_text()
    )


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_leaves_a_resumable_checkpoint_and_exits_128_plus_its_number(
    tiny_data, tmp_path, caplog, name, code
):
    run = tmp_path / "run"
    args = ["--data-dir", str(tiny_data), "--output-dir", str(run), *TINY_RUN, "jit_compile=false"]
    with pytest.raises(SystemExit) as stopped:
        run_cli(train_cli.main, [*args, callback("common.testing.SignalAt", step=3, signal=name)])
    assert stopped.value.code == code
    state = load_checkpoint(run / "checkpoints" / "last_step.npz")
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 2)
    hint = next(r.getMessage() for r in caplog.records if f"received {name}" in r.getMessage())
    assert f"resume with: python -m dtgcnn.train --data-dir {tiny_data.resolve()} --resume " in hint
    assert not (run / "test_metrics.json").exists()
    # the printed command (its options) resumes the run; config and run folder come from the checkpoint
    printed = hint.split("resume with: python -m dtgcnn.train ")[1].split()
    run_cli(train_cli.main, [*printed, "callbacks=[]"])
    assert load_checkpoint(run / "checkpoints" / "last.npz")["global_step"] == 6
    assert (run / "test_metrics.json").is_file()


def test_stop_after_steps_pauses_the_run_and_resume_last_finishes_it(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--data-dir", str(tiny_data), "--output-dir", str(run), *TINY_RUN, "jit_compile=false"]
    run_cli(train_cli.main, [*args, "--stop-after-steps", "3"])
    assert "reached max_steps=3: resume with" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "last_step.npz")["global_step"] == 3
    assert not (run / "test_metrics.json").exists()
    run_cli(train_cli.main, ["--output-dir", str(run), "--resume", "last"])
    assert load_checkpoint(run / "checkpoints" / "last.npz")["global_step"] == 6
    assert (run / "test_metrics.json").is_file()


def test_nan_loss_stops_without_a_checkpoint(tiny_data, tiny_config, tmp_path):
    with pytest.raises(NonFiniteError, match="offending batch is saved"):
        train(tiny_config(learning_rate=1e30, warmup_epochs=0), tiny_data, tmp_path / "run")
    assert list((tmp_path / "run" / "debug").glob("nonfinite_batch_step*.npz"))
    assert not list((tmp_path / "run" / "checkpoints").glob("*.npz"))


def test_cli_train_evaluate_visualize_profile(tiny_data, tmp_path):
    run = tmp_path / "cli"
    overrides = [
        "k=4",
        "edge_conv_dims=[8,8]",
        "fusion_dim=16",
        "hidden_dim=8",
        "embedding_dim=8",
        "batch_size=8",
        "num_epochs=1",
        "jit_compile=false",
        "plot_every=1",
    ]
    run_cli(
        train_cli.main,
        [
            "--data-dir",
            str(tiny_data),
            "--output-dir",
            str(run),
            "--config",
            "default_config",
            "--learning-rate",
            "0.003",
            "num_vertices=48",
            *overrides,
        ],
    )
    assert (run / "config.yaml").read_text().count("learning_rate: 0.003") == 1
    ckpt = run / "checkpoints" / "best_model.npz"
    out_json = tmp_path / "metrics.json"
    run_cli(
        evaluate_cli.main,
        [str(ckpt), "--data-dir", str(tiny_data), "--split", "test", "--output", str(out_json)],
    )
    metrics = json.loads(out_json.read_text())
    assert metrics["num_samples"] == 8 and {"recall_at_1", "roc_auc", "accuracy", "loss"} <= metrics.keys()
    run_cli(
        visualize_cli.main,
        [str(ckpt), "--data-dir", str(tiny_data), "--method", "tsne", "--output-dir", str(tmp_path / "viz")],
    )
    png = tmp_path / "viz" / "embeddings_tsne.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = tmp_path / "profile_report.txt"
    run_cli(
        profile_cli.main,
        ["--batch-size", "4", "--output", str(report), "--repeats", "1", "num_vertices=48", *overrides[:5]],
    )
    text = report.read_text()
    for field in ("forward", "backward", "samples/s", "peak memory", "parameters", "GFLOP"):
        assert field in text


def test_cli_bad_input_is_one_paragraph(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtgcnn.train",
            "--data-dir",
            str(tmp_path / "nope"),
            "--output-dir",
            str(tmp_path / "o"),
            "batch_sise=3",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "batch_size" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtgcnn.train",
            "--data-dir",
            str(tmp_path / "nope"),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_accumulation_and_precision(tiny_data, tiny_config, tmp_path, precision):
    """3 micro-batches per epoch with accumulate=3 make one optimizer step (global_step counts optimizer
    steps); bf16 compute keeps float32 weights."""
    cfg = tiny_config(num_epochs=1, gradient_accumulation_steps=3, precision=precision, plot_every=0)
    result = train(cfg, tiny_data, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz")
    assert result.global_step == 1 and int(state["optimizer"]["step"]) == 1
    assert state["model"]["fusion"]["weight"].dtype == np.float32
