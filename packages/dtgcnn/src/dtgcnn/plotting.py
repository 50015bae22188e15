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
    """plots/loss_distribution.png: the epoch's training loss per optimizer step, and the validation
    distances of same-identity vs different-identity pairs (their overlap is what the triplet loss removes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    left.hist(
        np.asarray(batch_losses, dtype=float), bins=min(30, max(5, len(batch_losses))), color="tab:blue"
    )
    left.set_title(f"training loss per step, epoch {epoch}")
    left.set_xlabel("joint loss")
    d = np.sqrt(np.maximum(2.0 - 2.0 * embeddings @ embeddings.T, 0.0))  # unit embeddings
    iu = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[iu]
    bins = np.linspace(0, 2, 41)
    right.hist(d[iu][same], bins=bins, alpha=0.6, density=True, label="same identity")
    right.hist(d[iu][~same], bins=bins, alpha=0.6, density=True, label="different identity")
    right.set_title("validation embedding distances")
    right.set_xlabel("Euclidean distance")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
