"""Exact resume on the shared loop: a run stopped by SIGINT/SIGTERM (in-process) or SIGKILL (a real process,
three times) and resumed ends bit-identical to an uninterrupted run: weights, optimizer state, RNG states and
the whole metrics history (CPU, one thread, deterministic ops)."""

import os
import random
import re
import shlex
import signal
import subprocess
import sys

import pytest

from common.checkpoint import load_checkpoint
from common.cli import run_cli
from common.config import load_config
from common.resume import read_training_checkpoint
from common.testing import assert_trees_equal, history_series
from egnn_com import train as train_cli
from egnn_com.config import EgnnComConfig
from egnn_com.pipeline import run_training

# 32 train graphs / batch 4 = 8 micro-batches per epoch, 2 per optimizer step: 4 steps per epoch, 12 in all
BASE = [
    "data.batch_size=4",
    "data.num_workers=0",
    "optim.accumulate_grad_batches=2",
    "model.hidden_dim=16",
    "model.num_layers=2",
    "logging.tensorboard=false",
    "train.max_epochs=3",
    "train.num_threads=1",
    "train.save_every_n_steps=2",
    "optim.lr=0.01",
    "optim.schedule.patience=0",
]


def reference_run(tmp_path, data, model: str):
    cfg = load_config(EgnnComConfig, overrides=[*BASE, f"model.name={model}"])
    cfg.data.data_dir, cfg.train.output_dir = str(data), str(tmp_path / "reference")
    return run_training(cfg).run_dir


def cli_args(run_dir, data, model: str, *extra: str) -> list[str]:
    return ["--data_dir", str(data), "--output_dir", str(run_dir), *BASE, f"model.name={model}", *extra]


def assert_same_run(reference, resumed):
    final = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 12
    assert_trees_equal(
        final, load_checkpoint(resumed / "checkpoints" / "last.ckpt"), skip=("config", "manager")
    )
    assert history_series(reference / "metrics_history.json") == history_series(
        resumed / "metrics_history.json"
    )


@pytest.mark.parametrize(
    ("name", "code", "model"),
    [
        ("SIGINT", 130, "gcn"),
        ("SIGTERM", 143, "egnn"),
    ],  # gcn: dropout draws from the RNG, so RNG state matters
)
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_its_number(
    tmp_path, tiny_data, capsys, name, code, model
):
    reference = reference_run(tmp_path, tiny_data, model)
    run_dir = tmp_path / "run"
    stop = f"callbacks=[{{class_path: common.testing.SignalAt, init_args: {{step: 5, signal: {name}}}}}]"
    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, cli_args(run_dir, tiny_data, model, stop))
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert f"received {name}" in err
    state = read_training_checkpoint(run_dir / "checkpoints" / "last-step.ckpt")
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 5)  # mid-epoch
    # the resume command the run printed, exactly as printed (the saved config holds the rest)
    command = re.search(r"resume with: (.+)$", err, re.MULTILINE).group(1)
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "egnn_com.train", "--resume"]
    run_cli(train_cli.main, words[3:])
    assert "resumed at epoch 2, batch 2, step 5" in capsys.readouterr().err
    assert_same_run(reference, run_dir)


def train_process(run_dir, data, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "egnn_com.train", *cli_args(run_dir, data, "gcn")]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.Popen(
        [*command, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=240)
    return process.returncode, err


def test_sigkill_at_three_random_steps_then_resume_ends_bit_identical(tmp_path, tiny_data):
    # The reference is a process of its own too: the test process may load another BLAS (the workspace
    # conftest imports dtgcnn), whose float rounding differs in the last bits.
    reference, run_dir = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = train_process(reference, tiny_data)  # runs alongside the first killed run
    try:
        kills = sorted(random.Random(7).sample(range(3, 12), 3))  # of the 12 steps; step 2 saves first
        for i, step in enumerate(kills):
            kill = f"callbacks=[{{class_path: common.testing.KillAt, init_args: {{step: {step}}}}}]"
            resume = ["--resume", "last"] if i else []
            # data.num_workers=2: the killed runs load in a background thread, the reference in the main process
            code, err = finish(train_process(run_dir, tiny_data, *resume, kill, "data.num_workers=2"))
            assert code == -signal.SIGKILL, err
            # KillAt acts before the step's checkpoint: the newest one is from an earlier step
            newest = max(
                load_checkpoint(p)["global_step"] for p in (run_dir / "checkpoints").glob("last*.ckpt")
            )
            assert step - 2 <= newest < step
        code, err = finish(train_process(run_dir, tiny_data, "--resume", "last", "callbacks=[]"))
        assert code == 0, err
        code, err = finish(uninterrupted)
        assert code == 0, err
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    assert_same_run(reference, run_dir)


def test_resume_auto_and_bad_checkpoint(tmp_path, tiny_data, capsys):
    cfg = load_config(EgnnComConfig, overrides=[*BASE, "model.name=egnn", "train.max_epochs=1"])
    cfg.data.data_dir, cfg.train.output_dir = str(tiny_data), str(tmp_path / "run")
    run_training(cfg)
    # --ckpt_path auto is --resume last; a typed option overrides the saved config
    run_cli(
        train_cli.main, ["--ckpt_path", "auto", "--output_dir", str(tmp_path / "run"), "--max_epochs", "2"]
    )
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 2 and state["global_step"] == 8
    # a run folder works too
    run_cli(train_cli.main, ["--resume", str(tmp_path / "run"), "--max-epochs", "3"])
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] == 3
    capsys.readouterr()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"truncated")
    for args, needle in [
        (["--ckpt_path", str(bad)], "bad.ckpt"),
        (["--resume", "last"], "--output-dir"),
        (["--resume", str(tmp_path / "nowhere")], "no such checkpoint"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(train_cli.main, args)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
