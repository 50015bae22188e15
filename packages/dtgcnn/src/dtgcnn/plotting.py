"""Run plots: training curves (from metrics_history.json, via common.plots) and the loss distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.plots import plot_curves

CURVES = (
    "loss",
    "ce",
    "triplet",
    "accuracy",
    "triplet_accuracy",
    "hard_negative_ratio",
    "recall_at_1",
    "roc_auc",
    "grad_norm",
    "lr",
)


def curve_names(names) -> list[str]:
    """The metrics drawn by `training_curves`: the per-epoch `train/<name>` and `val/<name>` of CURVES, and
    `lr`; not the per-step `train/<name>_step` rows, `system/...` or `test/...`."""
    return [
        n for n in names if n.rsplit("/", 1)[-1] in CURVES and n.split("/", 1)[0] in ("train", "val", "lr")
    ]


def training_curves(history_json: Path, plots_dir: Path, epoch: int) -> Path:
    """plots/training_curves_epoch_NNNN.png: the main per-epoch metrics (train/<name> and val/<name> share an
    axis) and the learning rate against the optimizer step. The full record, per-step rows included, stays
    in metrics_history.json (drawing all ~40 series costs seconds)."""
    metrics = json.loads(Path(history_json).read_text())["metrics"]
    series = {
        name: [(int(p["step"]), float(p["value"])) for p in metrics[name]] for name in curve_names(metrics)
    }
    return plot_curves(
        series, plots_dir / f"training_curves_epoch_{epoch:04d}.png", title=f"DT-GCNN training, epoch {epoch}"
    )


def loss_distribution(
    path: Path, batch_losses: list[float], embeddings: np.ndarray, labels: np.ndarray, epoch: int
) -> Path:
    """plots/loss_distribution.png, three panels:

    - the epoch's training loss at each optimizer step, as a curve (an epoch of a small run has only a
      handful of steps: a histogram of four values shows nothing);
    - the distribution over validation anchors of d(a, farthest positive) - d(a, nearest negative), the
      batch-hard triplet term before the margin: one value per embedding, right of 0 = the anchor's nearest
      other-label embedding is closer than its farthest same-label one;
    - the validation distances of same-label vs different-label pairs (their overlap is what the triplet
      loss removes)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(16, 4.5))
    steps_ax, margin_ax, pairs_ax = fig.subplots(1, 3)
    losses = np.asarray(batch_losses, dtype=float)
    steps_ax.plot(
        np.arange(1, len(losses) + 1), losses, marker="o" if len(losses) < 40 else None, color="tab:blue"
    )
    steps_ax.set_title(f"training loss per step, epoch {epoch}")
    steps_ax.set_xlabel("optimizer step in the epoch")
    steps_ax.set_ylabel("training loss")
    steps_ax.grid(True, alpha=0.3)
    steps_ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    labels = np.asarray(labels)
    d = np.sqrt(np.maximum(2.0 - 2.0 * embeddings @ embeddings.T, 0.0))  # unit embeddings
    gap = hardest_triplet_gaps(d, labels)
    if len(gap):
        margin_ax.hist(gap, bins=min(40, max(10, len(gap) // 5)), color="tab:purple")
        margin_ax.axvline(0.0, color="black", linestyle="--", label="d(a,p) = d(a,n)")
        margin_ax.legend(fontsize="small")
    else:
        margin_ax.text(
            0.5,
            0.5,
            "no anchor has both a positive and a negative",
            ha="center",
            va="center",
            transform=margin_ax.transAxes,
        )
    margin_ax.set_title(f"validation hardest-triplet gap ({len(gap)} anchors)")
    margin_ax.set_xlabel("d(a, farthest positive) - d(a, nearest negative)")
    margin_ax.set_ylabel("anchors")

    iu = np.triu_indices(len(labels), k=1)
    same_pairs = (labels[:, None] == labels[None, :])[iu]
    bins = np.linspace(0, 2, 41)
    pairs_ax.hist(d[iu][same_pairs], bins=bins, alpha=0.6, density=True, label="same label")
    pairs_ax.hist(d[iu][~same_pairs], bins=bins, alpha=0.6, density=True, label="different label")
    pairs_ax.set_title("validation embedding distances")
    pairs_ax.set_xlabel("Euclidean distance")
    pairs_ax.set_ylabel("density")
    pairs_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def hardest_triplet_gaps(distances: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per anchor with a positive and a negative: d(a, farthest positive) - d(a, nearest negative), from a
    pairwise distance matrix [N, N] (the anchor's batch-hard triplet term without the margin)."""
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    diff = labels[:, None] != labels[None, :]
    has_both = same.any(axis=1) & diff.any(axis=1)
    hardest_pos = np.where(same, distances, -np.inf).max(axis=1)
    hardest_neg = np.where(diff, distances, np.inf).min(axis=1)
    return (hardest_pos - hardest_neg)[has_both]
