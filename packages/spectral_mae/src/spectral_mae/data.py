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

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.errors import DataError
from common.sampler import ResumableSampler
from common.seeding import sample_rng

# the torch-free cube layer, re-exported: dataset code and callers read them from here as before
from spectral_mae.cubes import (  # noqa: E402, F401
    CUBE_KEY,
    RGB_KEY,
    RGB_WAVELENGTHS_NM,
    TRANSFORMS,
    IndexRow,
    compute_band_stats,
    cube_to_rgb,
    load_band_stats,
    read_cube,
    read_index,
    save_band_stats,
    split_files,
    validate_cube_file,
)


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
