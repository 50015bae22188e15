"""`python -m cabruca.predict --checkpoint CKPT --input PATH [PATH ...] --output-dir OUT`: tree counts, crowns
and masks for images of any size.

Each image (GeoTIFF orthomosaic, PNG or JPEG; a folder means its images) is cut into overlapping tiles,
predicted and stitched (`cabruca.tiled_inference`), then written to OUT:

    counts.csv                         one row per image: trees in total and per class
    crowns/<image>.geojson             one polygon feature per tree, in the image's CRS (pixels without one)
    masks/<image>_semantic.tif|png     semantic class ids (GeoTIFF with the input's transform/CRS for a TIFF)
    masks/<image>_instances.tif|png    tree ids, matching the GeoJSON features' tree_id
    predict.json                       the settings used and, per image, the strongest centre peak

A non-empty OUT is refused unless --overwrite, so a previous run's outputs are never replaced silently.

This module holds the command line only and stays light (torch is imported when the command runs, so
`--help` answers at once); the work is `cabruca.prediction`, whose names stay importable from here.
"""

from __future__ import annotations

import click

from common.cli import console_script, device_option, forward_to, output_dir_option

# `from cabruca.predict import count_row` keeps working: forwarded to `cabruca.prediction`.
__getattr__ = forward_to("cabruca.prediction", __name__)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--checkpoint",
    required=True,
    help="A cabruca checkpoint file, or a run folder (its best checkpoint).",
)
@click.option(
    "--input",
    "inputs",
    required=True,
    multiple=True,
    help="Image file (GeoTIFF, PNG, JPEG) or folder of images; repeat for more.",
)
@output_dir_option(type=str, required=True, help="Folder for counts.csv, crowns/ and masks/ (must be empty).")
@click.option("--tile-size", type=int, default=None, help="Tile side in pixels (default: the checkpoint's).")
@click.option(
    "--overlap", type=int, default=None, help="Pixels shared by neighbouring tiles (default tile/4)."
)
@click.option(
    "--score-threshold",
    type=float,
    default=None,
    help="Tree-centre peak a tree needs, 0..1 (default: the checkpoint's postprocess.centre_threshold).",
)
@device_option(type=str, default="auto")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Tiles per forward pass.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --output-dir, replacing its files.")
def main(checkpoint, inputs, output_dir, tile_size, overlap, score_threshold, device, batch_size, overwrite):
    """Count trees and trace crowns in aerial images with a trained cabruca checkpoint."""
    from .prediction import predict_files

    predict_files(
        checkpoint,
        list(inputs),
        output_dir,
        tile_size=tile_size,
        overlap=overlap,
        score_threshold=score_threshold,
        device=device,
        batch_size=batch_size,
        overwrite=overwrite,
    )


cli = console_script(main)  # the installed command (cabruca-predict)


if __name__ == "__main__":
    cli()
