"""Data-parallel training with mx.distributed under `mlx.launch` (ring backend over TCP on localhost).

Why a 2-process run equals a 1-process run here: process r takes P x K group 2i + r of the epoch order as
its batch i, and a 1-process run with gradient_accumulation_steps=2 takes groups 2i and 2i + 1 as the two
micro-batches of step i. Each group gets the same augmentation (seeded by its position in the epoch order),
its own BatchNorm batch statistics and its own triplet mining in both runs, and the update follows
(g0 + g1) / 2 in both (0.5 g0 + 0.5 g1 locally, all_sum / 2 across processes). dropout=0 keeps the MLX
random stream out of it (a second micro-batch would draw other dropout masks than a second process). The
BatchNorm running statistics differ (averaged over processes vs updated twice in a row) and are used only in
eval mode, so the trainable weights and AdamW's moments are compared, not them.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlx.utils import tree_flatten

from common.checkpoint import load_checkpoint
from common.config import save_config
from common.testing import assert_trees_equal, history_series
from dtgcnn.testing import TINY_TEXT
from dtgcnn.trainer import train

LAUNCH = Path(sys.executable).parent / "mlx.launch"
pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed")

# 24 train meshes in P x K = 2 x 2 groups: 6 groups an epoch, 3 global batches of 2 processes x 1 group
DP_CONFIG = dict(
    batch_size=4,
    samples_per_label=2,
    dropout=0.0,
    num_epochs=2,
    plot_every=0,
    checkpoint_every=1,
    checkpoint_every_steps=2,
    jit_compile=True,
)


def tiny_train_config(**kw):
    """conftest's tiny_config (this folder's conftest, which a module-scoped fixture cannot ask for)."""
    spec = importlib.util.spec_from_file_location(
        "dtgcnn_tests_conftest", Path(__file__).with_name("conftest.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_config(**kw)


def launch(config: Path, run_dir: Path, data: Path | None, *extra: str) -> subprocess.CompletedProcess:
    data_args = [] if data is None else ["--data-dir", str(data)]
    return launch_train(*data_args, "--output-dir", str(run_dir), "--config", str(config), *extra)


def launch_train(*args: str) -> subprocess.CompletedProcess:
    """`mlx.launch -n 2 -- python -m dtgcnn.train ARGS` (ring backend on localhost), output captured."""
    port = random.Random().randrange(20000, 60000, 8)  # other test runs may be using the default port
    command = [
        str(LAUNCH),
        "-n",
        "2",
        "--starting-port",
        str(port),
        "--",
        sys.executable,
        "-m",
        "dtgcnn.train",
    ]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=240)


def trainable(state: dict) -> dict[str, np.ndarray]:
    """The model's weights without the BatchNorm running statistics."""
    return {k: v for k, v in tree_flatten(state["model"]) if not k.endswith(("running_mean", "running_var"))}


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    """One uninterrupted `mlx.launch -n 2` run: (config file, run folder, completed process)."""
    root = tmp_path_factory.mktemp("dp2")
    config = save_config(tiny_train_config(**DP_CONFIG), root / "dp.yaml")
    done = launch(config, root / "run", tiny_data)
    assert done.returncode == 0, done.stderr[-4000:]
    return config, root / "run", done


def test_two_processes_train_like_one_process_with_the_same_global_batch(
    tiny_data, tiny_config, tmp_path, two_process_run
):
    _, run, done = two_process_run
    single = train(tiny_config(**DP_CONFIG, gradient_accumulation_steps=2), tiny_data, tmp_path / "single")
    assert single.global_step == 6
    # after the first epoch (3 steps); later, float rounding (the k-NN graph follows the features) grows
    a = load_checkpoint(run / "checkpoints" / "checkpoint_epoch_0001.npz")
    b = load_checkpoint(tmp_path / "single" / "checkpoints" / "checkpoint_epoch_0001.npz")
    assert a["loop"]["world_size"] == 2 and a["global_step"] == b["global_step"] == 3
    wa, wb = trainable(a), trainable(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-4, atol=2e-5, err_msg=key)
    for (key, va), (_, vb) in zip(tree_flatten(a["optimizer"]), tree_flatten(b["optimizer"]), strict=True):
        np.testing.assert_allclose(va, vb, rtol=1e-2, atol=1e-6, err_msg=key)
    ha = history_series(run / "metrics_history.json")
    hb = history_series(tmp_path / "single/metrics_history.json")
    for name in ("train/loss_step", "train/grad_norm_step"):
        assert [s for s, _ in ha[name]] == [s for s, _ in hb[name]] == list(range(1, 7)), name
        first_a, first_b = ([v for s, v in h[name] if s <= 3] for h in (ha, hb))
        np.testing.assert_allclose(first_a, first_b, rtol=1e-5, err_msg=name)
    assert ha["train/loss_step"][0] == hb["train/loss_step"][0]  # step 1: the same arithmetic
    # only rank 0 wrote: one log file, one summary on stdout, the files of a 1-process run
    assert len(list((run / "logs").iterdir())) == 1
    assert done.stdout.count("outputs in") == 1
    assert "data parallel: 2 processes" in done.stderr
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics_history.json", "test_metrics.json", "checkpoints/last.npz"} <= files
    assert not any(name.startswith(("debug", "plots/")) for name in files)


