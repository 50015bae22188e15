"""Metrics: per-batch training diagnostics (MLX, inside the step) and split-level retrieval metrics (NumPy)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from dtgcnn.losses import label_masks, pairwise_distances


def batch_metrics(out: dict[str, mx.array], labels: mx.array, margin: float) -> dict[str, mx.array]:
    """Scalar diagnostics of one batch: accuracy, triplet accuracy, distances, hard-negative ratio, spread.

    Over all valid triplets (a, p, n): triplet_accuracy = share with d(a,n) > d(a,p); hard_negative_ratio =
    share with d(a,n) < d(a,p) + margin (triplets that still violate the margin). embedding_spread = mean over
    dimensions of the batch standard deviation of the unit embeddings (near 0 = collapse)."""
    emb = out["embedding"].astype(mx.float32)
    d = pairwise_distances(emb)
    pos, neg = label_masks(labels)
    valid = mx.logical_and(pos[:, :, None], neg[:, None, :])  # [a,p,n]
    n_valid = mx.maximum(mx.sum(valid), 1)
    d_ap, d_an = d[:, :, None], d[:, None, :]
    return {
        "accuracy": mx.mean(mx.argmax(out["logits"], axis=-1) == labels),
        "triplet_accuracy": mx.sum(mx.logical_and(valid, d_an > d_ap)) / n_valid,
        "hard_negative_ratio": mx.sum(mx.logical_and(valid, d_an < d_ap + margin)) / n_valid,
        "mean_positive_distance": mx.sum(mx.where(pos, d, 0.0)) / mx.maximum(mx.sum(pos), 1),
        "mean_negative_distance": mx.sum(mx.where(neg, d, 0.0)) / mx.maximum(mx.sum(neg), 1),
        "embedding_spread": mx.mean(mx.std(emb, axis=0)),
    }


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """recall@1 (nearest other embedding has the same label) and verification ROC-AUC over all pairs
    (cosine similarity as the score, same-label as the target), for unit embeddings [N,E]."""
    emb = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = emb @ emb.T  # [N,N]
    np.fill_diagonal(sim, -np.inf)
    recall1 = float(np.mean(labels[np.argmax(sim, axis=1)] == labels))
    iu = np.triu_indices(len(labels), k=1)
    target = (labels[:, None] == labels[None, :])[iu]
    auc = roc_auc(target, sim[iu]) if 0 < target.sum() < len(target) else float("nan")
    return {"recall_at_1": recall1, "roc_auc": auc}


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC (sklearn's roc_auc_score, whose import costs seconds at every process start): the
    Mann-Whitney statistic, P(score of a positive > score of a negative) with ties counting one half."""
    target = np.asarray(target, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    # average 1-based ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    ranks = np.empty(len(score), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos = int(target.sum())
    n_neg = len(target) - n_pos
    return float((ranks[target].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
