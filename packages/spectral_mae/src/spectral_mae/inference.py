"""A trained model applied to a whole scene: the scene's bands selected and standardised as in training, cut
into model-sized tiles, run through the encoder (embeddings) or the full MAE (reconstructions), stitched back.

Tiles are `model.img_size` squares laid edge to edge from the top-left pixel; the scene is mirrored past its
right and bottom edges up to a whole number of tiles, and the outputs are cropped back, so patch (i, j) of
the output always covers pixels [i*p, (i+1)*p) x [j*p, (j+1)*p) of the scene. Pixels holding NaN, inf or the
no-data value are set to the band mean (0 once standardised) and reported in the `valid` map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import DataError
from spectral_mae.bands import select_bands
from spectral_mae.config import SpectralMAEConfig
from spectral_mae.data import load_band_stats

# the pooling choices live with the command (which must not import this torch module to show its --help)
from spectral_mae.embed import POOLING
from spectral_mae.factory import load_from_checkpoint
from spectral_mae.model import MaskedAutoencoderSpectral
from spectral_mae.prepare import read_prepare_record
from spectral_mae.scenes import Scene


@dataclass
class TrainedModel:
    """A checkpoint's model with what it was trained on: its band statistics and band selection."""

    model: MaskedAutoencoderSpectral
    cfg: SpectralMAEConfig
    checkpoint: Path
    mean: np.ndarray  # (C,) per-band train mean, physical units
    std: np.ndarray  # (C,)
    prepared: dict | None  # prepare.json of the training data, when it was made by spectral_mae.prepare

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained_model(checkpoint, device: torch.device, stats_file=None) -> TrainedModel:
    """The model and its normalisation: `stats_file`, else the band statistics the run trained with."""
    model, cfg = load_from_checkpoint(checkpoint, device)
    data_dir = Path(cfg.dataset.csv_file).parent
    stats = Path(stats_file or cfg.dataset.stats_file or data_dir / "band_stats.json")
    if not stats.is_file():
        raise DataError(
            f"Band statistics {stats} (those {Path(checkpoint).name} was trained with) do not exist here; "
            "pass the training data's band_stats.json with --stats."
        )
    mean, std = load_band_stats(stats, cfg.model.in_chans)
    return TrainedModel(model, cfg, Path(checkpoint), mean, std, read_prepare_record(stats.parent))


def model_bands(trained: TrainedModel, scene: Scene, spec: str | None, count: int | None) -> list[int]:
    """The scene's bands the model reads: --bands / --num-bands, else the selection prepare made for the
    training data, else every band. A prepared cube file already holds only the selected bands."""
    if not (spec or count) and trained.prepared and not scene.extra.get("prepared_cube"):
        indices = trained.prepared["band_indices"]
        out_of_range = [i for i in indices if i >= scene.bands]
        if out_of_range:
            raise DataError(
                f"{scene.path.name}: the training data used bands {trained.prepared['bands']} of its scenes, "
                f"but this scene has {scene.bands} bands; pass --bands for this scene."
            )
    else:
        indices = select_bands(spec, count, scene.bands, scene.path.name)
    expected = trained.cfg.model.in_chans
    if len(indices) != expected:
        raise DataError(
            f"{scene.path.name}: {len(indices)} bands selected, but {trained.checkpoint.name} reads {expected} "
            "(model.in_chans); select them with --bands or --num-bands as for the training data."
        )
    return indices


