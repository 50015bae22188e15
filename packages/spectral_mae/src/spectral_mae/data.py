"""Hyperspectral dataset: a CSV index of HDF5 cubes (bands, H, W), validated up front, normalised per band.

CSV columns: `path` (absolute, or relative to the CSV's folder) and optional `split` (train/val/test; rows
without a split column are all "train"). Each HDF5 file holds dataset `cube` (bands, H, W) and optionally
`rgb` (H, W, 3) uint8 for visualisation (made from three bands when absent).

Randomness (augmentation and the MAE mask noise) comes from `common.seeding.sample_rng(seed, epoch, index)`,
and the loaders ask for `(epoch, index)` keys (`EpochKeyedBatches`), so a sample is a pure function of
(seed, epoch, index): the same with any worker count, in any process of a DDP run, and after a mid-epoch
resume.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.errors import DataError
from common.runs import atomic_write_text
from common.sampler import ResumableSampler
from common.seeding import sample_rng

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


class SegmentationDataset(Dataset):
    """Hyperspectral cubes of one split. Items: {"cube": (C, H, W) float32, "index": int,
    "noise": (num_tokens,) float32 when num_tokens is set, "rgb": (H, W, 3) uint8 when load_rgb}.

    `dataset[(epoch, index)]` draws augmentation and mask noise from sample_rng(seed, epoch, index);
    `dataset[index]` is the same as `dataset[(0, index)]`.
    """

    def __init__(
        self,
        csv_file,
        split: str = "train",
        *,
        bands: int,
        img_size: int,
        patch_size: int,
        stats_file: str | Path | None = None,
        normalize: bool = True,
        transform_type: str = "none",
        load_rgb: bool = False,
        num_tokens: int | None = None,
        seed: int = 0,
        validate: bool = True,
    ):
        if transform_type not in TRANSFORMS:
            raise DataError(f"dataset.transform_type='{transform_type}' is not one of {sorted(TRANSFORMS)}.")
        self.files = split_files(csv_file, split)
        for path in self.files:  # fail before training starts, naming the bad file
            validate_cube_file(
                path, bands=bands, img_size=img_size, patch_size=patch_size, check_values=validate
            )
        self.transforms = TRANSFORMS[transform_type]
        self.normalize, self.load_rgb, self.num_tokens, self.seed = normalize, load_rgb, num_tokens, seed
        stats_path = Path(stats_file) if stats_file else Path(csv_file).parent / "band_stats.json"
        self.mean, self.std = load_band_stats(stats_path, bands) if normalize else (None, None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.files[index]
        with h5py.File(path, "r") as f:
            cube = np.asarray(f[CUBE_KEY][()], dtype=np.float32)  # (C, H, W)
            rgb = np.asarray(f[RGB_KEY][()], dtype=np.uint8) if self.load_rgb and RGB_KEY in f else None
        if self.load_rgb and rgb is None:
            rgb = cube_to_rgb(cube)
        if self.normalize:
            cube = (cube - self.mean[:, None, None]) / self.std[:, None, None]
        rng = sample_rng(self.seed, epoch, index)
        cube, rgb = self._augment(cube, rgb, rng)
        item: dict[str, torch.Tensor | int] = {
            "cube": torch.from_numpy(np.ascontiguousarray(cube)),
            "index": index,
        }
        if self.num_tokens:
            # MAE mask noise drawn here so the mask depends only on (seed, epoch, index), not on the rank.
            item["noise"] = torch.from_numpy(rng.random(self.num_tokens, dtype=np.float32))
        if rgb is not None:
            item["rgb"] = torch.from_numpy(np.ascontiguousarray(rgb))
        return item

    def _augment(self, cube: np.ndarray, rgb: np.ndarray | None, rng: np.random.Generator):
        """Same flips / 90-degree rotation on the cube (C, H, W) and the RGB image (H, W, 3)."""
        # Draw every decision even when unused, so the mask noise that follows is the same for every preset.
        hflip, vflip, turns = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
        if "hflip" in self.transforms and hflip:
            cube, rgb = cube[:, :, ::-1], None if rgb is None else rgb[:, ::-1]
        if "vflip" in self.transforms and vflip:
            cube, rgb = cube[:, ::-1], None if rgb is None else rgb[::-1]
        if "rot90" in self.transforms and turns:
            cube = np.rot90(cube, turns, axes=(1, 2))
            rgb = None if rgb is None else np.rot90(rgb, turns, axes=(0, 1))
        return cube, rgb


class EpochKeyedBatches:
    """A DataLoader `batch_sampler` over a `common.sampler.ResumableSampler` whose batches are lists of
    `(epoch, index)` keys, so `SegmentationDataset` draws each sample's augmentation and mask noise for the
    epoch the sampler is set to.

    The sampler decides everything else: the epoch order (`epoch_permutation(n, seed, epoch)`), the first
    batch of a resumed epoch (`set_epoch(epoch, start_batch)`) and, in DDP, this rank's contiguous slice of
    every global batch. So a sample is the same in any process and after a mid-epoch resume.
    """

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, index) for index in batch]


def keyed_loader(
    dataset: SegmentationDataset, sampler: ResumableSampler, *, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader reading `dataset[(epoch, index)]` in the sampler's batches.

    It gets its own `torch.Generator`: iterating a DataLoader draws a base seed for its workers, from torch's
    global RNG unless the loader has a generator, and that draw would make a resumed run's RNG state differ
    from an uninterrupted one's. Samples never use that seed (their randomness is `sample_rng`).
    """
    return DataLoader(
        dataset,
        batch_sampler=EpochKeyedBatches(sampler),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )
