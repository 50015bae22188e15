"""`python -m spectral_mae.embed --checkpoint CKPT --input SCENE --output OUT.h5|OUT.npy`: embeddings of a
scene from a trained encoder, and with `--reconstruct DIR` its reconstruction as images and metrics.

    python -m spectral_mae.embed --checkpoint run/checkpoints/best_model.ckpt --input scene.hdr --output emb.h5
    python -m spectral_mae.embed --checkpoint CKPT --input scene.tif --output emb.npy --level pixel
    python -m spectral_mae.embed --checkpoint CKPT --input scene.mat --reconstruct recon/

Levels:
- `patch` (default): (ceil(H/p), ceil(W/p), D): the encoder's tokens with nothing hidden, the spectral
  groups of each location averaged (`--pool mean`, D = encoder width) or concatenated (`--pool concat`,
  D = groups x width); entry (i, j) covers pixels [i*p, (i+1)*p) x [j*p, (j+1)*p).
- `pixel`: (H, W, D): the patch grid upsampled bilinearly, each patch's embedding placed at its centre, so a
  pixel's embedding is a distance-weighted blend of the nearest patches' (the encoder itself has no
  finer resolution than a patch).

The bands and their standardisation are the training data's (its band_stats.json and, when it was made by
`spectral_mae.prepare`, the same band selection); `--bands`/`--num-bands` and `--stats` override them.
HDF5 output: dataset `embeddings`, `valid` (share of valid pixels per patch, or per pixel) and attributes
(checkpoint, source, level, pooling, band_indices, wavelengths_nm, patch_size, img_size, ...); `.npy`
output: the array, with the same metadata in OUT.json beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click
import h5py
import numpy as np

from common.cli import console_script, device_option, overwrite_option, run_cli
from common.devices import torch_device
from common.errors import DataError
from spectral_mae.scenes import open_scene

if TYPE_CHECKING:
    from spectral_mae.inference import TrainedModel

# The model code (torch, timm) is imported inside the functions that run it, so `--help` answers at once.
POOLING = ("mean", "concat")  # how the spectral groups' tokens of one location become one embedding

LEVELS = ("patch", "pixel")
OUTPUT_SUFFIXES = (".h5", ".hdf5", ".npy")


def pixel_strips(patches: np.ndarray, p: int, height: int, width: int, strip: int = 16):
    """Bilinear upsampling of a (rows, cols, D) patch grid to (height, width, D), yielded as (first pixel
    row, (h, width, D) strip) so a large scene never holds every pixel's embedding in memory.

    Each strip of patch rows is upsampled with one patch row of context on each side: bilinear weights at
    integer scale reach only the two nearest patch centres, so the strips equal one whole-grid upsampling.
    """
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(patches).permute(2, 0, 1).unsqueeze(0)  # (1, D, rows, cols)
    rows = patches.shape[0]
    for first in range(0, rows, strip):
        last = min(first + strip, rows)
        lo, hi = max(first - 1, 0), min(last + 1, rows)
        up = F.interpolate(grid[:, :, lo:hi], scale_factor=p, mode="bilinear", align_corners=False)
        top = (first - lo) * p
        pixels = up[0, :, top : top + (last - first) * p, :width].permute(1, 2, 0)  # (strip px, width, D)
        start = first * p
        yield start, pixels[: min(height, last * p) - start].numpy()


def patch_valid_share(valid: np.ndarray, p: int) -> np.ndarray:
    """(H, W) valid-pixel map -> (ceil(H/p), ceil(W/p)) share of each patch's scene pixels that are valid."""
    height, width = valid.shape
    rows, cols = math.ceil(height / p), math.ceil(width / p)
    counts = np.zeros((rows * p, cols * p))
    present = np.zeros_like(counts)
    counts[:height, :width], present[:height, :width] = valid, 1
    per_patch = lambda a: a.reshape(rows, p, cols, p).sum((1, 3))  # noqa: E731
    return (per_patch(counts) / per_patch(present)).astype(np.float32)


def write_embeddings(
    output: Path, level: str, patches: np.ndarray, valid: np.ndarray, p: int, meta: dict
) -> tuple:
    """Write the patch grid, or its pixel upsampling, to HDF5 or .npy; returns the written shape."""
    height, width = valid.shape
    shape = patches.shape if level == "patch" else (height, width, patches.shape[-1])
    valid_out = patch_valid_share(valid, p) if level == "patch" else valid
    meta = {**meta, "level": level, "shape": list(shape)}
    if output.suffix.lower() == ".npy":
        array = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=shape)
        _fill(array, level, patches, p, height, width)
        array.flush()
        del array
        output.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        return shape
    with h5py.File(output, "w") as f:
        chunks = (min(shape[0], 64), min(shape[1], 64), shape[2])
        data = f.create_dataset("embeddings", shape=shape, dtype=np.float32, chunks=chunks)
        _fill(data, level, patches, p, height, width)
        f.create_dataset("valid", data=valid_out)
        for key, value in meta.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict) else ("" if value is None else value)
    return shape


def _fill(target, level: str, patches: np.ndarray, p: int, height: int, width: int) -> None:
    if level == "patch":
        target[...] = patches
        return
    for start, pixels in pixel_strips(patches, p, height, width):
        target[start : start + pixels.shape[0]] = pixels


