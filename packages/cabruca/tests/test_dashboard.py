"""The monitoring dashboard: run-folder reader over all four packages' layouts, the Streamlit app through
streamlit.testing.v1.AppTest, the launcher, and (when chromium is installed) a real headless-browser render."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cabruca.dashboard import runs as R
from cabruca.monitor import APP, streamlit_command
from cabruca.monitor import main as monitor_main
from common.checkpoint import save_checkpoint
from common.cli import run_cli
from common.trackers import JsonHistory

TOOLS_APP = Path(__file__).resolve().parents[3] / "tools" / "dashboard" / "app.py"


def make_run(root: Path, name: str, history_file: str, checkpoint: str, *, scale: float = 1.0) -> Path:
    """A run folder as a Trainyard package writes it (real JsonHistory file and common checkpoint)."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"experiment_name: {name}\noptimizer:\n  lr: 0.001\n")
    h = JsonHistory(run / history_file)
    h.log_params({"experiment_name": name})
    for step in range(1, 11):
        h.log_metrics({"train/loss_step": scale * 2.0 / step}, step=step)
        if step % 5 == 0:
            h.log_metrics(
                {
                    "train/loss": scale / step,
                    "val/loss": scale * 1.2 / step,
                    "val/mAP_50": step / 10,
                    "system/rss_peak_mb": 500.0 + step,
                },
                step=step,
            )
    h.close()
    save_checkpoint(
        run / "checkpoints" / checkpoint, {"epoch": 2, "global_step": 10, "model": {"w": np.zeros(2)}}
    )
    return run


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "outputs"
    make_run(root, "cabruca_20260101_000000", "training_history.json", "checkpoint_latest.pth")
    make_run(root / "egnn", "gnn_run", "metrics_history.json", "last.ckpt", scale=2.0)
    make_run(root, "spectral_mae_run", "metrics_history.json", "best_model.npz", scale=3.0)
    (root / "not_a_run" / "empty").mkdir(parents=True)
    return root


def test_reader_finds_runs_of_every_layout(runs_root):
    found = {r.name for r in R.find_runs(runs_root)}
    assert found == {"cabruca_20260101_000000", "gnn_run", "spectral_mae_run"}
    run = next(r for r in R.find_runs(runs_root) if r.name == "gnn_run")
    h = R.load_history(run)
    assert set(h["metric"]) == {
        "train/loss_step",
        "train/loss",
        "val/loss",
        "val/mAP_50",
        "system/rss_peak_mb",
    }
    assert R.wide(h, ["val/mAP_50"])["val/mAP_50"].tolist() == [0.5, 1.0]
    ck = R.checkpoints(run, h)
    assert (
        ck["file"].tolist() == ["last.ckpt"]
        and ck["global_step"].tolist() == [10]
        and ck["epoch"].tolist() == [2]
    )
    assert ck["val/mAP_50"].tolist() == [1.0]  # the validation metric logged at the checkpoint's step
    s = R.summary(h).set_index("metric")
    assert s.loc["train/loss_step", "last"] == pytest.approx(0.4) and s.loc["train/loss_step", "points"] == 10


def test_reader_tolerates_partial_files(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics_history.json").write_text('{"metrics": {"loss": [{"step": 1, "val')  # being rewritten
    assert R.load_history(R.Run(run)).empty
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "model.pth").write_bytes(b"not a zip")
    assert R.checkpoints(R.Run(run))["file"].tolist() == ["model.pth"]


@pytest.mark.parametrize("app", [APP, TOOLS_APP], ids=["cabruca_app", "tools_launcher"])
def test_app_renders_every_tab(runs_root, monkeypatch, app):
    monkeypatch.setenv("TRAINYARD_RUNS_DIR", str(runs_root))
    at = AppTest.from_file(str(app), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value in {"cabruca_20260101_000000", "gnn_run", "spectral_mae_run"}
    assert [t.label for t in at.tabs] == [
        "Training curves",
        "System",
        "Checkpoints",
        "Compare runs",
        "Config",
    ]
    assert len(at.get("arrow_vega_lite_chart")) >= 3 or len(at.get("vega_lite_chart")) >= 3  # curves + system
    assert any("experiment_name" in c.value for c in at.code)  # config viewer
    frames = [df.value for df in at.dataframe]
    assert any("file" in f.columns and "global_step" in f.columns for f in frames)  # checkpoint table
    compare = next(f for f in frames if "run" in f.columns)
    assert len(compare) == 3  # up to three runs compared by default
    # Pick another run in the sidebar.
    at.sidebar.selectbox[0].set_value(str(runs_root / "egnn" / "gnn_run")).run()
    assert not at.exception and at.title[0].value == "gnn_run"


def test_app_explains_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception and "No run folders found" in at.warning[0].value


def test_monitor_builds_the_streamlit_command(capsys):
    cmd = streamlit_command("outs", 8600, "127.0.0.1", False)
    assert (
        cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP) and cmd[-2:] == ["--runs-dir", "outs"]
    )
    run_cli(monitor_main, ["--runs-dir", "outs", "--port", "8600", "--print-command"])
    assert "streamlit run" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium); the AppTest tests cover the app",
)
def test_dashboard_in_a_headless_browser(runs_root, tmp_path):
    """Serve the app with `python -m cabruca.monitor` and screenshot it with headless chromium."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cabruca.monitor", "--runs-dir", str(runs_root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        shot = tmp_path / "dashboard.png"
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        # The first sessions run the script cold (imports on a busy machine): retry until the app has rendered.
        # A skeleton placeholder page is under 10 kB; the rendered dashboard (title, tabs, charts) is far more.
        for _ in range(12):
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--virtual-time-budget=30000",
                    "--window-size=1400,1000",
                    f"--screenshot={shot}",
                    f"http://127.0.0.1:{port}",
                ],
                check=True,
                timeout=120,
                capture_output=True,
                env={**os.environ, "HOME": str(tmp_path)},
            )
            if shot.stat().st_size > 30_000:
                break
            time.sleep(5)
        assert shot.stat().st_size > 30_000
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
