"""`python -m spectral_mae.prepare SCENE... --output DIR`: cut real scenes into the package's training cubes.

    python -m spectral_mae.prepare scene.hdr --output data/scene --cube-size 64 --num-bands 30
    python -m spectral_mae.prepare Indian_pines_corrected.mat --output data/ip --cube-size 20 \\
        --bands 0-29 --labels-from Indian_pines_gt.mat

Scenes: ENVI (.hdr), GeoTIFF band stacks (.tif), MATLAB (.mat, v7.3 too) and the package's HDF5 cubes
(scenes.py). Writes DIR/cubes/*.h5 (dataset `cube` (bands, H, W) float32, `rgb`, `labels` with
--labels-from; attributes wavelengths_nm, band_indices, source, row, col), DIR/dataset.csv (path, split),
DIR/band_stats.json (train split) and DIR/prepare.json (what was done: band indices and wavelengths, counts
per scene), which `spectral_mae.embed` reads to select the same bands of a new scene.

Everything is written to a scratch folder beside DIR and moved into place at the end, so a bad scene
found halfway leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import h5py
import numpy as np

from common.cli import console_script, run_cli
from common.errors import DataError
from spectral_mae.bands import format_band_spec, select_bands
from spectral_mae.cubes import CUBE_KEY, RGB_KEY, compute_band_stats, cube_to_rgb, save_band_stats
from spectral_mae.scenes import Scene, open_labels, open_scene
from spectral_mae.tiling import TilePlan, plan_tiles

PREPARE_FILE = "prepare.json"
LABELS_KEY = "labels"
FORMAT = "spectral_mae.prepare/1"


@dataclass
class SceneSource:
    scene: Scene
    bands: list[int]
    labels: np.ndarray | None
    plan: TilePlan
    stem: str  # cube file name prefix, unique among the scenes


def open_sources(
    paths, *, variable, bands, num_bands, labels_from, labels_variable, cube_size, stride, val_fraction
) -> list[SceneSource]:
    """Open and check every scene (format, band list, labels, size) before anything is written."""
    if labels_from and len(labels_from) != len(paths):
        raise DataError(
            f"--labels-from was given {len(labels_from)} times for {len(paths)} scenes; give one per scene."
        )
    sources, stems = [], set()
    for k, path in enumerate(paths):
        scene = open_scene(path, variable)
        selected = select_bands(bands, num_bands, scene.bands, scene.path.name)
        labels = (
            open_labels(labels_from[k], labels_variable, (scene.rows, scene.cols)) if labels_from else None
        )
        plan = plan_tiles(
            scene.rows,
            scene.cols,
            size=cube_size,
            stride=stride,
            val_fraction=val_fraction,
            source=scene.path.name,
        )
        stem = scene.name if scene.name not in stems else f"{scene.name}_{k}"
        stems.add(stem)
        sources.append(SceneSource(scene, selected, labels, plan, stem))
    counts = {len(s.bands) for s in sources}
    if len(counts) > 1:
        listing = ", ".join(f"{s.scene.path.name}: {len(s.bands)}" for s in sources)
        raise DataError(
            f"The scenes give different band counts after selection ({listing}); cubes must agree."
        )
    return sources


def write_cube(path: Path, cube: np.ndarray, source: SceneSource, row: int, col: int) -> None:
    """One training cube (bands, H, W) with its preview, labels and provenance."""
    wavelengths = source.scene.wavelengths_nm
    picked = None if wavelengths is None else wavelengths[source.bands]
    with h5py.File(path, "w") as f:
        f.create_dataset(CUBE_KEY, data=cube)
        f.create_dataset(RGB_KEY, data=cube_to_rgb(cube, picked))
        if source.labels is not None:
            size = cube.shape[1]
            f.create_dataset(LABELS_KEY, data=source.labels[row : row + size, col : col + size])
        if picked is not None:
            f.attrs["wavelengths_nm"] = picked
        f.attrs["band_indices"] = np.asarray(source.bands)
        f.attrs["source"] = str(source.scene.path.resolve())
        f.attrs["row"], f.attrs["col"] = row, col
        f.attrs["units"] = source.scene.units


def tile_scene(source: SceneSource, cubes_dir: Path, cube_size: int) -> tuple[list[dict], dict]:
    """Write the scene's valid tiles; (index rows, per-scene report). A tile holding any NaN, inf or no-data
    value is skipped (training refuses them); a scene whose every tile is skipped is an error."""
    rows, skipped, invalid_values, values = [], 0, 0, 0
    for tile in source.plan.tiles:
        window = source.scene.read(
            slice(tile.row, tile.row + cube_size), slice(tile.col, tile.col + cube_size), source.bands
        )  # (H, W, bands)
        bad = int((~np.isfinite(window)).sum())
        invalid_values, values = invalid_values + bad, values + window.size
        if bad:
            skipped += 1
            continue
        name = f"{source.stem}_r{tile.row:05d}_c{tile.col:05d}.h5"
        write_cube(
            cubes_dir / name, np.ascontiguousarray(window.transpose(2, 0, 1)), source, tile.row, tile.col
        )
        rows.append(
            {
                "path": f"cubes/{name}",
                "split": tile.split,
                "scene": source.stem,
                "row": tile.row,
                "col": tile.col,
            }
        )
    scene = source.scene
    if not rows:
        nodata = f" or the no-data value {scene.nodata:g}" if scene.nodata is not None else ""
        raise DataError(
            f"{scene.path.name}: {100 * invalid_values / max(values, 1):.1f}% of the values in the selected bands "
            f"are NaN, inf{nodata}, and each of the {len(source.plan.tiles)} cubes of {cube_size}x{cube_size} "
            "holds some, so none could be written. Choose other bands or a smaller --cube-size."
        )
    report = {
        "path": str(scene.path.resolve()),
        "rows": scene.rows,
        "cols": scene.cols,
        "bands": scene.bands,
        "dtype": scene.dtype.name,
        "units": scene.units,
        "wavelengths_nm": None
        if scene.wavelengths_nm is None
        else scene.wavelengths_nm[source.bands].tolist(),
        "cubes_train": sum(r["split"] == "train" for r in rows),
        "cubes_val": sum(r["split"] == "val" for r in rows),
        "cubes_skipped_invalid": skipped,
        "invalid_value_share": invalid_values / max(values, 1),
        "pixels_not_covered": source.plan.pixels_uncovered,
        "val_from_row": source.plan.val_from_row,
        **scene.extra,
    }
    return rows, report


def prepare(
    scene_paths,
    output,
    *,
    cube_size: int = 64,
    stride: int | None = None,
    bands: str | None = None,
    num_bands: int | None = None,
    variable: str | None = None,
    labels_from=(),
    labels_variable: str | None = None,
    val_fraction: float = 0.2,
) -> dict:
    """Tile `scene_paths` into a training dataset in `output`; returns what prepare.json holds."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(
            f"Output {output} already exists and is not empty; choose a new folder (nothing is overwritten)."
        )
    if not scene_paths:
        raise DataError("Name at least one scene file.")
    stride = stride or cube_size
    sources = open_sources(
        scene_paths,
        variable=variable,
        bands=bands,
        num_bands=num_bands,
        labels_from=list(labels_from),
        labels_variable=labels_variable,
        cube_size=cube_size,
        stride=stride,
        val_fraction=val_fraction,
    )
    scratch = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "cubes").mkdir(parents=True)
    try:
        summary = _write_dataset(scratch, sources, cube_size, stride, val_fraction)
        if output.exists():
            output.rmdir()  # empty (checked above)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _write_dataset(out: Path, sources, cube_size: int, stride: int, val_fraction: float) -> dict:
    index, reports = [], []
    for source in sources:
        rows, report = tile_scene(source, out / "cubes", cube_size)
        index.extend(rows)
        reports.append(report)
    train = [out / r["path"] for r in index if r["split"] == "train"]
    val = [r for r in index if r["split"] == "val"]
    if not train or (val_fraction > 0 and not val):
        missing = "training" if not train else "validation"
        raise DataError(
            f"No {missing} cube could be cut: the {'top' if not train else 'bottom'} part of each scene "
            f"(--val-fraction {val_fraction}) holds no full, valid {cube_size}x{cube_size} cube. "
            "Lower --cube-size or change --val-fraction."
        )
    with (out / "dataset.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "split", "scene", "row", "col"])
        writer.writeheader()
        writer.writerows(index)
    stats = compute_band_stats(train)
    save_band_stats(stats, out / "band_stats.json")
    first = sources[0]
    summary = {
        "format": FORMAT,
        "cube_size": cube_size,
        "stride": stride,
        "val_fraction": val_fraction,
        "band_indices": first.bands,
        "bands": format_band_spec(first.bands),
        "num_bands": len(first.bands),
        "wavelengths_nm": reports[0]["wavelengths_nm"],
        "units": first.scene.units,
        "cubes_train": len(train),
        "cubes_val": len(val),
        "scenes": reports,
    }
    (out / PREPARE_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def read_prepare_record(folder: str | Path) -> dict | None:
    """prepare.json of a prepared dataset folder, or None when the dataset was not made by prepare."""
    path = Path(folder) / PREPARE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_hint(output: Path, cube_size: int, num_bands: int) -> str:
    """A train command for the dataset: a spatial patch giving a grid near 8x8 tokens (the demo's scale), a
    spectral patch of about 5 bands (the default's); both must divide the cube."""
    divisors = [p for p in range(4, cube_size + 1) if cube_size % p == 0] or [cube_size]
    spatial = min(divisors, key=lambda p: abs(np.log(cube_size / p / 8)))
    spectral = next((t for t in (5, 6, 4, 8, 3, 10, 2) if num_bands % t == 0), None)
    if spectral is None:
        return (
            f"{num_bands} bands have no small divisor for the spectral patch; prepare again with --num-bands "
            f"{num_bands - num_bands % 5 or 5} (or another count divisible by 5)."
        )
    return (
        f"train: python -m spectral_mae.train --data-dir {output} model=mae_tiny model.img_size={cube_size} "
        f"model.in_chans={num_bands} 'model.patch_size=[{spatial},{spectral}]'"
    )


@click.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", required=True, type=click.Path(file_okay=False), help="New dataset folder.")
@click.option("--cube-size", default=64, show_default=True, help="Cube height and width in pixels.")
@click.option(
    "--stride", type=int, default=None, help="Pixels between cube origins (default: the cube size)."
)
@click.option("--bands", default=None, help="Bands to keep, e.g. '10-40,55' (from 0; ranges inclusive).")
@click.option("--num-bands", type=int, default=None, help="Keep N bands evenly spaced over the spectrum.")
@click.option(
    "--variable", default=None, help=".mat files: the variable holding the (rows, cols, bands) scene."
)
@click.option(
    "--labels-from",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Label map per scene (.mat, .tif, .hdr).",
)
@click.option("--labels-variable", default=None, help=".mat label files: the variable holding the label map.")
@click.option(
    "--val-fraction", default=0.2, show_default=True, help="Bottom share of each scene's rows for validation."
)
def main(
    scenes, output, cube_size, stride, bands, num_bands, variable, labels_from, labels_variable, val_fraction
):
    """Cut hyperspectral scenes (ENVI, GeoTIFF, MATLAB) into training cubes with band selection."""
    summary = prepare(
        scenes,
        output,
        cube_size=cube_size,
        stride=stride,
        bands=bands,
        num_bands=num_bands,
        variable=variable,
        labels_from=labels_from,
        labels_variable=labels_variable,
        val_fraction=val_fraction,
    )
    for report in summary["scenes"]:
        click.echo(
            f"{Path(report['path']).name}: {report['rows']}x{report['cols']}x{report['bands']} {report['dtype']} -> "
            f"{report['cubes_train']} train + {report['cubes_val']} val cubes; "
            f"{report['cubes_skipped_invalid']} skipped for NaN/inf/no-data "
            f"({100 * report['invalid_value_share']:.2f}% of values read); "
            f"{report['pixels_not_covered']} pixels at the edges not covered"
        )
    click.echo(f"{summary['num_bands']} bands ({summary['bands']}) -> {output}")
    click.echo(training_hint(Path(output), cube_size, summary["num_bands"]))


cli = console_script(main)

if __name__ == "__main__":
    run_cli(main)
