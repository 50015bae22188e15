import json
import subprocess
import sys

import numpy as np
import pytest

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.errors import NonFiniteError
from dtgcnn import evaluate as evaluate_cli
from dtgcnn import profile as profile_cli
from dtgcnn import train as train_cli
from dtgcnn import visualize as visualize_cli
from dtgcnn.trainer import train


def history_values(run_dir):
    """{metric: [(step, value), ...]} without wall-clock times."""
    data = json.loads((run_dir / "metrics_history.json").read_text())
    return {k: [(p["step"], p["value"]) for p in v] for k, v in data["metrics"].items()}


def test_short_training_run_learns_and_writes_the_seed_outputs(tiny_data, tiny_config, tmp_path):
    cfg = tiny_config(num_epochs=3, jit_compile=True, plot_every=3)
    result = train(cfg, tiny_data, tmp_path / "run")
    hist = history_values(tmp_path / "run")
    losses = [v for _, v in hist["train/loss"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    run = tmp_path / "run"
    for rel in (
        "checkpoints/best_model.npz",
        "checkpoints/checkpoint_epoch_0003.npz",
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
        "train/triplet_accuracy",
        "train/hard_negative_ratio",
        "train/embedding_spread",
        "val/mean_negative_distance",
    ):
        assert key in hist, key
    assert result.test is not None and 0 <= result.test["recall_at_1"] <= 1


def test_interrupted_and_resumed_equals_uninterrupted(tiny_data, tiny_config, tmp_path):
    cfg = tiny_config(num_epochs=2, plot_every=0)
    full = train(cfg, tiny_data, tmp_path / "full")
    # 3 batches per epoch: stop after step 4 = mid-epoch 2, then resume from the step checkpoint.
    part = train(cfg, tiny_data, tmp_path / "part", stop_after_steps=4)
    assert part.interrupted and part.global_step == 4
    step_ckpt = tmp_path / "part" / "checkpoints" / "last_step.npz"
    assert load_checkpoint(step_ckpt)["batch_in_epoch"] == 1
    resumed = train(cfg, tiny_data, tmp_path / "part", resume=step_ckpt)
    assert resumed.global_step == full.global_step == 6
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.npz")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.npz")
    flat_a, flat_b = _leaves(a["model"]), _leaves(b["model"])
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)
    for name, leaf in _leaves(a["optimizer"]).items():
        np.testing.assert_array_equal(leaf, _leaves(b["optimizer"])[name], err_msg=name)
    # everything but the process's memory readings is identical
    no_memory = lambda h: {k: v for k, v in h.items() if not k.startswith("memory/")}  # noqa: E731
    assert no_memory(history_values(tmp_path / "full")) == no_memory(history_values(tmp_path / "part"))


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list):
        return _leaves(dict(enumerate(tree)), prefix)
    return {prefix: tree}


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


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_accumulation_and_precision(tiny_data, tiny_config, tmp_path, precision):
    """3 batches per epoch with accumulate=3 make one AdamW update; bf16 compute keeps float32 weights."""
    cfg = tiny_config(num_epochs=1, gradient_accumulation_steps=3, precision=precision, plot_every=0)
    result = train(cfg, tiny_data, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz")
    assert result.global_step == 3 and int(state["optimizer"]["step"]) == 1
    assert state["model"]["fusion"]["weight"].dtype == np.float32
