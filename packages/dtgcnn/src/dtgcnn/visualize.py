"""`python -m dtgcnn.visualize CHECKPOINT --data-dir DIR [--split val] [--method tsne|umap|both] [--output-dir DIR]`.

2-D t-SNE (scikit-learn) and, when umap-learn is installed, UMAP of the split's embeddings, coloured by label:
one PNG per method (embeddings_tsne.png, embeddings_umap.png).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.cli import data_dir_option, output_dir_option, run_cli
from common.errors import ConfigError


def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """[N,E] -> [N,2] with t-SNE or UMAP."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            embeddings
        )
    try:
        import umap
    except ImportError as exc:
        raise ConfigError(
            "UMAP needs umap-learn: pip install 'trainyard-dtgcnn[umap]' (or use --method tsne)."
        ) from exc
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(embeddings)


def scatter(points: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    sc = ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab20" if labels.max() >= 10 else "tab10", s=18, alpha=0.8
    )
    fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def visualize(checkpoint, data_dir, split="val", method="both", output_dir=None) -> list[Path]:
    from dtgcnn.checkpoints import load_from_checkpoint
    from dtgcnn.data import MeshSplit
    from dtgcnn.engine import evaluate_split

    model, cfg = load_from_checkpoint(checkpoint)
    data = MeshSplit.for_config(data_dir, split, cfg, model.spec.num_classes)
    _, emb, _, labels = evaluate_split(model, data, cfg, with_embeddings=True)
    out = Path(output_dir) if output_dir else Path(checkpoint).parent.parent / "plots"
    out.mkdir(parents=True, exist_ok=True)
    methods = ["tsne"] + (["umap"] if _has_umap() else []) if method == "both" else [method]
    return [
        scatter(
            project(emb, m, cfg.seed),
            labels,
            f"{m.upper()} of {split} embeddings ({len(labels)} meshes)",
            out / f"embeddings_{m}.png",
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
