"""`python -m egnn_com.predict`: a checkpoint and graph files (or folders) -> predicted centres as CSV.

    python -m egnn_com.predict --checkpoint runs/x/checkpoints/last.ckpt data/new/ --output centres.csv
    python -m egnn_com.predict --checkpoint runs/x data/new/            # the run's best checkpoint

Files need x, pos, edge_index and mass; a file that also holds the target y gets true values and errors.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from common.cli import console_script, run_cli
from common.devices import torch_device
from common.runs import atomic_write_text
from egnn_com.cliopts import option

COLUMNS = ["file", "num_nodes", "pred_x", "pred_y", "pred_z", "true_x", "true_y", "true_z", "abs_error"]


def predict_files(
    checkpoint: str | Path, paths: list[str], batch_size: int = 64, device: str = "auto"
) -> list[dict]:
    """One row per valid graph file (invalid files are reported and skipped, as in training)."""
    # the model code (torch, PyG) loads here, not at import: `--help` answers without it
    from egnn_com.data import load_dataset
    from egnn_com.inference import check_features, load_from_checkpoint, predict

    dev = torch_device(device)
    model, _ = load_from_checkpoint(checkpoint, map_location=dev)
    dataset = load_dataset(list(paths), require_target=False)
    check_features(model, dataset.num_features, ", ".join(map(str, paths)))
    preds = predict(model, dataset.graphs, dev, batch_size)
    rows = []
    for path, graph, pred in zip(dataset.files, dataset.graphs, preds.tolist(), strict=True):
        row = {
            "file": str(path),
            "num_nodes": graph.num_nodes,
            "pred_x": pred[0],
            "pred_y": pred[1],
            "pred_z": pred[2],
        }
        if getattr(graph, "y", None) is not None:
            true = graph.y[0].tolist()
            row.update(
                true_x=true[0],
                true_y=true[1],
                true_z=true[2],
                abs_error=sum(abs(p - t) for p, t in zip(pred, true, strict=True)) / 3,
            )
        rows.append(row)
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True)
@option(
    "checkpoint",
    "--ckpt_path",
    required=True,
    help="egnn_com checkpoint (.ckpt), or a run folder / checkpoint folder: its best checkpoint.",
)
@option("output", help="CSV file to write (default: print to stdout).")
@option("batch_size", type=int, default=64, show_default=True)
@option("device", default="auto", show_default=True)
def main(paths, checkpoint, output, batch_size, device):
    """Predict the centre of mass of each graph file in PATHS (files or folders)."""
    rows = predict_files(checkpoint, list(paths), batch_size, device)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    if output:
        atomic_write_text(Path(output), buffer.getvalue())
        click.echo(f"wrote {len(rows)} predictions to {output}")
    else:
        click.echo(buffer.getvalue(), nl=False)


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