def read_standardised(trained: TrainedModel, scene: Scene, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float32 standardised cube with invalid values set to 0, and the (H, W) valid-pixel map."""
    cube = np.moveaxis(scene.read_all(bands), -1, 0)  # (C, H, W), physical units
    valid = np.isfinite(cube).all(axis=0)
    cube = (cube - trained.mean[:, None, None]) / trained.std[:, None, None]
    cube[:, ~valid] = 0.0
    return cube.astype(np.float32), valid


def tile_batches(cube: np.ndarray, size: int, batch_size: int):
    """Mirror-pad (C, H, W) to whole tiles; yield ((row, col) tile origins, (B, C, size, size) tensor)."""
    _, height, width = cube.shape
    padded = np.pad(cube, ((0, 0), (0, -height % size), (0, -width % size)), mode="symmetric")
    origins = [(r, c) for r in range(0, padded.shape[1], size) for c in range(0, padded.shape[2], size)]
    for k in range(0, len(origins), batch_size):
        chunk = origins[k : k + batch_size]
        yield chunk, torch.from_numpy(np.stack([padded[:, r : r + size, c : c + size] for r, c in chunk]))


@torch.no_grad()
def encode_scene(
    trained: TrainedModel, cube: np.ndarray, *, pooling: str = "mean", batch_size: int = 8
) -> np.ndarray:
    """Patch embeddings of a standardised (C, H, W) cube: (ceil(H/p), ceil(W/p), D), D = encoder width for
    `mean` (average over the spectral groups of a location) or groups x width for `concat`."""
    if pooling not in POOLING:
        raise DataError(f"--pool {pooling!r} is not one of {POOLING}.")
    net = trained.model.eval()
    p, n, groups, size = net.p, net.grid, net.groups, net.img_size
    _, height, width = cube.shape
    rows, cols = math.ceil(height / p), math.ceil(width / p)
    out = None
    for origins, tiles in tile_batches(cube, size, batch_size):
        latent = net.forward_features(tiles.to(trained.device)).float()  # (B, L, D), L = G * n * n
        tokens = latent.reshape(len(origins), groups, n, n, -1)  # (B, G, n, n, D)
        # mean: (B, n, n, D); concat: (B, n, n, G*D), groups in spectral order
        grid = tokens.mean(1) if pooling == "mean" else tokens.permute(0, 2, 3, 1, 4).flatten(3)
        grid = grid.cpu().numpy()
        if out is None:
            out = np.zeros(
                (math.ceil(height / size) * n, math.ceil(width / size) * n, grid.shape[-1]), np.float32
            )
        for (r, c), patch_grid in zip(origins, grid, strict=True):
            out[r // p : r // p + n, c // p : c // p + n] = patch_grid
    return out[:rows, :cols]


@torch.no_grad()
def reconstruct_scene(
    trained: TrainedModel,
    cube: np.ndarray,
    *,
    mask_ratio: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> np.ndarray:
    """The MAE's reconstruction of a standardised (C, H, W) cube, every voxel predicted while hidden.

    Each tile is run in K passes whose visible tokens are disjoint slices of one random permutation (the
    share the model was trained to see: 1 - mask_ratio); a token's reconstruction is the mean of its
    predictions over the passes that hid it, so no output value is copied from the input.
    """
    net = trained.model.eval()
    ratio = net.mask_ratio if mask_ratio is None else mask_ratio
    length = net.num_patches
    keep = int(length * (1 - ratio))
    if not 0 < keep < length:
        raise DataError(
            f"--mask-ratio {ratio} must hide some tokens and keep some ({length} tokens per tile)."
        )
    order = np.random.default_rng(seed).permutation(length)
    passes = math.ceil(length / keep)
    _, height, width = cube.shape
    out = np.zeros(
        (cube.shape[0],) + tuple(math.ceil(d / net.img_size) * net.img_size for d in (height, width)),
        np.float32,
    )
    for origins, tiles in tile_batches(cube, net.img_size, batch_size):
        tiles = tiles.to(trained.device)
        total = torch.zeros(len(origins), length, net.patch_dim, device=trained.device)
        hidden_count = torch.zeros(len(origins), length, 1, device=trained.device)
        for k in range(passes):
            visible = np.roll(order, -k * keep)[:keep]
            noise = torch.ones(length)
            noise[torch.from_numpy(visible)] = torch.arange(keep, dtype=torch.float32) / length  # kept first
            pred, mask = net(
                tiles, noise.expand(len(origins), -1).to(trained.device), ratio
            )  # (B, L, tpp), (B, L)
            total += pred.float() * mask.unsqueeze(-1)
            hidden_count += mask.unsqueeze(-1)
        recon = net.unpatchify(total / hidden_count).cpu().numpy()  # (B, C, size, size)
        for (r, c), tile in zip(origins, recon, strict=True):
            out[:, r : r + net.img_size, c : c + net.img_size] = tile
    return out[:, :height, :width]


def destandardise(trained: TrainedModel, cube: np.ndarray) -> np.ndarray:
    """(C, H, W) standardised -> physical units."""
    return cube * trained.std[:, None, None] + trained.mean[:, None, None]
