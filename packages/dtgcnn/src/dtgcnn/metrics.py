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


# -- triplet-text mode ------------------------------------------------------------------------------------


def triplet_batch_metrics(emb: mx.array, labels: mx.array, margin: float) -> dict[str, mx.array]:
    """Scalar diagnostics over every valid in-batch triplet (a, p, n), in O(B^2) memory (`negatives_below`).

    triplet_accuracy: share with d(a,p) < d(a,n) (strict); hard_negative_ratio: share with d(a,n) < d(a,p)
    (the negative is closer than the positive); semi_hard_negative_ratio: share with
    d(a,p) <= d(a,n) < d(a,p) + margin (right order, inside the margin); mean positive / negative distance
    over the pairs; embedding_spread: mean per-dimension standard deviation (near 0 = collapse)."""
    from dtgcnn.losses import negatives_below

    emb = emb.astype(mx.float32)
    d = pairwise_distances(emb)
    pos, neg = label_masks(labels)
    posf = pos.astype(mx.float32)
    closer, _ = negatives_below(d, neg, d)  # negatives with d(a,n) < d(a,p), per (a, p)
    inside, _ = negatives_below(d, neg, d + margin)
    negatives = mx.sum(neg, axis=1, keepdims=True).astype(mx.float32)  # [B,1]
    total = mx.maximum(mx.sum(posf * negatives), 1)
    not_after = mx.sum(posf * closer)
    return {
        "triplet_accuracy": 1.0 - not_after / total,
        "hard_negative_ratio": not_after / total,
        "semi_hard_negative_ratio": mx.sum(posf * (inside - closer)) / total,
        "mean_positive_distance": mx.sum(mx.where(pos, d, 0.0)) / mx.maximum(mx.sum(pos), 1),
        "mean_negative_distance": mx.sum(mx.where(neg, d, 0.0)) / mx.maximum(mx.sum(neg), 1),
        "embedding_spread": mx.mean(mx.std(emb, axis=0)),
    }


def precision_at_r_metrics(
    embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray | None = None
) -> dict[str, float]:
    """precision@1, R-precision and MAP@R (mean average precision at R, R = the query's number of relatives) over cosine retrieval, leave-one-out.

    Every row is a query against all the other rows; R = the number of other rows with its label. Queries
    whose label has no other row are skipped (they have nothing to retrieve), as pytorch-metric-learning's
    AccuracyCalculator does. `queries`: a boolean mask choosing the queries (e.g. labels seen in training);
    the gallery stays every row. Returns NaN metrics and num_queries 0 when no query qualifies."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    n = len(labels)
    counts = {c: k for c, k in zip(*np.unique(labels, return_counts=True), strict=True)}
    r_of = np.array([counts[c] - 1 for c in labels])
    chosen = r_of > 0 if queries is None else (r_of > 0) & np.asarray(queries, dtype=bool)
    p1, rp, mapr = [], [], []
    for start in range(0, n, 512):  # [512, N] similarity rows at a time
        rows = np.arange(start, min(start + 512, n))
        rows = rows[chosen[rows]]
        if len(rows) == 0:
            continue
        sim = emb[rows] @ emb.T
        sim[np.arange(len(rows)), rows] = -np.inf  # leave the query out
        max_r = int(r_of[rows].max())
        top = np.argsort(-sim, axis=1, kind="stable")[:, :max_r]
        hits = labels[top] == labels[rows][:, None]  # [q, max_r]
        for j, i in enumerate(rows):
            r = r_of[i]
            h = hits[j, :r]
            p1.append(float(h[0]))
            rp.append(h.sum() / r)
            mapr.append(float(np.sum(np.cumsum(h) / np.arange(1, r + 1) * h) / r))
    if not p1:
        return {
            "precision_at_1": float("nan"),
            "r_precision": float("nan"),
            "map_at_r": float("nan"),
            "num_queries": 0.0,
        }
    return {
        "precision_at_1": float(np.mean(p1)),
        "r_precision": float(np.mean(rp)),
        "map_at_r": float(np.mean(mapr)),
        "num_queries": float(len(p1)),
    }
