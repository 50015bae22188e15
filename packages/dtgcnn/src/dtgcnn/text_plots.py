"""Embedding maps: 2-D t-SNE (scikit-learn) or UMAP (umap-learn, the `umap` extra) of embeddings, one
colour per label with a legend naming the labels (labels are categories: a colour bar would suggest that
label 3 lies between labels 2 and 4).

    embeddings_tsne(emb, labels, "plots/embeddings_tsne.png")
    embeddings_umap(emb, labels, "plots/embeddings_umap.png")      # needs pip install 'trainyard-dtgcnn[umap]'
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from common.runs import atomic_write_bytes

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # a second cue once the 20 colours repeat
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def project(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, E] -> [N, 2] with t-SNE or UMAP (seeded, so the same embeddings give the same map)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < 3:
        raise DataError(f"an embedding map needs at least 3 points, got {len(embeddings)}.")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(embeddings)
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise ConfigError(
                "UMAP plots need umap-learn: pip install 'trainyard-dtgcnn[umap]' (in the workspace "
                "`uv sync --all-packages` installs it), or use t-SNE."
            ) from exc
        neighbours = int(min(15, len(embeddings) - 1))
        return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(embeddings)
    raise ConfigError(f"unknown embedding map {method!r}; choose tsne or umap.")


def label_scatter(
    points: np.ndarray,
    labels: Sequence,
    path: str | Path,
    title: str,
    *,
    label_names: Sequence[str] | None = None,
    xlabel: str = "dimension 1",
    ylabel: str = "dimension 2",
) -> Path:
    """A PNG scatter of 2-D points, one colour (and, past 20 labels, marker) per label, with a legend.

    `label_names[i]` names integer label i; string labels name themselves. Past 40 labels the legend lists
    the first 40 and says how many more there are."""
    fig = label_figure(points, labels, title, label_names=label_names, xlabel=xlabel, ylabel=ylabel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def label_figure(points, labels, title, *, label_names=None, xlabel="dimension 1", ylabel="dimension 2"):
    """The matplotlib Figure `label_scatter` saves."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    labels = np.asarray(labels)
    classes = list(dict.fromkeys(sorted(labels.tolist())))
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"].colors
    fig = Figure(figsize=(10 if len(classes) > 12 else 8, 7))
    ax = fig.subplots()
    handles = []
    for i, cls in enumerate(classes):
        keep = labels == cls
        name = label_names[int(cls)] if label_names is not None else str(cls)
        handles.append(
            ax.scatter(
                points[keep, 0],
                points[keep, 1],
                s=14,
                alpha=0.8,
                color=palette[i % len(palette)],
                marker=MARKERS[(i // len(palette)) % len(MARKERS)],
                label=name,
            )
        )
    shown = handles[:40]
    title_extra = f" (first 40 of {len(handles)} labels)" if len(handles) > 40 else ""
    ax.legend(
        handles=shown,
        title="label" + title_extra,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small" if len(shown) <= 20 else "x-small",
        ncols=1 if len(shown) <= 20 else 2,
        markerscale=1.5,
    )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def embedding_map(
    emb: np.ndarray,
    labels: Sequence,
    path: str | Path,
    method: str = "tsne",
    seed: int = 0,
    max_points: int = 2000,
    *,
    label_names: Sequence[str] | None = None,
    what: str = "validation embeddings",
) -> Path:
    """A t-SNE or UMAP map of up to `max_points` embeddings (a seeded sample), coloured by label."""
    emb, labels = np.asarray(emb), np.asarray(labels)
    if len(emb) != len(labels):
        raise DataError(f"embedding map: {len(emb)} embeddings but {len(labels)} labels.")
    keep = np.sort(np.random.default_rng(seed).permutation(len(emb))[:max_points])
    xy = project(emb[keep], method, seed)
    name = METHOD_NAMES[method]
    return label_scatter(
        xy,
        labels[keep],
        path,
        f"{name} of {len(keep)} {what}",
        label_names=label_names,
        xlabel=f"{name} 1",
        ylabel=f"{name} 2",
    )


def embeddings_tsne(
    emb: np.ndarray, labels: np.ndarray, path: Path, seed: int = 0, max_points: int = 2000, **kw
) -> Path:
    """plots/embeddings_tsne.png: 2-D t-SNE of up to `max_points` embeddings, one colour per label."""
    return embedding_map(emb, labels, path, "tsne", seed, max_points, **kw)


def embeddings_umap(
    emb: np.ndarray, labels: np.ndarray, path: Path, seed: int = 0, max_points: int = 2000, **kw
) -> Path:
    """plots/embeddings_umap.png: 2-D UMAP of up to `max_points` embeddings, one colour per label."""
    return embedding_map(emb, labels, path, "umap", seed, max_points, **kw)
