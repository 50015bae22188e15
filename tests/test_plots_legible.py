"""Every PNG a run writes is legible: drawn through each package's own plotting functions from a tiny
synthetic history (and tiny images), each figure is checked before it is saved (titles, axis labels, a legend
where several series share an axis: `common.plots.figure_problems`) and each file after (not blank, not too
small to read)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from common.plots import figure_problems, plot_curves

MIN_WIDTH, MIN_HEIGHT = 400, 250  # pixels: a panel's labels are readable at its written size
MIN_PIXEL_STD = 8.0  # grey levels: a blank or single-colour image is far below


def synthetic_history(path, names, epochs=6):
    """A JsonHistory file with falling curves for `names`, one row per epoch."""
    metrics = {
        name: [{"step": 3 * (e + 1), "value": (k + 1) / (e + 1), "time": 0.0} for e in range(epochs)]
        for k, name in enumerate(names)
    }
    path.write_text(json.dumps({"params": {}, "metrics": metrics}))
    return path


@pytest.fixture
def saved_figures(monkeypatch):
    """Every Figure saved while the test runs, with the file it went to (figures render to memory first)."""
    saved = []
    original = Figure.savefig

    def recording_savefig(self, fname, *args, **kwargs):
        saved.append(self)
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return saved


def assert_legible_png(path, min_width=MIN_WIDTH):
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert width >= min_width and height >= MIN_HEIGHT, f"{path.name} is only {width}x{height} px"
    assert pixels.std() > MIN_PIXEL_STD, f"{path.name} is blank (pixel std {pixels.std():.1f})"


def assert_all_legible(paths, figures):
    assert len(figures) == len(paths) > 0
    for fig in figures:
        assert figure_problems(fig) == [], figure_problems(fig)
    for path in paths:
        assert_legible_png(path)


def test_the_check_catches_an_unlabelled_figure():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [1, 0], label="train/loss")
    ax.plot([0, 1], [2, 1], label="val/loss")
    assert figure_problems(fig) == [
        "panel 1 has no title",
        "panel 1 has no x label",
        "panel 1 has no y label",
        "panel 1 draws 2 series without a legend",
    ]


def test_common_and_egnn_com_training_curves(tmp_path, saved_figures):
    from egnn_com.pipeline import PLOTTED, plot_training

    history = synthetic_history(tmp_path / "h.json", [*PLOTTED, "system/epoch_time_s"])
    paths = [
        plot_curves({"train/loss": [(1, 2.0), (2, 1.0)], "val/loss": [(2, 1.5)]}, tmp_path / "common.png"),
        plot_curves({}, tmp_path / "empty.png"),  # before the first epoch: says so, in words
        plot_training(history, tmp_path / "egnn_com.png", title="egnn_com egnn"),
    ]
    assert_all_legible(paths, saved_figures)


def test_dtgcnn_training_curves(tmp_path, saved_figures):
    from dtgcnn.plotting import CURVES, training_curves

    names = [f"{split}/{c}" for c in CURVES for split in ("train", "val")] + ["lr"]
    paths = [training_curves(synthetic_history(tmp_path / "h.json", names), tmp_path, 6)]
    assert_all_legible(paths, saved_figures)


def test_spectral_mae_curves_put_the_baseline_beside_the_mse(tmp_path, saved_figures):
    from spectral_mae.visualize import BASELINE_LABEL, plot_training_curves, write_prediction_figures

    names = ["train/loss", "val/loss", "val/mse", "val/mean_baseline_mse", "val/psnr", "lr"]
    paths = [plot_training_curves(synthetic_history(tmp_path / "h.json", names), tmp_path / "curves.png")]
    mse_axes = [ax for ax in saved_figures[0].axes if ax.get_ylabel() == "mse"]
    assert len(mse_axes) == 1  # one panel, not one for the baseline
    assert {line.get_label() for line in mse_axes[0].lines} == {"val/mse", BASELINE_LABEL}

    rng = np.random.default_rng(0)
    cube = rng.uniform(0.1, 0.9, (2, 12, 16, 16)).astype(np.float32)  # (B, bands, H, W)
    recon = cube + rng.normal(0, 0.05, cube.shape).astype(np.float32)
    mask = (rng.uniform(size=cube.shape) < 0.75).astype(np.float32)
    paths += write_prediction_figures(
        tmp_path / "pred", "epoch_0001", cube, recon, mask, np.linspace(0.1, 0.2, 12)
    )
    assert_all_legible(paths, saved_figures)


def test_cabruca_curves_and_overlays(tmp_path, saved_figures):
    from cabruca.callbacks import HistoryPlot, plotted
    from cabruca.config import SEMANTIC_CLASSES
    from cabruca.evaluation import PALETTE
    from cabruca.overlay_plots import write_overlay_figure

    names = ["train/loss", "val/loss", "val/mAP", "val/mIoU", "lr", "train/semantic", "system/epoch_time_s"]
    history = synthetic_history(tmp_path / "h.json", names)
    assert not plotted("system/epoch_time_s")
    HistoryPlot(history, tmp_path / "training_curves.png", logger=None).on_fit_end(None, None)

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (128, 128, 3))
    overlays = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    overlay = write_overlay_figure(image, *overlays, SEMANTIC_CLASSES, PALETTE, tmp_path / "tile.png")
    assert_all_legible([tmp_path / "training_curves.png", overlay], saved_figures)
    assert_legible_png(overlay, min_width=800)
    assert saved_figures[1].legends  # the class colours are named
