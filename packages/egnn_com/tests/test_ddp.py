"""Data-parallel training under torchrun: two Gloo processes on CPU end where one process with the same global
batch ends (weights and the all-reduced metrics, to float tolerance), only rank 0 writes the run folder, and a
SIGKILLed 2-process run resumed with `--resume last` under torchrun ends bit-identical to an uninterrupted one
(the kill takes rank 1 alone: rank 0 must end too, within 60 s, and torchrun must name rank 1).

Each torchrun start imports torch and PyG in three processes (about 40 s on the 2-core test machine), so the
uninterrupted 2-process run is made once and shared by both tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from common import testing
from common.checkpoint import load_checkpoint
from common.config import load_config
from common.testing import assert_trees_equal, history_series
from egnn_com.config import EgnnComConfig
from egnn_com.pipeline import run_training
from egnn_com.synthetic import generate_dataset

# 40 graphs, val_fraction 0.175: 33 train / 7 val. Per micro-batch 2 graphs per process x 2 processes = 4
# (the single process: 4): 8 micro-batches per epoch, 2 per optimizer step, 4 steps per epoch, 8 in all.
# Validation: 7 graphs in global batches of 4, the last one padded by one wrapped-around graph.
# dropout 0: a process draws its own dropout mask, so masks differ from one process's for the whole batch.
BASE = [
    "data.num_workers=0",
    "data.val_fraction=0.175",
    "model.hidden_dim=16",
    "model.num_layers=2",
    "model.dropout=0",
    "optim.accumulate_grad_batches=2",
    "optim.lr=0.01",
    "optim.schedule.patience=0",
    "logging.tensorboard=false",
    "train.max_epochs=2",
    "train.num_threads=1",
    "train.save_every_n_steps=2",
    "train.device=cpu",
]
STEPS = 8


def torchrun(run_dir, data, *extra: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m egnn_com.train ...` (rendezvous on a free port)."""
    args = ["--data_dir", str(data), "--output_dir", str(run_dir), *BASE, "data.batch_size=2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return testing.torchrun("egnn_com.train", *args, env=env, timeout=400)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """(data folder, run folder of an uninterrupted 2-process run, its torchrun result)."""
    root = tmp_path_factory.mktemp("ddp")
    data = generate_dataset(root / "graphs", num_graphs=40, seed=3, min_nodes=6, max_nodes=12)
    proc = torchrun(root / "ddp", data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data, root / "ddp", proc


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    data, ddp_dir, proc = ddp_run
    cfg = load_config(EgnnComConfig, overrides=[*BASE, "data.batch_size=4"])
    cfg.data.data_dir, cfg.train.output_dir = str(data), str(tmp_path / "single")
    single_dir = run_training(cfg).run_dir

    single = load_checkpoint(single_dir / "checkpoints" / "last.ckpt")
    ddp = load_checkpoint(ddp_dir / "checkpoints" / "last.ckpt")
    assert single["global_step"] == ddp["global_step"] == STEPS
    assert single["model"].keys() == ddp["model"].keys()
    for name, want in single["model"].items():
        np.testing.assert_allclose(ddp["model"][name], want, rtol=1e-4, atol=1e-6, err_msg=name)

    # Metrics reduced across ranks before logging: the same values one process logs, validation exact over
    # the 7 graphs (the padded graph left out).
    one, two = (history_series(d / "metrics_history.json") for d in (single_dir, ddp_dir))
    assert one.keys() == two.keys()
    for key in ("train/loss_step", "train/loss", "train/mae_x", "train/grad_norm", "val/loss", "val/mse_z"):
        assert [s for s, _ in two[key]] == [s for s, _ in one[key]], key
        np.testing.assert_allclose([v for _, v in two[key]], [v for _, v in one[key]], rtol=1e-4, err_msg=key)

    # Only rank 0 wrote: one log file, one config, no duplicated history rows; every rank said the same folder.
    assert len(list((ddp_dir / "logs").iterdir())) == 1
    assert [p.name for p in ddp_dir.glob("*.yaml")] == ["config.yaml"]
    metrics = json.loads((ddp_dir / "metrics_history.json").read_text())["metrics"]
    assert len(metrics["train/loss_step"]) == STEPS and len(metrics["val/loss"]) == 2
    for name, rows in metrics.items():
        steps = [r["step"] for r in rows]
        assert len(steps) == len(set(steps)), name
    assert "data-parallel: 2 processes; global batch 8 graphs" in proc.stderr
    assert proc.stdout.count("run folder:") == 1


@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_under_torchrun_bit_identical(ddp_run, tmp_path):
    data, reference, _ = ddp_run
    run_dir, stamp = tmp_path / "killed", tmp_path / "killed_at"
    # rank 1 alone dies: torchrun must end rank 0 too, at once, and name the lost rank
    kill = f"callbacks=[{{class_path: common.testing.KillAt, init_args: {{step: 7, rank: 1, stamp: '{stamp}'}}}}]"
    proc = torchrun(run_dir, data, kill)
    ended = time.time()
    assert proc.returncode != 0
    assert ": 1 (local_rank: 1)" in proc.stderr and ("SIGKILL" in proc.stderr or "-9" in proc.stderr)
    assert ended - float(stamp.read_text()) < 60  # a liveness bound, not a speed figure
    steps = sorted(load_checkpoint(p)["global_step"] for p in (run_dir / "checkpoints").glob("last*.ckpt"))
    assert steps[-1] == 6  # last-step.ckpt of step 6 (every 2 steps), mid-epoch; KillAt acts before step 7's

    proc = torchrun(run_dir, data, "--resume", "last", "callbacks=[]")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at epoch 2, batch 4, step 6" in proc.stderr
    final = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    assert final["global_step"] == STEPS
    assert_trees_equal(
        final, load_checkpoint(run_dir / "checkpoints" / "last.ckpt"), skip=("config", "manager")
    )
    assert history_series(reference / "metrics_history.json") == history_series(
        run_dir / "metrics_history.json"
    )
    assert len(list((run_dir / "logs").iterdir())) == 2  # one per start, rank 0 only


def test_validation_padding_is_left_out_of_the_counts():
    from common.sampler import ResumableSampler
    from egnn_com.task import _unpadded

    for n, b, w in [(7, 2, 2), (8, 2, 2), (5, 3, 4), (1, 1, 2)]:
        kept = []
        for rank in range(w):
            sampler = ResumableSampler(n, b, shuffle=False, drop_last=False, rank=rank, world_size=w)
            for index, batch in enumerate(sampler):
                kept += batch[: _unpadded(sampler, index)]
        assert sorted(kept) == list(range(n)), (n, b, w)  # every graph once, padding never


@pytest.mark.parametrize("option", ["--num_gpus", "--devices", "--strategy", "--num-nodes"])
def test_lightning_device_options_are_refused_with_the_torchrun_command(option, capsys):
    from common.cli import run_cli
    from egnn_com import train as train_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, [option, "2"])
    assert exc.value.code == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err
