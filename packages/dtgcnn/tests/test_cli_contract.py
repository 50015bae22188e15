"""The command-line contract, through the real commands (subprocesses): bad input gets exit 2 and one
`error:` paragraph without a traceback, earlier outputs stay byte-identical, a refused run leaves no folder,
a stopped run prints a resume command that works as printed, and evaluation never replaces a training result."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from common.config import save_config
from common.testing import assert_user_error, file_digests, make_finished_run, run_command


@pytest.fixture
def tiny_yaml(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    save_config(tiny_config(num_epochs=2), path)
    return path


def train(*args):
    return run_command("dtgcnn.train", *args)


def test_nonsense_numbers_are_refused_before_anything_is_written(tiny_data, tmp_path):
    result = train("--data-dir", tiny_data, "--output-dir", tmp_path / "run", "--num-epochs", "-2")
    assert_user_error(result, "num_epochs must be >= 1, got -2")
    assert not (tmp_path / "run").exists()


def test_missing_data_refuses_the_run_and_leaves_no_run_folder(tmp_path):
    result = train("--data-dir", tmp_path / "nowhere", "--output-dir", tmp_path / "run")
    assert_user_error(result, "nowhere", "does not exist")
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_refused(tiny_data, tmp_path):
    (tmp_path / "out").write_text("keep me")
    assert_user_error(train("--data-dir", tiny_data, "--output-dir", tmp_path / "out"), "is a file")
    assert (tmp_path / "out").read_text() == "keep me"


def test_a_new_run_into_an_existing_run_folder_is_refused_and_it_stays_byte_identical(tiny_data, tmp_path):
    run = make_finished_run(tmp_path / "run", checkpoint="last.npz")
    before = file_digests(run)
    assert_user_error(
        train("--data-dir", tiny_data, "--output-dir", run), "already holds a run", "--overwrite"
    )
    assert file_digests(run) == before


@pytest.mark.parametrize(
    "option, fragment",
    [
        (("--precision", "fp8"), "Unknown precision 'fp8'"),
        (("--precision", "16-true"), "use bf16-mixed or 16-mixed"),
        (("nonsense_key=3",), "nonsense_key"),
        (("num_vertices=64",), "64"),  # the data's meshes have 48 vertices
    ],
    ids=["precision", "half-weights", "unknown-key", "wrong-shape"],
)
def test_bad_options_and_mismatched_data(tiny_data, tiny_yaml, tmp_path, option, fragment):
    result = train("--config", tiny_yaml, "--data-dir", tiny_data, "--output-dir", tmp_path / "run", *option)
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()


def _copy_data(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_nan_coordinates_name_the_file_and_mesh(tiny_data, tiny_yaml, tmp_path):
    data = _copy_data(tiny_data, tmp_path)
    with h5py.File(data / "train_data.h5", "r+") as h5:
        subject = next(iter(h5))
        mesh = next(iter(h5[subject]))
        coords = h5[subject][mesh]["coordinates"]
        values = coords[()]
        values[3, 1] = np.nan
        coords[...] = values
    result = train("--config", tiny_yaml, "--data-dir", data, "--output-dir", tmp_path / "run")
    assert_user_error(result, "train_data.h5", "nan")
    assert not (tmp_path / "run").exists()


def test_a_truncated_hdf5_file_is_named(tiny_data, tiny_yaml, tmp_path):
    data = _copy_data(tiny_data, tmp_path)
    path = data / "val_data.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = train("--config", tiny_yaml, "--data-dir", data, "--output-dir", tmp_path / "run")
    assert_user_error(result, "val_data.h5")
    assert not (tmp_path / "run").exists()


def test_a_stopped_run_resumes_with_the_printed_command_and_evaluation_keeps_its_results(
    tiny_data, tiny_config, tmp_path
):
    config = tmp_path / "stop_at_2.yaml"
    stop = {"class_path": "common.testing.SignalAt", "init_args": {"step": 2, "signal": "SIGTERM"}}
    save_config(tiny_config(num_epochs=2, callbacks=[stop]), config)
    run = tmp_path / "run"
    stopped = train("--config", config, "--data-dir", tiny_data, "--output-dir", run)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    printed = re.search(r"resume with: (.+)", stopped.stderr).group(1).strip()
    command = printed.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)  # the test's interpreter
    resumed = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "test_metrics.json").is_file()

    # evaluation writes under evaluation/ and refuses to replace the run's own results
    results = file_digests(run)
    checkpoint = run / "checkpoints" / "best_model.npz"
    evaluated = run_command("dtgcnn.evaluate", checkpoint, "--data-dir", tiny_data)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (run / "evaluation" / "best_model-test_metrics.json").is_file()
    assert {k: v for k, v in file_digests(run).items() if not k.startswith("evaluation/")} == results
    refused = run_command(
        "dtgcnn.evaluate", checkpoint, "--data-dir", tiny_data, "--output", run / "test_metrics.json"
    )
    assert_user_error(refused, "never replaces an existing file")
    assert file_digests(run)["test_metrics.json"] == results["test_metrics.json"]


def test_evaluate_refuses_a_file_that_is_not_a_dtgcnn_checkpoint(tiny_data, tmp_path):
    bogus = tmp_path / "model.npz"
    bogus.write_bytes(b"PK\x03\x04 not really an archive")
    assert_user_error(run_command("dtgcnn.evaluate", bogus, "--data-dir", tiny_data), "model.npz")
