"""`--demo` takes the options typed beside it (that `--help` imports no framework is tested for every
command in the workspace's tests/test_cli_help.py)."""

from __future__ import annotations

import pytest
import yaml

from cabruca.train import main
from common.cli import run_cli


def test_demo_takes_the_options_beside_it(tmp_path, capsys):
    run_cli(
        main,
        ["--demo", "--epochs", "2", "--output-dir", str(tmp_path), "--lr", "0.01", "--print-config"]
        + ["training.max_steps_per_epoch=3"],
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["training"]["num_epochs"] == 2 and cfg["training"]["max_steps_per_epoch"] == 3
    assert cfg["optimizer"]["lr"] == 0.01 and cfg["output_dir"] == str(tmp_path)
    assert cfg["data"]["data_dir"] == str(tmp_path / "demo_data") and cfg["experiment_name"] == "demo"
    assert cfg["scheduler"]["type"] == "onecycle"  # the demo's own settings stay where nothing was typed
    assert not any(tmp_path.iterdir())  # printing the config writes nothing


def test_demo_refuses_resume(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--demo", "--resume", "last", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--demo starts a new run" in capsys.readouterr().err
