"""Deterministic synthetic hyperspectral cubes in the dataset's own format (HDF5 cubes + CSV index + band stats).

Each cube is a linear mixture of a few smooth endmember spectra (think tissue, pigment, blood, background),
with abundances that vary smoothly in space (coherent regions) plus thin vessel-like curves carrying a
haemoglobin-like spectrum. Neighbouring patches and neighbouring bands are therefore strongly correlated,
which is exactly the structure a masked autoencoder can learn to fill in; plain noise would not be learnable.

    python -m spectral_mae.synthetic OUT_DIR --num-images 12 --size 60 --bands 30
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import click
import h5py
import numpy as np

from common.cli import run_cli
from common.errors import DataError
from spectral_mae.data import CUBE_KEY, RGB_KEY, compute_band_stats, cube_to_rgb, save_band_stats

# Wavelength range of a typical retinal hyperspectral camera (nm); band centres are spread evenly over it.
WAVELENGTH_RANGE_NM = (450.0, 900.0)


@dataclass(frozen=True)
class SyntheticSpec:
    num_images: int = 12
    size: int = 60  # height == width, pixels
    bands: int = 30
    num_endmembers: int = 4
    num_vessels: int = 3
    val_fraction: float = 0.25
    noise_std: float = 0.005  # additive sensor noise, reflectance units
    seed: int = 0


def wavelengths(bands: int) -> np.ndarray:
    """Band centres in nm, (bands,)."""
    return np.linspace(*WAVELENGTH_RANGE_NM, bands)


def endmember_spectra(rng: np.random.Generator, bands: int, count: int) -> np.ndarray:
    """Smooth reflectance spectra in (0, 1), (count, bands): a baseline slope plus two Gaussian bumps each."""
    lam = np.linspace(0.0, 1.0, bands)
    spectra = []
    for _ in range(count):
        base = rng.uniform(0.15, 0.45) + rng.uniform(-0.15, 0.25) * lam
        for _ in range(2):
            centre, width, height = rng.uniform(0, 1), rng.uniform(0.08, 0.25), rng.uniform(-0.2, 0.3)
            base = base + height * np.exp(-0.5 * ((lam - centre) / width) ** 2)
        spectra.append(np.clip(base, 0.03, 0.95))
    return np.stack(spectra)


def haemoglobin_like(bands: int) -> np.ndarray:
    """Vessel spectrum: dark in the blue-green (absorption near 420/540/575 nm), bright in the near infrared."""
    lam = wavelengths(bands)
    absorption = (
        0.5 * np.exp(-0.5 * ((lam - 420) / 30) ** 2)
        + 0.35 * np.exp(-0.5 * ((lam - 545) / 15) ** 2)
        + 0.35 * np.exp(-0.5 * ((lam - 577) / 12) ** 2)
    )
    return np.clip(0.08 + 0.5 / (1 + np.exp(-(lam - 600) / 25)) - absorption, 0.02, 0.9)


def smooth_field(rng: np.random.Generator, size: int, correlation_px: float) -> np.ndarray:
    """Spatially coherent random field, (size, size), zero mean, unit std: white noise low-passed in Fourier space."""
    noise = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (np.pi * correlation_px) ** 2 * radius2)))
    return (field - field.mean()) / (field.std() + 1e-12)


def vessel_map(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Thin curved lines like retinal vessels, (size, size) in [0, 1]: smooth random walks from a common disc."""
    canvas = np.zeros((size, size))
    centre = rng.uniform(0.3, 0.7, size=2) * size  # the "optic disc" the vessels leave from
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(count):
        position, heading = centre.copy(), rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.8, 1.6) * max(size / 100.0, 0.6)
        for _ in range(int(1.5 * size)):
            heading += rng.normal(0, 0.12)
            position = position + np.array([np.sin(heading), np.cos(heading)])
            if not (0 <= position[0] < size and 0 <= position[1] < size):
                break
            dist2 = (yy - position[0]) ** 2 + (xx - position[1]) ** 2
            canvas = np.maximum(canvas, np.exp(-0.5 * dist2 / width**2))
    return canvas


