"""`python -m dtgcnn.evaluate CHECKPOINT --data-dir DIR --split test [--output metrics.json]` (meshes), or
`python -m dtgcnn.evaluate CHECKPOINT --data FILE` for a triplet-mode checkpoint (text retrieval: precision@1,
R-precision, MAP@R of the model and of the encoder alone, for all, seen and unseen labels).

Writes (and prints) the split's metrics: joint loss, accuracy, triplet accuracy, mean positive/negative
distance, hard-negative ratio, embedding spread, retrieval recall@1 and verification ROC-AUC.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.cli import console_script, data_dir_option, run_cli
from common.resume import evaluation_output
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
@data_dir_option(type=click.Path(exists=True, file_okay=False))
@click.option(
    "--data", type=click.Path(exists=True, dir_okay=False), help="Triplet-mode checkpoints: a text file."
)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Metrics JSON (default <run>/evaluation/<checkpoint>-<split>_metrics.json; never an existing "
    "training result).",
)
def main(checkpoint, data_dir, data, split, output):
    from common.errors import ConfigError

    if data is not None:
        from dtgcnn.text_evaluate import evaluate_text

        metrics = evaluate_text(checkpoint, data)
        split = Path(data).stem
    elif data_dir is None:
        raise ConfigError("give --data-dir (mesh checkpoints) or --data FILE (triplet-mode checkpoints).")
    else:
        metrics = evaluate(checkpoint, data_dir, split)
    out = evaluation_output(checkpoint, f"{Path(checkpoint).stem}-{split}_metrics.json", output)
    atomic_write_text(out, json.dumps(metrics, indent=2))
    click.echo(json.dumps(metrics, indent=2))
    click.echo(f"wrote {out}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
