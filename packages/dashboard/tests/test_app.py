"""The streamlit app, run by streamlit's own AppTest on run folders written by common, and its command line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from common.checkpoint import CheckpointManager
from common.cli import run_cli
from common.trackers import JsonHistory
from dashboard import cli
from dashboard.app import TABS

PACKAGE_CONFIGS = {
    "dtgcnn": "num_vertices: 48\nedge_conv_dims: [8, 16]\n",
    "cabruca": "experiment_name: x\npostprocess: {}\ntracking: {}\n",
}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "outputs"
    for package, config in PACKAGE_CONFIGS.items():
        run = root / f"{package}_run"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(config)
        history = JsonHistory(run / "metrics_history.json")
        for step in (1, 2, 3):
            history.log_metrics({"train/loss": 1.0 / step, "val/loss": 2.0 / step, "lr": 0.1}, step=step)
        history.close()
        manager = CheckpointManager(
            run / "checkpoints", last="last.npz", every_n_epochs=1, periodic="e{epoch}.npz"
        )
        for epoch in (2, 10):
            manager.save({"epoch": epoch, "global_step": epoch, "w": np.zeros(1)}, epoch=epoch)
    return root


def test_the_app_shows_runs_compare_and_checkpoints(runs_root, monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNS_ROOT", str(runs_root))
    at = AppTest.from_file(cli.APP, default_timeout=60).run()
    assert not at.exception
    assert [tab.label for tab in at.tabs] == TABS
    overview, compared, checkpoints = (table.value for table in at.table)
    assert sorted(overview.index) == ["cabruca_run", "dtgcnn_run"]
    assert sorted(compared["package"]) == ["cabruca", "dtgcnn"]
    assert checkpoints.index.tolist() == ["e2.npz", "e10.npz", "last.npz"]  # by step, not by name
    assert at.selectbox(key="compare_metric").value == "train/loss"
    shown_run = at.selectbox(key="run").value
    config_shown = "num_vertices" if shown_run == "dtgcnn_run" else "postprocess"
    assert any(config_shown in code.value for code in at.code)  # the config tab


def test_the_command_line_serves_the_app_and_refuses_a_missing_root(runs_root, tmp_path, capsys):
    run_cli(cli.main, ["--runs-root", str(runs_root), "--port", "8600", "--print-command"])
    command = capsys.readouterr().out.split()
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(cli.APP)]
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--runs-root") + 1] == str(runs_root)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli.main, ["--runs-root", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
