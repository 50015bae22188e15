"""Tree counts, crowns and masks for images of any size: the work behind `python -m cabruca.predict` (its
docstring describes the outputs), imported only when the command runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np

from common.devices import torch_device
from common.errors import CheckpointError, ConfigError
from common.resume import best_checkpoint
from common.runs import atomic_writer

from .engine import load_from_checkpoint
from .exports import crown_features, crs_name, write_counts, write_crowns, write_mask
from .imagery import Imagery, list_images
from .tiled_inference import StitchedPrediction, predict_image


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint file, or a run folder: its best checkpoint as the run's manifest names it (its last
    checkpoint when no epoch was validated yet)."""
    path = Path(spec)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"--checkpoint {path}: no such checkpoint file or run folder.")
    return best_checkpoint(path)


def detection_hint(threshold: float, peak: float, canopy_pixels: int) -> str:
    """What to tell a user whose images gave no tree at `threshold`: where detections start, or why none can.
    A tree needs a centre peak above the threshold and canopy pixels (semantic tree classes) to form its
    crown."""
    if peak > threshold and canopy_pixels == 0:
        return (
            f"no tree found at --score-threshold {threshold:g}: tree-centre peaks reach {peak:.3f}, but no pixel is "
            "classed as tree canopy, so no crown can form; the model needs more training."
        )
    if peak <= 0:
        return f"no tree found at --score-threshold {threshold:g}: the model predicts no tree centre at all."
    lower = math.floor(peak * 100) / 100 or round(peak / 2, 4)
    return (
        f"no tree found at --score-threshold {threshold:g}: the strongest tree-centre peak is {peak:.3f}, so "
        f"detections appear at --score-threshold {lower:g} or lower (a short or early training run has low "
        "peaks; `python -m cabruca.evaluate` prints a threshold sweep)."
    )


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--output-dir {out} is not empty (outputs of an earlier run?); choose a new folder or pass "
            "--overwrite to replace its files."
        )


def count_row(image: Imagery, pred: StitchedPrediction, class_names: list[str]) -> dict:
    row = {
        "image": image.path.name,
        "width": image.width,
        "height": image.height,
        "crs": crs_name(image) or "pixel",
        "score_threshold": pred.threshold,
        "trees": len(pred.trees),
    }
    for k, name in enumerate(class_names):
        row[f"trees_{name}"] = sum(t.label == k for t in pred.trees)
    return row


def predict_files(
    checkpoint: str | Path,
    inputs: list[str | Path],
    output_dir: str | Path,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    score_threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 4,
    overwrite: bool = False,
    echo=click.echo,
) -> list[dict]:
    """Predict every input image into `output_dir`; returns the counts rows. Everything is checked (images
    readable, settings valid, output folder free) before anything is written."""
    out = Path(output_dir)
    images = list_images(list(inputs))
    for path in images:
        Imagery(path).close()  # unreadable files fail here, before any output exists
    check_output_dir(out, overwrite)
    ckpt = resolve_checkpoint(checkpoint)
    dev = torch_device(device)
    model, cfg = load_from_checkpoint(ckpt, dev)
    tile = tile_size or cfg.data.tile_size
    overlap = tile // 4 if overlap is None else overlap
    threshold = cfg.postprocess.centre_threshold if score_threshold is None else score_threshold
    if tile < 32 or not 0 <= overlap < tile:
        raise ConfigError(
            f"--tile-size must be at least 32 and --overlap in [0, tile size); got {tile}, {overlap}."
        )
    if not 0 <= threshold < 1:
        raise ConfigError(f"--score-threshold must be in [0, 1), got {threshold:g}.")
    classes = cfg.data.instance_classes
    (out / "crowns").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, report = [], []
    for path in images:
        with Imagery(path) as image:
            (pred,) = predict_image(
                model,
                image,
                tile_size=tile,
                overlap=overlap,
                thresholds=[threshold],
                postprocess=cfg.postprocess,
                instance_semantic_ids=cfg.data.instance_semantic_ids,
                device=dev,
                batch_size=batch_size,
            )
            write_crowns(out / "crowns" / f"{path.stem}.geojson", crown_features(pred, image, classes), image)
            write_mask(out / "masks" / f"{path.stem}_semantic", pred.semantic, image)
            write_mask(out / "masks" / f"{path.stem}_instances", pred.instances, image)
            rows.append(count_row(image, pred, classes))
            canopy = int(np.isin(pred.semantic, cfg.data.instance_semantic_ids).sum())
            report.append(
                {"image": str(path), "trees": len(pred.trees), "peak_max": pred.peak_max, "canopy_px": canopy}
            )
            echo(f"{path.name}: {len(pred.trees)} trees ({image.width}x{image.height} px)")
    write_counts(out / "counts.csv", rows)
    settings = {"checkpoint": str(ckpt), "tile_size": tile, "overlap": overlap, "score_threshold": threshold}
    with atomic_writer(out / "predict.json") as fh:
        fh.write(json.dumps({**settings, "images": report}, indent=2).encode())
    if not any(r["trees"] for r in rows):
        echo(
            detection_hint(threshold, max(r["peak_max"] for r in report), sum(r["canopy_px"] for r in report))
        )
    echo(f"counts: {out / 'counts.csv'}\ncrowns: {out / 'crowns'}\nmasks:  {out / 'masks'}")
    return rows