def test_a_sigkilled_two_process_run_resumes_exactly(tiny_data, tmp_path, two_process_run):
    config, reference, _ = two_process_run
    run = tmp_path / "killed"
    kill = "callbacks=[{class_path: common.testing.KillAt, init_args: {step: 5}}]"
    killed = launch(config, run, tiny_data, kill)
    assert "rank 0 exited with code -9" in killed.stderr  # mlx.launch itself exits 0 after warning
    saved = load_checkpoint(run / "checkpoints" / "last_step.npz")
    assert (saved["global_step"], saved["epoch"], saved["batch_in_epoch"]) == (4, 1, 1)  # mid-epoch 2
    finished = launch(config, run, None, "--resume", "last", "callbacks=[]")
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "resumed at epoch 2, batch 1, step 4" in finished.stderr
    a = load_checkpoint(reference / "checkpoints" / "last.npz")
    b = load_checkpoint(run / "checkpoints" / "last.npz")
    assert_trees_equal(a, b, skip=("config", "manager"))
    assert history_series(reference / "metrics_history.json") == history_series(run / "metrics_history.json")


def test_a_lost_rank_ends_the_other_with_an_error_naming_it_and_keeps_the_last_checkpoint(
    tiny_data, tmp_path, two_process_run
):
    config, _, _ = two_process_run
    run, stamp = tmp_path / "lost", tmp_path / "killed_at"
    kill = f"callbacks=[{{class_path: common.testing.KillAt, init_args: {{step: 3, rank: 1, stamp: '{stamp}'}}}}]"
    done = launch(config, run, tiny_data, kill)
    ended = time.time()
    assert "rank 1 exited with code -9" in done.stderr, done.stderr[-3000:]
    assert "Process 0 of 2 stops: lost rank 1" in done.stderr, done.stderr[-3000:]  # rank 0's own error
    assert "Traceback" not in done.stderr
    # a liveness bound, not a speed figure: rank 0 must not wait for a collective that never completes
    assert ended - float(stamp.read_text()) < 60
    assert load_checkpoint(run / "checkpoints" / "last_step.npz")["global_step"] == 2  # intact and verified
    assert done.returncode == 0  # mlx.launch's own status, whatever its processes did (see the README)


def test_distributed_without_the_launcher_is_refused_with_the_command(tiny_data, tmp_path, capsys):
    from common.cli import run_cli
    from dtgcnn import train as train_cli

    with pytest.raises(SystemExit) as refused:
        run_cli(
            train_cli.main, ["--data-dir", str(tiny_data), "--output-dir", str(tmp_path), "--distributed"]
        )
    assert refused.value.code == 2
    assert "mlx.launch -n 2 -- python -m dtgcnn.train" in capsys.readouterr().err


# Triplet-text mode: 54 labelled training sentences in P x K = 2 x 4 groups, 6 groups an epoch; 2 processes x 1
# group per step against 1 process x 2 micro-batches of 1 group: 3 steps an epoch. No dropout (see the module
# docstring). SGD, not Adam: the biases that a normalisation follows get gradients of float-noise size, which
# Adam scales up to full learning-rate steps in whichever direction the noise points.
TEXT = {
    **TINY_TEXT,
    "batch_size": 8,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "dynamic_graph_update_freq": 1,
    "dropout_rate": 0.0,
    "train_split": 0.75,
}


def test_text_mode_on_two_processes_trains_like_one_process_with_the_same_global_batch(text_corpus, tmp_path):
    import json

    from common.config import load_config
    from dtgcnn.config import DTGCNNConfig
    from dtgcnn.text_trainer import fit_triplets

    data = text_corpus / "sentences.csv"
    overrides = [f"{k}={json.dumps(v)}" for k, v in TEXT.items()]
    run = tmp_path / "two"
    done = launch_train("--mode", "triplets", "--data", str(data), "--output-dir", str(run), *overrides)
    assert done.returncode == 0 and "exited with code" not in done.stderr, done.stderr[-4000:]
    cfg = load_config(DTGCNNConfig, "triplet_config", package="dtgcnn", overrides=overrides)
    cfg.gradient_accumulation_steps = 2
    single = fit_triplets(cfg, tmp_path / "one", data=data)
    a = load_checkpoint(run / "checkpoints" / "last.npz")
    b = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.npz")
    assert a["loop"]["world_size"] == 2 and a["global_step"] == b["global_step"] == single.global_step == 6
    wa, wb = trainable(a), trainable(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-4, atol=2e-5, err_msg=key)
    ha = history_series(run / "metrics_history.json")
    hb = history_series(tmp_path / "one" / "metrics_history.json")
    np.testing.assert_allclose(
        [v for _, v in ha["train/loss_step"]], [v for _, v in hb["train/loss_step"]], rtol=1e-4
    )
    # only rank 0 wrote: one log file, one summary on stdout, the files of the 1-process run
    assert len(list((run / "logs").iterdir())) == 1
    assert done.stdout.count("outputs in") == 1
    files = lambda root: {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert {f for f in files(run) if not f.startswith("logs/")} == {
        f for f in files(tmp_path / "one") if not f.startswith("logs/")
    }
