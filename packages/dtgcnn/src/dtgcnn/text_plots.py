"""t-SNE of embeddings coloured by label (scikit-learn's TSNE, matplotlib), for triplet-text runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def embeddings_tsne(
    emb: np.ndarray, labels: np.ndarray, path: Path, seed: int = 0, max_points: int = 2000
) -> Path:
    """plots/embeddings_tsne.png: 2-D t-SNE of up to `max_points` embeddings, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keep = np.random.default_rng(seed).permutation(len(emb))[:max_points]
    emb, labels = np.asarray(emb)[keep], np.asarray(labels)[keep]
    perplexity = float(min(30.0, max(2.0, (len(emb) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
    fig, ax = plt.subplots(figsize=(8, 7))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20", s=8, alpha=0.7)
    fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(f"t-SNE of {len(emb)} validation embeddings")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
