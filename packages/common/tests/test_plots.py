"""common.plots: PNG files from metric series and from a JsonHistory file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.errors import DataError
from common.plots import _group_by_suffix, plot_curves, plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, which must come first."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_curves_writes_a_valid_png(tmp_path):
    series = {
        "train/loss": [(i, 1.0 / (i + 1)) for i in range(20)],
        "val/loss": [(i, 1.2 / (i + 1)) for i in range(0, 20, 5)],
        "val/accuracy": [(i, i / 20) for i in range(0, 20, 5)],
        "lr": [(i, 1e-3) for i in range(20)],
    }
    out = plot_curves(series, tmp_path / "plots" / "training_curves_epoch_0010.png", title="run")
    assert out == tmp_path / "plots" / "training_curves_epoch_0010.png"
    width, height = png_size(out)
    assert width == 1500 and height == 350  # 3 groups (loss, accuracy, lr) side by side at 100 dpi
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_metrics_sharing_a_suffix_share_an_axis():
    groups = _group_by_suffix({"train/loss": [], "val/loss": [], "val/map": [], "lr": []})
    assert groups == {"loss": ["train/loss", "val/loss"], "map": ["val/map"], "lr": ["lr"]}


def test_non_finite_and_empty_series_do_not_break_plotting(tmp_path):
    series = {"loss": [(0, float("nan")), (1, float("inf")), (2, 0.5)], "empty": []}
    assert png_size(plot_curves(series, tmp_path / "a.png")) == (1000, 350)
    assert png_size(plot_curves({}, tmp_path / "none.png")) == (500, 350)


def test_plot_history_reads_jsonhistory_format(tmp_path):
    history = {
        "params": {"lr": 0.001},
        "metrics": {
            "train/loss": [{"step": s, "value": 2.0 - 0.1 * s, "time": 0.0} for s in range(10)],
            "val/loss": [{"step": s, "value": 2.1 - 0.1 * s, "time": 0.0} for s in range(0, 10, 2)],
        },
    }
    path = tmp_path / "metrics_history.json"
    path.write_text(json.dumps(history))
    out = plot_history(path, tmp_path / "curves.png", xlabel="epoch")
    assert png_size(out) == (500, 350)


def test_plot_history_bad_input_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        plot_history(tmp_path / "missing.json", tmp_path / "x.png")
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": {"loss": [{"value": 1}]}}')
    with pytest.raises(DataError, match="not a Trainyard history file"):
        plot_history(bad, tmp_path / "x.png")


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, common.plots; assert 'matplotlib' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_plotting_never_switches_the_pyplot_backend(tmp_path):
    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
        "from common.plots import plot_curves\n"
        f"plot_curves({{'loss': [(0, 1.0), (1, 0.5)]}}, {str(tmp_path / 'p.png')!r})\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
