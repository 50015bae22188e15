"""Joint loss: classification_weight x cross-entropy + triplet_weight x triplet loss with online mining.

Triplets are mined inside the batch (the P x K sampler guarantees positives and negatives) on Euclidean
distances between the L2-normalised embeddings:
- batch_hard: per anchor, its farthest positive and nearest negative (Hermans et al. 2017); mean over anchors
  that have both.
- batch_all: every valid (anchor, positive, negative); sum of hinge losses divided by the number of triplets
  with a positive loss (so easy triplets do not dilute the average).
- semi_hard: per (anchor, positive) pair, the nearest negative farther than the positive; when there is none,
  the farthest negative (FaceNet, as in TF-Addons); mean over pairs.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

STRATEGIES = ("batch_hard", "batch_all", "semi_hard")


def pairwise_distances(emb: mx.array) -> mx.array:
    """Euclidean distances [B,B] between rows of emb [B,E] (sqrt kept away from 0 for finite gradients)."""
    sq = mx.sum(emb * emb, axis=-1)
    d2 = sq[:, None] - 2.0 * (emb @ emb.T) + sq[None, :]
    return mx.sqrt(mx.maximum(d2, 1e-12))


def label_masks(labels: mx.array) -> tuple[mx.array, mx.array]:
    """positive mask [B,B] (same label, not self) and negative mask [B,B] (different label)."""
    same = labels[:, None] == labels[None, :]
    eye = mx.eye(labels.shape[0], dtype=mx.bool_)
    return mx.logical_and(same, mx.logical_not(eye)), mx.logical_not(same)


def triplet_loss(emb: mx.array, labels: mx.array, margin: float, strategy: str = "batch_hard") -> mx.array:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    d = pairwise_distances(emb)  # [B,B]
    pos, neg = label_masks(labels)
    big = mx.array(1e9, d.dtype)
    if strategy == "batch_hard":
        hardest_pos = mx.max(mx.where(pos, d, -big), axis=1)  # [B]
        hardest_neg = mx.min(mx.where(neg, d, big), axis=1)  # [B]
        valid = mx.logical_and(mx.any(pos, axis=1), mx.any(neg, axis=1))
        per_anchor = mx.where(valid, nn.relu(hardest_pos - hardest_neg + margin), 0.0)
        return mx.sum(per_anchor) / mx.maximum(mx.sum(valid), 1)
    if strategy == "batch_all":
        t = d[:, :, None] - d[:, None, :] + margin  # [B(a),B(p),B(n)]
        valid = mx.logical_and(pos[:, :, None], neg[:, None, :])
        losses = mx.where(valid, nn.relu(t), 0.0)
        active = mx.sum(losses > 1e-16)
        return mx.sum(losses) / mx.maximum(active, 1)
    # semi_hard: candidates [a,p,n] are negatives farther than the positive.
    farther = mx.logical_and(neg[:, None, :], d[:, None, :] > d[:, :, None])  # [B,B,B]
    nearest_farther = mx.min(mx.where(farther, d[:, None, :], big), axis=2)  # [B,B]
    farthest_neg = mx.max(mx.where(neg, d, -big), axis=1)  # [B]
    chosen = mx.where(mx.any(farther, axis=2), nearest_farther, farthest_neg[:, None])  # [B,B]
    per_pair = mx.where(pos, nn.relu(d - chosen + margin), 0.0)
    return mx.sum(per_pair) / mx.maximum(mx.sum(pos), 1)


def joint_loss(
    out: dict[str, mx.array],
    labels: mx.array,
    *,
    classification_weight: float,
    triplet_weight: float,
    margin: float,
    strategy: str,
) -> tuple[mx.array, dict[str, mx.array]]:
    """(total loss, {"ce", "triplet"}) for the model outputs of one batch."""
    ce = mx.mean(nn.losses.cross_entropy(out["logits"].astype(mx.float32), labels))
    trip = triplet_loss(out["embedding"].astype(mx.float32), labels, margin, strategy)
    return classification_weight * ce + triplet_weight * trip, {"ce": ce, "triplet": trip}
