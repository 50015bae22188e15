"""The command-line contract, through the real command (subprocesses): bad input gets exit 2 and one
`error:` paragraph without a traceback, earlier outputs stay byte-identical, a refused run leaves no folder,
float16 is refused on CPU rather than training into NaN, and a stopped run prints a resume command that works
as printed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import torch

from common.config import load_config, save_config
from common.testing import assert_user_error, file_digests, make_finished_run, run_command
from egnn_com.config import EgnnComConfig

TINY = ["data.num_workers=0", "model.hidden_dim=16", "model.num_layers=2", "train.max_epochs=2"]


def train(*args):
    return run_command("egnn_com.train", *args, *TINY)


def test_output_dir_that_is_a_file_is_refused(tiny_data, tmp_path):
    (tmp_path / "out").write_text("keep me")
    assert_user_error(train("--data_dir", tiny_data, "--output_dir", tmp_path / "out"), "existing file")
    assert (tmp_path / "out").read_text() == "keep me"


def test_a_new_run_into_an_existing_run_folder_is_refused_and_it_stays_byte_identical(tiny_data, tmp_path):
    run = make_finished_run(tmp_path / "run")
    before = file_digests(run)
    assert_user_error(
        train("--data_dir", tiny_data, "--output_dir", run), "already holds a run", "--overwrite"
    )
    assert file_digests(run) == before


@pytest.mark.parametrize(
    "option, fragment",
    [
        (("--precision", "16"), "bf16-mixed"),  # float16 weights gave NaN at step 2; on CPU it is refused
        (("--batch_size", "0"), "batch_size"),
        (("optim.nonsense=1",), "nonsense"),
        (("--data_dir", "/nonexistent/graphs"), "/nonexistent/graphs"),
    ],
    ids=["float16", "batch-size-0", "unknown-key", "missing-data"],
)
def test_bad_options_are_refused_and_leave_no_run_folder(tiny_data, tmp_path, option, fragment):
    result = train("--data_dir", tiny_data, "--output_dir", tmp_path / "run", *option)
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_nan_positions_are_named_skipped_and_refused_under_strict_data(tiny_data, tmp_path):
    victim = sorted(tiny_data.glob("*.pt"))[0]
    graph = torch.load(victim, weights_only=False)
    graph["pos"][0, 0] = float("nan")
    torch.save(graph, victim)
    skipped = train("--data_dir", tiny_data, "--output_dir", tmp_path / "lenient", "train.max_epochs=1")
    assert skipped.returncode == 0 and f"{victim.name}: 'pos' contains NaN" in skipped.stderr
    result = train("--data_dir", tiny_data, "--output_dir", tmp_path / "run", "data.strict=true")
    assert_user_error(result, victim.name, "nan")
    assert not (tmp_path / "run").exists()


def test_a_truncated_graph_file_is_named_under_strict_data(tiny_data, tmp_path):
    # (without data.strict, unreadable files are skipped with a warning naming them)
    victim = sorted(tiny_data.glob("*.pt"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    result = train("--data_dir", tiny_data, "--output_dir", tmp_path / "run", "data.strict=true")
    assert_user_error(result, victim.name)
    assert not (tmp_path / "run").exists()


def test_resuming_from_another_packages_checkpoint_is_refused(tiny_data, tmp_path):
    from common.demo import DemoConfig
    from common.demo import train as demo_train
    from common.schedules import ScheduleConfig

    demo_train(DemoConfig(output_dir=str(tmp_path / "demo"), epochs=1, schedule=ScheduleConfig()))
    foreign = tmp_path / "demo" / "checkpoints" / "last.npz"
    result = train("--data_dir", tiny_data, "--resume", foreign)
    assert_user_error(result, "written by another package", "EgnnComConfig")


def test_a_stopped_run_resumes_with_the_printed_command(tiny_data, tmp_path):
    stop = {"class_path": "common.testing.SignalAt", "init_args": {"step": 2, "signal": "SIGTERM"}}
    cfg = load_config(EgnnComConfig, overrides=[*TINY, f"data.data_dir={tiny_data}"])
    cfg.callbacks = [stop]
    config = save_config(cfg, tmp_path / "stop_at_2.yaml")
    run = tmp_path / "run"
    stopped = run_command("egnn_com.train", "--config", config, "--output_dir", run)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    printed = re.search(r"resume with: (.+)", stopped.stderr).group(1).strip()
    command = printed.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)  # the test's interpreter
    resumed = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "checkpoints" / "manifest.json").is_file()
