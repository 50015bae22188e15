"""Figures written at every validation and by evaluate: RGB reconstruction (original | masked input |
prediction [| reference RGB]), MSE per wavelength, and input vs reconstructed spectra at sample pixels.

Inputs are cubes in physical units, (B, C, H, W) tensors or arrays. Figures are `matplotlib.figure.Figure`
objects rendered off-screen by `common.plots.save_figure`: importing this module never changes pyplot's
backend, so it works in a notebook beside the user's own plots. `plot_training_curves` draws the run's curves
with the mean-spectrum baseline beside the validation MSE it judges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from common.plots import plot_curves, save_figure

# The yardstick drawn on the MSE axis, beside the curve: what predicting each band's mean would score.
BASELINE = "val/mean_baseline_mse"
BASELINE_LABEL = "val/baseline: per-band mean"


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)


def _stretch(rgb: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((rgb - lo) / max(hi - lo, 1e-8), 0, 1)


def _rgb_bands(bands: int) -> list[int]:
    # Same relative positions as data.cube_to_rgb without wavelength metadata (red, green, blue).
    return [min(round(bands * f), bands - 1) for f in (0.45, 0.25, 0.05)]


def plot_rgb_reconstruction(
    original, recon, voxel_mask, path: Path, *, reference_rgb=None, dpi: int = 150
) -> Path:
    """One row per sample: original | masked input (hidden voxels grey) | reconstruction [| reference RGB]."""
    original, recon, voxel_mask = _np(original), _np(recon), _np(voxel_mask)
    picks = _rgb_bands(original.shape[1])
    columns = 4 if reference_rgb is not None else 3
    fig = Figure(figsize=(3 * columns, 3 * len(original)))
    axes = fig.subplots(len(original), columns, squeeze=False)
    for row, (orig, rec, msk) in enumerate(zip(original, recon, voxel_mask, strict=True)):
        rgb_orig = orig[picks].transpose(1, 2, 0)  # (H, W, 3)
        lo, hi = np.percentile(rgb_orig, 1), np.percentile(rgb_orig, 99)  # one stretch for all columns
        hidden = msk[picks].transpose(1, 2, 0) > 0.5
        panels = [
            _stretch(rgb_orig, lo, hi),
            np.where(hidden, 0.5, _stretch(rgb_orig, lo, hi)),
            _stretch(rec[picks].transpose(1, 2, 0), lo, hi),
        ]
        titles = ["original", "masked input", "reconstruction"]
        if reference_rgb is not None:
            panels.append(_np(reference_rgb[row]).astype(np.uint8))
            titles.append("reference RGB")
        for col, (image, title) in enumerate(zip(panels, titles, strict=True)):
            axes[row, col].imshow(image)
            axes[row, col].set_title(title, fontsize=9)
            axes[row, col].axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def plot_mse_per_wavelength(mse_per_band, path: Path, *, wavelengths_nm=None, dpi: int = 150) -> Path:
    """MSE over hidden voxels per band; x axis in nm when wavelengths are known, band index otherwise."""
    values = _np(mse_per_band)
    x = np.asarray(wavelengths_nm) if wavelengths_nm is not None else np.arange(len(values))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(x, values, marker="o")
    ax.set_xlabel("wavelength (nm)" if wavelengths_nm is not None else "band")
    ax.set_ylabel("MSE (hidden voxels)")
    ax.set_title("Reconstruction error per wavelength")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def plot_spectral_comparison(
    original, recon, path: Path, *, pixels_per_image: int = 3, seed: int = 0, dpi: int = 150
) -> Path:
    """Per sample, input vs reconstructed spectra at `pixels_per_image` fixed random pixels."""
    original, recon = _np(original), _np(recon)
    rng = np.random.default_rng(seed)  # same pixels at every validation, so figures compare across epochs
    fig = Figure(figsize=(4 * len(original), 3.2))
    axes = fig.subplots(1, len(original), squeeze=False)
    bands = np.arange(original.shape[1])
    for ax, orig, rec in zip(axes[0], original, recon, strict=True):
        for k in range(pixels_per_image):
            y, x = rng.integers(orig.shape[1]), rng.integers(orig.shape[2])
            line = ax.plot(bands, orig[:, y, x], label=f"input ({y},{x})")[0]
            ax.plot(
                bands,
                rec[:, y, x],
                "--",
                color=line.get_color(),
                label=f"output ({y},{x})" if k == 0 else None,
            )
        ax.set_xlabel("band")
        ax.set_ylabel("reflectance")
        ax.legend(fontsize=6)
    fig.suptitle("Input (solid) vs reconstruction (dashed)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def plot_training_curves(history_json: Path, path: Path, *, title: str = "") -> Path:
    """plots/training_curves.png from the run's JSON history: every metric, with the baseline on the MSE
    axis beside the validation MSE (one axis, a labelled line) instead of on a panel of its own."""
    metrics = json.loads(Path(history_json).read_text(encoding="utf-8"))["metrics"]
    series = {name: [(p["step"], p["value"]) for p in points] for name, points in metrics.items()}
    return plot_curves(series, path, title=title, groups={BASELINE: "mse"}, labels={BASELINE: BASELINE_LABEL})


def write_prediction_figures(
    folder: Path,
    tag: str,
    original,
    recon,
    voxel_mask,
    mse_per_band,
    *,
    reference_rgb=None,
    fmt: str = "png",
    dpi: int = 150,
    pixels_per_image: int = 3,
) -> list[Path]:
    """The three figures for one validation (tag e.g. "epoch_0010"), named <kind>_<tag>.<fmt>."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_rgb_reconstruction(
            original,
            recon,
            voxel_mask,
            folder / f"rgb_reconstruction_{tag}.{fmt}",
            reference_rgb=reference_rgb,
            dpi=dpi,
        ),
        plot_mse_per_wavelength(mse_per_band, folder / f"mse_per_wavelength_{tag}.{fmt}", dpi=dpi),
        plot_spectral_comparison(
            original,
            recon,
            folder / f"spectral_comparison_{tag}.{fmt}",
            pixels_per_image=pixels_per_image,
            dpi=dpi,
        ),
    ]
