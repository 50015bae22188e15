"""`python -m spectral_mae.stats CSV_FILE [--split train] [--output band_stats.json]`: per-band mean/std of a
split, the normalisation statistics SegmentationDataset reads (dataset.stats_file, default next to the CSV)."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import run_cli
from spectral_mae.data import compute_band_stats, save_band_stats, split_files


@click.command()
@click.argument("csv_file", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True, help="Rows of the CSV to average over.")
@click.option("--output", default=None, help="Output JSON (default: band_stats.json next to the CSV).")
def main(csv_file, split, output):
    """Compute and save per-band mean and standard deviation over every pixel of a split."""
    stats = compute_band_stats(split_files(csv_file, split))
    path = save_band_stats(stats, output or Path(csv_file).parent / "band_stats.json")
    click.echo(f"{len(stats['mean'])} bands from {stats['num_files']} files -> {path}")


if __name__ == "__main__":
    run_cli(main)
