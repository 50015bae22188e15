"""`python -m cabruca.evaluate CHECKPOINT --data-dir DIR`: every metric as JSON, plus overlay PNGs.

Writes `<out-dir>/metrics.json` and `<out-dir>/overlays/<tile>.png` (the tile, its predicted semantic classes
blended in, each predicted crown outlined and its centre marked, next to the ground truth drawn the same way).
metrics.json holds two views:
- "metrics": per training tile, as validation sees them: losses, mask mAP, mIoU, canopy IoU, shade
  distribution, tree counts, speed, memory;
- "images": per whole image, as `cabruca.predict` sees them (stitched tiles, `cabruca.image_eval`): tree
  counts per image and their mean absolute error, box AP and mask AP at --score-threshold, and a threshold
  sweep, printed as a table, that shows at which thresholds the detections are.

This module holds the command line only and stays light (torch is imported when the command runs, so
`--help` answers at once); the evaluation itself is `cabruca.evaluation`, whose names stay importable from
here (forwarded on first use).
"""

from __future__ import annotations

import json

import click

from common.cli import forward_to, run_cli
from common.errors import ConfigError

from .config import SWEEP

# `from cabruca.evaluate import evaluate_checkpoint` keeps working: forwarded to `cabruca.evaluation`.
__getattr__ = forward_to("cabruca.evaluation", __name__)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data-dir", required=True, help="Dataset folder holding the split.")
@click.option("--split", default="val", show_default=True, help="Sub-folder to evaluate.")
@click.option(
    "--output-dir", default=None, help="Where metrics.json and overlays/ go (default: <run>/evaluation)."
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--max-overlays", default=8, show_default=True, help="Overlay PNGs to write.")
@click.option(
    "--batch-size", type=int, default=None, help="Tiles per forward pass (default: the checkpoint's)."
)
@click.option(
    "--score-threshold",
    type=float,
    default=None,
    help="Tree-centre peak a tree needs, 0..1 (default: the checkpoint's postprocess.centre_threshold).",
)
@click.option("--tile-size", type=int, default=None, help="Tile side in pixels (default: the checkpoint's).")
@click.option(
    "--overlap", type=int, default=None, help="Pixels shared by neighbouring tiles (default: tile size / 4)."
)
@click.option(
    "--sweep",
    default=",".join(f"{t:g}" for t in SWEEP),
    show_default=True,
    help="Comma-separated score thresholds reported side by side.",
)
def main(
    checkpoint,
    data_dir,
    split,
    output_dir,
    device,
    max_overlays,
    batch_size,
    score_threshold,
    tile_size,
    overlap,
    sweep,
):
    """Evaluate a cabruca checkpoint: all metrics as JSON, per image and per tile, and prediction overlays."""
    from .evaluation import evaluate_checkpoint
    from .image_eval import sweep_table

    try:
        thresholds = tuple(float(t) for t in sweep.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--sweep {sweep!r} must be comma-separated numbers, e.g. 0.05,0.1,0.3.") from None
    path = evaluate_checkpoint(
        checkpoint,
        data_dir,
        split=split,
        out_dir=output_dir,
        device=device,
        max_overlays=max_overlays,
        batch_size=batch_size,
        score_threshold=score_threshold,
        tile_size=tile_size,
        overlap=overlap,
        sweep=thresholds,
    )
    report = json.loads(path.read_text())
    m, im = report["metrics"], report["images"]
    click.echo(
        f"per tile:  mAP {m['mAP']:.3f}  mAP_50 {m['mAP_50']:.3f}  mAP_75 {m['mAP_75']:.3f}  "
        f"mIoU {m['mIoU']:.3f}  canopy IoU {m['canopy_IoU']:.3f}  count acc {m['tree_count_accuracy']:.3f}"
    )
    mask = f"  mask AP {im['mask_mAP']:.3f}  mask AP_50 {im['mask_mAP_50']:.3f}" if "mask_mAP" in im else ""
    click.echo(
        f"per image: trees {im['trees_pred']} predicted / {im['trees_gt']} true, count MAE "
        f"{im['count_MAE']:.2f}  box AP {im['box_mAP']:.3f}  box AP_50 {im['box_mAP_50']:.3f}{mask}"
    )
    click.echo(sweep_table(im))
    if "note" in im:
        click.echo(im["note"])
    click.echo(f"metrics: {path}\noverlays: {path.parent / 'overlays'}")


def cli() -> None:
    """Console-script entry point: errors as one paragraph, never a traceback."""
    run_cli(main)


if __name__ == "__main__":
    cli()