def make_cube(spec: SyntheticSpec, index: int) -> np.ndarray:
    """One reflectance cube, (bands, size, size) float32, a pure function of (spec.seed, index)."""
    rng = np.random.default_rng([spec.seed, index])
    # Endmembers vary a little per image (same scene type, different eyes) around a shared set.
    shared = endmember_spectra(np.random.default_rng([spec.seed, 10**6]), spec.bands, spec.num_endmembers)
    endmembers = np.clip(shared * rng.uniform(0.9, 1.1, size=(spec.num_endmembers, 1)), 0.02, 0.98)
    # Abundances: softmax over smooth fields -> coherent regions whose shares sum to one at every pixel.
    logits = np.stack([3.0 * smooth_field(rng, spec.size, spec.size / 6) for _ in range(spec.num_endmembers)])
    abundances = np.exp(logits - logits.max(0))
    abundances /= abundances.sum(0)  # (E, H, W)
    cube = np.einsum("eb,ehw->bhw", endmembers, abundances)  # (bands, H, W)
    vessels = vessel_map(rng, spec.size, spec.num_vessels)  # (H, W)
    cube = cube * (1 - vessels) + haemoglobin_like(spec.bands)[:, None, None] * vessels
    cube = cube + rng.normal(0, spec.noise_std, size=cube.shape)
    return np.clip(cube, 0.0, 1.0).astype(np.float32)


def write_dataset(out_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Write cubes/*.h5, previews/*.png, dataset.csv (path, split) and band_stats.json; returns the CSV path."""
    if spec.num_images < 2:
        raise DataError(
            f"--num-images must be at least 2 (one train and one val image), got {spec.num_images}."
        )
    out = Path(out_dir)
    (out / "cubes").mkdir(parents=True, exist_ok=True)
    (out / "previews").mkdir(exist_ok=True)
    num_val = min(max(1, round(spec.num_images * spec.val_fraction)), spec.num_images - 1)
    rows = []
    for index in range(spec.num_images):
        cube = make_cube(spec, index)
        rgb = cube_to_rgb(cube, wavelengths(spec.bands))
        name = f"cube_{index:04d}"
        with h5py.File(out / "cubes" / f"{name}.h5", "w") as f:
            f.create_dataset(CUBE_KEY, data=cube)
            f.create_dataset(RGB_KEY, data=rgb)
            f.attrs["wavelengths_nm"] = wavelengths(spec.bands)
        _save_png(rgb, out / "previews" / f"{name}.png")
        rows.append(
            {"path": f"cubes/{name}.h5", "split": "val" if index >= spec.num_images - num_val else "train"}
        )
    csv_path = out / "dataset.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    train_files = [out / r["path"] for r in rows if r["split"] == "train"]
    save_band_stats(compute_band_stats(train_files), out / "band_stats.json")
    return csv_path


def _save_png(rgb: np.ndarray, path: Path) -> None:
    from matplotlib.image import imsave  # writes the array as is, through no pyplot backend

    imsave(path, rgb)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--num-images", default=12, show_default=True, help="Number of cubes (train + val).")
@click.option("--size", default=60, show_default=True, help="Height and width in pixels.")
@click.option("--bands", default=30, show_default=True, help="Spectral bands per cube.")
@click.option("--num-endmembers", default=4, show_default=True, help="Pure spectra mixed in each cube.")
@click.option("--num-vessels", default=3, show_default=True, help="Vessel-like curves per cube.")
@click.option("--val-fraction", default=0.25, show_default=True, help="Share of cubes in the val split.")
@click.option("--seed", default=0, show_default=True, help="The whole dataset is a pure function of it.")
def main(out_dir, num_images, size, bands, num_endmembers, num_vessels, val_fraction, seed):
    """Write a deterministic synthetic hyperspectral dataset (HDF5 cubes, CSV index, band stats, RGB previews)."""
    spec = SyntheticSpec(num_images, size, bands, num_endmembers, num_vessels, val_fraction, seed=seed)
    csv_path = write_dataset(out_dir, spec)
    click.echo(f"wrote {num_images} cubes of {bands}x{size}x{size} to {out_dir}; index: {csv_path}")


if __name__ == "__main__":
    run_cli(main)
