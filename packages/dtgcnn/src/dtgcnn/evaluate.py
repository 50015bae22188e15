"""`python -m dtgcnn.evaluate CHECKPOINT --data-dir DIR --split test [--output metrics.json]`.

Writes (and prints) the split's metrics: joint loss, accuracy, triplet accuracy, mean positive/negative
distance, hard-negative ratio, embedding spread, retrieval recall@1 and verification ROC-AUC.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.cli import console_script, data_dir_option, run_cli
from common.runs import atomic_write_text


def evaluate(checkpoint: str | Path, data_dir: str | Path, split: str = "test") -> dict[str, float]:
    from dtgcnn.checkpoints import load_from_checkpoint
    from dtgcnn.data import MeshSplit
    from dtgcnn.engine import evaluate_split

    model, cfg = load_from_checkpoint(checkpoint)
    data = MeshSplit.for_config(data_dir, split, cfg, model.spec.num_classes)
    metrics = evaluate_split(model, data, cfg)
    return {"split": split, "num_samples": len(data), **metrics}


@click.command(help=__doc__)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@data_dir_option(required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Metrics JSON (default <split>_metrics.json beside the checkpoint).",
)
def main(checkpoint, data_dir, split, output):
    metrics = evaluate(checkpoint, data_dir, split)
    out = Path(output) if output else Path(checkpoint).parent / f"{split}_metrics.json"
    atomic_write_text(out, json.dumps(metrics, indent=2))
    click.echo(json.dumps(metrics, indent=2))
    click.echo(f"wrote {out}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