def embedding_metadata(
    trained: TrainedModel, source: Path, bands: list[int], wavelengths, pooling: str
) -> dict:
    m = trained.cfg.model
    return {
        "checkpoint": str(trained.checkpoint.resolve()),
        "source": str(source.resolve()),
        "model": m.name,
        "pooling": pooling,
        "pixel_upsampling": "bilinear, patch embeddings at patch centres",
        "band_indices": list(bands),
        "wavelengths_nm": None if wavelengths is None else [float(w) for w in wavelengths],
        "patch_size": list(m.patch_size),
        "img_size": m.img_size,
        "embed_dim": m.embed_dim,
    }


def check_output(output: Path | None, overwrite: bool) -> None:
    if output is None:
        return
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"--output {output}: write embeddings to a .h5 or .npy file.")
    if output.exists() and not overwrite:
        raise DataError(f"--output {output} already exists; choose another name or pass --overwrite.")


@click.command()
@click.option(
    "--checkpoint", required=True, type=click.Path(dir_okay=False), help="A spectral_mae checkpoint."
)
@click.option(
    "--input", "input_path", required=True, type=click.Path(dir_okay=False), help="Scene or cube file."
)
@click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="Embeddings file: OUT.h5 or OUT.npy."
)
@click.option(
    "--level", type=click.Choice(LEVELS), default="patch", show_default=True, help="Per patch or per pixel."
)
@click.option(
    "--pool",
    type=click.Choice(POOLING),
    default="mean",
    show_default=True,
    help="Spectral groups -> one vector.",
)
@click.option(
    "--bands", default=None, help="Scene bands, e.g. '10-40,55' (default: the training data's selection)."
)
@click.option("--num-bands", type=int, default=None, help="N bands evenly spaced (instead of --bands).")
@click.option("--variable", default=None, help=".mat files: the variable holding the scene.")
@click.option(
    "--stats",
    type=click.Path(dir_okay=False),
    default=None,
    help="Band statistics JSON (default: the run's).",
)
@click.option(
    "--reconstruct",
    "reconstruct_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write reconstruction images and metrics here.",
)
@click.option(
    "--rgb-bands", default=None, help="False-colour bands (positions among the model's bands), e.g. 12,7,2."
)
@click.option(
    "--mask-ratio",
    type=float,
    default=None,
    help="Hidden share per reconstruction pass (default: the model's).",
)
@click.option("--batch-size", default=8, show_default=True, help="Tiles per forward pass.")
@device_option(default="auto", show_default=True)
@overwrite_option(help="Replace an existing --output file.")
def main(
    checkpoint,
    input_path,
    output,
    level,
    pool,
    bands,
    num_bands,
    variable,
    stats,
    reconstruct_dir,
    rgb_bands,
    mask_ratio,
    batch_size,
    device,
    overwrite,
):
    """Per-patch or per-pixel embeddings of a scene, and its reconstruction, from a trained spectral MAE."""
    output = Path(output) if output else None
    if output is None and reconstruct_dir is None:
        raise DataError(
            "Nothing to do: give --output for embeddings and/or --reconstruct for reconstructions."
        )
    check_output(output, bool(overwrite))
    from spectral_mae.inference import (
        destandardise,
        encode_scene,
        load_trained_model,
        model_bands,
        read_standardised,
        reconstruct_scene,
    )
    from spectral_mae.scene_report import write_scene_report

    if not Path(checkpoint).is_file():
        raise DataError(f"Checkpoint {checkpoint} does not exist.")
    scene = open_scene(input_path, variable)
    trained = load_trained_model(checkpoint, torch_device(device), stats)
    band_list = model_bands(trained, scene, bands, num_bands)
    cube, valid = read_standardised(trained, scene, band_list)
    wavelengths = None
    if scene.wavelengths_nm is not None:
        wavelengths = (
            scene.wavelengths_nm if scene.extra.get("prepared_cube") else scene.wavelengths_nm[band_list]
        )
    if (~valid).any():
        click.echo(
            f"{scene.path.name}: {int((~valid).sum())} pixels hold NaN/inf/no-data; set to the band mean",
            err=True,
        )
    if output is not None:
        patches = encode_scene(trained, cube, pooling=pool, batch_size=batch_size)
        meta = embedding_metadata(trained, scene.path, band_list, wavelengths, pool)
        shape = write_embeddings(output, level, patches, valid, trained.cfg.model.patch_size[0], meta)
        click.echo(f"{level} embeddings {tuple(shape)} -> {output}")
    if reconstruct_dir is not None:
        recon = reconstruct_scene(trained, cube, mask_ratio=mask_ratio, batch_size=batch_size)
        metrics = write_scene_report(
            Path(reconstruct_dir),
            destandardise(trained, cube),
            destandardise(trained, recon),
            valid,
            std=trained.std,
            units=scene.units,
            wavelengths_nm=wavelengths,
            band_indices=band_list,
            rgb_bands=rgb_bands,
            title=scene.path.name,
        )
        click.echo(
            f"reconstruction: RMSE {metrics['rmse']:.4g} {scene.units}, PSNR {metrics['psnr_db']:.1f} dB, "
            f"SAM {metrics['sam_deg']:.2f} deg, MSE {metrics['mse_standardised']:.3f} (standardised units) "
            f"-> {reconstruct_dir}"
        )


cli = console_script(main)

if __name__ == "__main__":
    run_cli(main)
