"""What `spectral_mae.embed --reconstruct DIR` writes about a scene's reconstruction: figures and metrics.

Metrics are in the scene's physical units (what `prepare` stored: reflectance when the ENVI header gives a
scale factor, the file's own units otherwise), over valid pixels, each name carrying its unit; the
standardised-units MSE (per-band z-scores, the training loss's units) is given beside them and says so.

    DIR/comparison.png        original | reconstruction (same false-colour bands, same stretch) | RMSE map
    DIR/band_error.png        RMSE per band (x: wavelength in nm when known)
    DIR/band_errors.csv       band, wavelength_nm, rmse, rmse_standardised
    DIR/metrics.json          rmse, mse, mae, psnr_db, sam_deg, mse_standardised, with their units
    DIR/reconstruction.h5     `cube` (bands, H, W) in physical units, `original`, `valid`
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
from matplotlib.figure import Figure

from common.errors import DataError
from common.plots import save_figure
from spectral_mae.data import RGB_WAVELENGTHS_NM


def false_colour_bands(num_bands: int, wavelengths_nm: np.ndarray | None, spec: str | None) -> list[int]:
    """Three positions among the model's bands for red, green, blue: `spec` ("12,7,2"), else the bands
    nearest 640/550/460 nm, else bands at fixed relative positions (as the training figures pick them)."""
    if spec:
        try:
            picks = [int(v) for v in spec.split(",")]
        except ValueError as exc:
            raise DataError(f"--rgb-bands '{spec}' must be three band positions such as 12,7,2.") from exc
        if len(picks) != 3 or not all(0 <= b < num_bands for b in picks):
            raise DataError(
                f"--rgb-bands '{spec}' must name three positions among the model's {num_bands} bands (0-{num_bands - 1})."
            )
        return picks
    if wavelengths_nm is not None:
        return [int(np.argmin(np.abs(np.asarray(wavelengths_nm) - w))) for w in RGB_WAVELENGTHS_NM]
    return [min(round(num_bands * f), num_bands - 1) for f in (0.45, 0.25, 0.05)]


def reconstruction_metrics(
    original: np.ndarray, recon: np.ndarray, valid: np.ndarray, std: np.ndarray, units: str
) -> dict:
    """original, recon: (C, H, W) physical units; valid: (H, W); std: (C,) the training band std."""
    if not valid.any():
        raise DataError(
            "The scene has no valid pixel (all NaN, inf or no-data) to compare a reconstruction with."
        )
    orig, rec = original[:, valid].astype(np.float64), recon[:, valid].astype(np.float64)  # (C, N)
    err = rec - orig
    mse = float((err**2).mean())
    data_range = float(orig.max() - orig.min()) or 1.0
    cosine = (orig * rec).sum(0) / np.maximum(
        np.linalg.norm(orig, axis=0) * np.linalg.norm(rec, axis=0), 1e-12
    )
    band_rmse = np.sqrt((err**2).mean(1))
    return {
        "units": units,
        "rmse": math.sqrt(mse),
        "rmse_units": units,
        "mse": mse,
        "mse_units": f"({units})^2",
        "mae": float(np.abs(err).mean()),
        "mae_units": units,
        "psnr_db": 10 * math.log10(data_range**2 / max(mse, 1e-30)),
        "psnr_data_range": data_range,
        "sam_deg": float(np.degrees(np.arccos(np.clip(cosine, -1, 1))).mean()),
        "mse_standardised": float(((err / std[:, None]) ** 2).mean()),
        "mse_standardised_units": "per-band z-scores (training loss units), not physical",
        "band_rmse": band_rmse.tolist(),
        "band_rmse_standardised": (band_rmse / std).tolist(),
        "valid_pixels": int(valid.sum()),
    }


def _rgb(cube: np.ndarray, picks: list[int], lo: float, hi: float) -> np.ndarray:
    return np.clip((cube[picks].transpose(1, 2, 0) - lo) / max(hi - lo, 1e-12), 0, 1)


def write_scene_report(
    out_dir: Path,
    original: np.ndarray,
    recon: np.ndarray,
    valid: np.ndarray,
    *,
    std: np.ndarray,
    units: str,
    wavelengths_nm: np.ndarray | None,
    band_indices: list[int],
    rgb_bands: str | None = None,
    title: str = "",
    dpi: int = 120,
) -> dict:
    """Write the figures, CSV, metrics and reconstruction cube; returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = reconstruction_metrics(original, recon, valid, std, units)
    picks = false_colour_bands(original.shape[0], wavelengths_nm, rgb_bands)
    metrics["false_colour_bands"] = [band_indices[b] for b in picks]  # the scene's band indices
    shown = original[picks][:, valid]
    lo, hi = np.percentile(shown, 2), np.percentile(shown, 98)  # one stretch for both, so colours compare
    rmse_map = np.sqrt(((recon - original) ** 2).mean(0))
    rmse_map[~valid] = np.nan
    fig = Figure(figsize=(13, 4.4))
    axes = fig.subplots(1, 3)
    axes[0].imshow(_rgb(original, picks, lo, hi))
    axes[0].set_title("original")
    axes[1].imshow(_rgb(recon, picks, lo, hi))
    axes[1].set_title("reconstruction (every patch predicted while hidden)")
    image = axes[2].imshow(rmse_map, cmap="magma")
    axes[2].set_title(f"RMSE per pixel ({units})")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    names = ", ".join(str(metrics["false_colour_bands"][k]) for k in range(3))
    fig.suptitle(f"{title} false colour: bands {names} as R, G, B; RMSE {metrics['rmse']:.4g} {units}")
    fig.tight_layout()
    save_figure(fig, out_dir / "comparison.png", dpi=dpi)

    x = np.asarray(wavelengths_nm) if wavelengths_nm is not None else np.asarray(band_indices)
    fig = Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    ax.plot(x, metrics["band_rmse"], marker="o")
    ax.set_xlabel("wavelength (nm)" if wavelengths_nm is not None else "band index in the scene")
    ax.set_ylabel(f"RMSE ({units})")
    ax.set_title("Reconstruction error per band")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_dir / "band_error.png", dpi=dpi)

    with (out_dir / "band_errors.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["band", "wavelength_nm", f"rmse ({units})", "rmse_standardised (z-score)"])
        for k, band in enumerate(band_indices):
            wavelength = "" if wavelengths_nm is None else f"{wavelengths_nm[k]:.3f}"
            writer.writerow([band, wavelength, metrics["band_rmse"][k], metrics["band_rmse_standardised"][k]])
    with h5py.File(out_dir / "reconstruction.h5", "w") as f:
        f.create_dataset("cube", data=recon.astype(np.float32), compression="gzip")
        f.create_dataset("original", data=original.astype(np.float32), compression="gzip")
        f.create_dataset("valid", data=valid)
        f.attrs["units"] = units
        f.attrs["band_indices"] = np.asarray(band_indices)
        if wavelengths_nm is not None:
            f.attrs["wavelengths_nm"] = np.asarray(wavelengths_nm)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
