"""`python -m dtgcnn.visualize CHECKPOINT --data-dir DIR [--split val] [--method tsne|umap|both] [--output-dir DIR]`.

2-D t-SNE (scikit-learn) and, when umap-learn is installed, UMAP of the split's embeddings, one colour per
identity with a legend (`dtgcnn.text_plots`): one PNG per method (embeddings_tsne.png, embeddings_umap.png).
"""

from __future__ import annotations

from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.cli import data_dir_option, output_dir_option, run_cli


def visualize(checkpoint, data_dir, split="val", method="both", output_dir=None) -> list[Path]:
    from dtgcnn.checkpoints import load_from_checkpoint
    from dtgcnn.data import MeshSplit
    from dtgcnn.engine import evaluate_split
    from dtgcnn.text_plots import METHOD_NAMES, label_scatter, project

    model, cfg = load_from_checkpoint(checkpoint)
    data = MeshSplit.for_config(data_dir, split, cfg, model.spec.num_classes)
    _, emb, _, labels = evaluate_split(model, data, cfg, with_embeddings=True)
    out = Path(output_dir) if output_dir else Path(checkpoint).parent.parent / "plots"
    out.mkdir(parents=True, exist_ok=True)
    methods = ["tsne"] + (["umap"] if _has_umap() else []) if method == "both" else [method]
    return [
        label_scatter(
            project(emb, m, cfg.seed),
            labels,
            out / f"embeddings_{m}.png",
            f"{METHOD_NAMES[m]} of {split} embeddings ({len(labels)} meshes)",
            xlabel=f"{METHOD_NAMES[m]} 1",
            ylabel=f"{METHOD_NAMES[m]} 2",
        )
        for m in methods
    ]


def _has_umap() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


@click.command(help=__doc__)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@data_dir_option(required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option(
    "--method",
    type=click.Choice(["tsne", "umap", "both"]),
    default="both",
    show_default=True,
    help="both = t-SNE, plus UMAP when umap-learn is installed.",
)
@output_dir_option(type=click.Path(file_okay=False), help="Default: the run's plots/ folder.")
def main(checkpoint, data_dir, split, method, output_dir):
    for path in visualize(checkpoint, data_dir, split, method, output_dir):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
