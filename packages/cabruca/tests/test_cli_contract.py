"""The command-line contract, through the real command (subprocesses): bad input gets exit 2 and one
`error:` paragraph without a traceback, a refused run leaves no run folder, and a stopped run prints a resume
command that works as printed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest

from common.testing import assert_user_error, run_command

SMALL = [
    "--config",
    "training_config_light",
    "--device",
    "cpu",
    "model.backbone=test_resnet",
    "model.fpn_channels=32",
    "model.head_channels=16",
    "data.tile_size=64",
    "data.tile_overlap=0",
    "--batch-size",
    "2",
    "data.num_workers=0",
    "training.num_epochs=2",
    "training.save_every_n_steps=0",
    "tracking.tensorboard=false",
]


def train(data_dir, output_dir, *extra):
    return run_command("cabruca.train", *SMALL, "--data-dir", data_dir, "--output-dir", output_dir, *extra)


def _copy(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_a_corrupt_image_is_named(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = data / "train" / "images" / "scene_0001.png"
    victim.write_bytes(victim.read_bytes()[:64])
    result = train(data, tmp_path / "outputs")
    assert_user_error(result, "scene_0001.png", "cannot be read")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("--batch-size", "0"), "batch_size"),
        (("training.nonsense=1",), "nonsense"),
    ],
    ids=["batch-size-0", "unknown-key"],
)
def test_bad_options_are_refused(tiny_data, tmp_path, extra, fragment):
    result = train(tiny_data, tmp_path / "outputs", *extra)
    assert_user_error(result, fragment)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_an_output_dir_that_is_a_file_is_refused(tiny_data, tmp_path):
    (tmp_path / "outputs").write_text("keep me")
    assert_user_error(train(tiny_data, tmp_path / "outputs"), "outputs")
    assert (tmp_path / "outputs").read_text() == "keep me"


def test_resuming_from_another_packages_checkpoint_is_refused(tiny_data, tmp_path):
    from common.demo import DemoConfig
    from common.demo import train as demo_train
    from common.schedules import ScheduleConfig

    demo_train(DemoConfig(output_dir=str(tmp_path / "demo"), epochs=1, schedule=ScheduleConfig()))
    foreign = tmp_path / "demo" / "checkpoints" / "last.npz"
    result = run_command("cabruca.train", "--resume", foreign)
    assert_user_error(result, "written by another package", "CabrucaConfig")


def test_a_stopped_run_resumes_with_the_printed_command(tiny_data, tmp_path):
    stop = "callbacks=[{class_path: common.testing.SignalAt, init_args: {step: 2, signal: SIGTERM}}]"
    stopped = train(tiny_data, tmp_path / "outputs", stop)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    printed = re.search(r"resume with: (.+)", stopped.stderr).group(1).strip()
    command = printed.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)  # the test's interpreter
    resumed = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (run,) = [p for p in (tmp_path / "outputs").iterdir() if p.is_dir()]
    assert (run / "checkpoints" / "manifest.json").is_file()
