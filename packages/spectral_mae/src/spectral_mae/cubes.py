"""Hyperspectral cube files and their CSV index, without torch: the layout (HDF5 dataset `cube` (bands, H, W)
and optional `rgb` (H, W, 3)), index reading, validation, band statistics and RGB previews.

`spectral_mae.prepare` and the commands' option parsing use these without loading torch; `spectral_mae.data`
builds the training datasets on them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.errors import DataError
from common.runs import atomic_write_text

CUBE_KEY = "cube"
RGB_KEY = "rgb"
RGB_WAVELENGTHS_NM = (640.0, 550.0, 460.0)  # red, green, blue band centres used for previews

# Augmentation presets selectable with `dataset.transform_type`.
TRANSFORMS = {
    "none": (),
    "flips": ("hflip", "vflip"),
    "augment_basic": ("hflip", "vflip", "rot90"),
}


@dataclass(frozen=True)
class IndexRow:
    path: Path
    split: str


def read_index(csv_file: str | Path) -> list[IndexRow]:
    """Rows of the CSV index with paths resolved against the CSV's folder."""
    csv_path = Path(csv_file)
    if not csv_path.is_file():
        raise DataError(
            f"Dataset index {csv_path} does not exist. Point `dataset.csv_file` at a CSV with a `path` column, "
            "or create a synthetic dataset with `python -m spectral_mae.synthetic OUT_DIR`."
        )
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(f"Dataset index {csv_path} has no `path` column (columns: {reader.fieldnames}).")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row["path"]:
                raise DataError(f"Dataset index {csv_path}, line {line}: empty `path`.")
            path = Path(row["path"])
            rows.append(
                IndexRow(path if path.is_absolute() else csv_path.parent / path, row.get("split") or "train")
            )
    return rows


def split_files(csv_file: str | Path, split: str) -> list[Path]:
    files = [r.path for r in read_index(csv_file) if r.split == split]
    if not files:
        raise DataError(f"Dataset index {csv_file} has no rows with split '{split}'.")
    return files


def validate_cube_file(
    path: Path, *, bands: int, img_size: int, patch_size: int, check_values: bool = True
) -> None:
    """DataError naming the file for: missing file/key, wrong band count or size, size not divisible, NaN/inf."""
    if not path.is_file():
        raise DataError(f"Cube file {path} listed in the dataset index does not exist.")
    try:
        with h5py.File(path, "r") as f:
            if CUBE_KEY not in f:
                raise DataError(f"Cube file {path} has no '{CUBE_KEY}' dataset (keys: {list(f.keys())}).")
            shape = f[CUBE_KEY].shape
            cube = f[CUBE_KEY][()] if check_values else None
    except OSError as exc:
        raise DataError(f"Cube file {path} is not a readable HDF5 file: {exc}.") from exc
    if len(shape) != 3 or shape[0] != bands:
        raise DataError(f"Cube file {path}: expected shape ({bands}, H, W) with {bands} bands, got {shape}.")
    _, height, width = shape
    if height % patch_size or width % patch_size:
        raise DataError(
            f"Cube file {path}: size {height}x{width} is not divisible by the spatial patch size {patch_size}."
        )
    if (height, width) != (img_size, img_size):
        raise DataError(f"Cube file {path}: size {height}x{width} differs from model.img_size={img_size}.")
    if cube is not None and not np.isfinite(cube).all():
        bad = int((~np.isfinite(cube)).sum())
        raise DataError(f"Cube file {path} contains {bad} NaN/inf values.")


def read_cube(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[CUBE_KEY][()], dtype=np.float32)


def compute_band_stats(files: list[Path]) -> dict[str, list[float]]:
    """Per-band mean and std over every pixel of every file (float64 running sums, one file in memory)."""
    total = total_sq = None
    count = 0
    for path in files:
        cube = read_cube(path).astype(np.float64)  # (bands, H, W)
        if total is None:
            total, total_sq = np.zeros(cube.shape[0]), np.zeros(cube.shape[0])
        elif cube.shape[0] != total.shape[0]:
            raise DataError(f"Cube file {path} has {cube.shape[0]} bands, the others {total.shape[0]}.")
        total += cube.sum(axis=(1, 2))
        total_sq += (cube**2).sum(axis=(1, 2))
        count += cube.shape[1] * cube.shape[2]
    if total is None:
        raise DataError("No files to compute band statistics from.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "num_files": len(files)}


def save_band_stats(stats: dict, path: str | Path) -> Path:
    atomic_write_text(Path(path), json.dumps(stats, indent=2))
    return Path(path)


def load_band_stats(path: str | Path, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 arrays of length `bands`; DataError if missing or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Band statistics file {path} does not exist. Compute it with "
            f"`python -m spectral_mae.stats <csv_file> --output {path}` or set dataset.normalize=false."
        )
    stats = json.loads(path.read_text())
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    if mean.shape != (bands,) or std.shape != (bands,):
        raise DataError(f"Band statistics {path} have {mean.shape[0]} bands, the model expects {bands}.")
    if (std <= 0).any():
        raise DataError(f"Band statistics {path}: band(s) {np.flatnonzero(std <= 0).tolist()} have zero std.")
    return mean, std


def cube_to_rgb(cube: np.ndarray, wavelengths_nm: np.ndarray | None = None) -> np.ndarray:
    """(bands, H, W) reflectance -> (H, W, 3) uint8 from the bands nearest to red/green/blue, 1-99% stretched."""
    bands = cube.shape[0]
    if wavelengths_nm is None:  # no wavelength metadata: take bands at the same relative positions
        picks = [round(bands * f) for f in (0.45, 0.25, 0.05)]
    else:
        picks = [int(np.argmin(np.abs(np.asarray(wavelengths_nm) - w))) for w in RGB_WAVELENGTHS_NM]
    rgb = np.stack([cube[min(b, bands - 1)] for b in picks], axis=-1)
    lo, hi = np.percentile(rgb, 1), np.percentile(rgb, 99)
    return (np.clip((rgb - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)
