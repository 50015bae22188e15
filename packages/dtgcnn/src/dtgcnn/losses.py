"""Triplet loss with online mining (both modalities) and the mesh mode's joint loss, all in O(B^2) memory.

Conventions (the same as pytorch-metric-learning's `TripletMarginLoss` with `LpDistance(p=2, power=1)`,
which the tests use as the oracle): Euclidean distances d between the embedding rows; a triplet (a, p, n) has
label(p) == label(a), p != a, label(n) != label(a), and loss relu(d(a,p) - d(a,n) + margin).

Strategies (`mining_strategy`), each with `loss_reduction` "mean" (the strategy's own average, below) or "sum":
- none: no mining. With explicit `triplets` (bare text triplets) their own loss, averaged over the triplets;
  with labels alone every valid triplet of the batch, averaged over all of them (PML's loss, no miner,
  MeanReducer).
- batch_hard: per anchor its farthest positive and nearest negative; mean over the
  anchors that have both (PML: BatchHardMiner + MeanReducer).
- semi_hard: per (anchor, positive) pair the nearest negative
  farther than the positive, d(a,n) > d(a,p); when there is none, the anchor's farthest negative; mean over
  the pairs whose anchor has a negative.
- batch_all: every valid triplet; the sum divided by the number of triplets with a positive loss, so easy
  triplets do not dilute the average (PML: no miner, AvgNonZeroReducer).

Focal weighting (`focal_gamma` > 0): each triplet's loss l becomes (1 - exp(-l))**gamma * l, so triplets
that are nearly satisfied (small l) count little and hard ones dominate; the weight is differentiated as
written. It needs each triplet's own loss, so it works with explicit triplets, batch_hard and semi_hard;
batch_all and label-mined "none" sum their triplets in closed form and refuse it.

Memory: nothing of size B x B x B is built. batch_all and the "all triplets" variants need, per (a, p), how
many negatives of a lie below a threshold t(a,p) and the sum of their distances: each row's negative
distances and thresholds are sorted together ([B, 2B]) and running sums over the sorted row are read at each
threshold's place. semi_hard reads the next negative after each threshold from the same sorted row. Masked
entries use a finite "far" value computed from the batch, never a constant like 1e9 that could reach the loss.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

STRATEGIES = ("none", "batch_hard", "semi_hard", "batch_all")
REDUCTIONS = ("mean", "sum")


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


def _far(d: mx.array, margin: float) -> mx.array:
    """A finite distance beyond every real one (masked entries sort last and lose every min)."""
    return mx.stop_gradient(mx.max(d)) + abs(margin) + 1.0


def _sorted_with_thresholds(d: mx.array, neg: mx.array, thresholds: mx.array, margin: float):
    """Each row's negative distances and its thresholds sorted together.

    Returns (order [B,2B] column ids into [negatives | thresholds], is_negative [B,2B] in sorted order,
    place [B,B] where threshold (a, p) landed in row a's sorted order). Non-negatives get the far value and
    sort after every threshold, so they are never counted."""
    b = d.shape[0]
    keys = mx.concatenate([mx.where(neg, d, _far(d, margin)), thresholds], axis=1)  # [B,2B]
    order = mx.stop_gradient(mx.argsort(mx.stop_gradient(keys), axis=1))  # [B,2B]
    is_neg = mx.take_along_axis(mx.concatenate([neg, mx.zeros_like(neg)], axis=1), order, axis=1)
    place = mx.argsort(order, axis=1)[:, b:]  # inverse permutation, threshold columns only [B,B]
    return order, is_neg, place


def negatives_below(d: mx.array, neg: mx.array, thresholds: mx.array, margin: float = 0.0):
    """(count, distance sum) [B,B]: for each (a, p), the negatives n of a with d(a,n) < thresholds(a,p).

    O(B^2) memory (see the module docstring); the sum is differentiable in d."""
    order, is_neg, place = _sorted_with_thresholds(d, neg, thresholds, margin)
    values = mx.take_along_axis(
        mx.concatenate([mx.where(neg, d, 0.0), mx.zeros_like(d)], axis=1), order, axis=1
    )
    is_neg_f = is_neg.astype(d.dtype)
    count = mx.take_along_axis(mx.cumsum(is_neg_f, axis=1), place, axis=1)  # [B,B]
    total = mx.take_along_axis(mx.cumsum(values * is_neg_f, axis=1), place, axis=1)
    return count, total


def _reduce(total: mx.array, count: mx.array, reduction: str) -> mx.array:
    return total if reduction == "sum" else total / mx.maximum(count, 1)


def focal_weighted(losses: mx.array, gamma: float) -> mx.array:
    """Per-triplet losses l -> (1 - exp(-l))**gamma * l (gamma 0: unchanged)."""
    if gamma == 0:
        return losses
    # the floor keeps the weight's gradient finite at l = 0 for gamma < 1 (there w * l is 0 either way)
    return mx.maximum(1.0 - mx.exp(-losses), 1e-12) ** gamma * losses


def triplet_loss(
    emb: mx.array,
    labels: mx.array,
    margin: float,
    strategy: str = "batch_hard",
    reduction: str = "mean",
    triplets: mx.array | None = None,
    focal_gamma: float = 0.0,
) -> mx.array:
    """The triplet loss of one batch: emb [B,E], labels [B] int, `triplets` [T,3] row ids (a, p, n) or None.

    See the module docstring for the strategies and the focal weighting; `triplets` is used by strategy
    "none" only (the mining strategies find their triplets from the labels)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if focal_gamma and strategy in ("batch_all", "none") and triplets is None:
        raise ValueError(
            f"focal weighting needs each triplet's own loss; mining_strategy {strategy!r} over labels sums "
            "its triplets in closed form. Use batch_hard or semi_hard, or bare triplets."
        )
    if strategy == "none" and triplets is not None:
        a, p, n = triplets[:, 0], triplets[:, 1], triplets[:, 2]
        d_ap = mx.sqrt(mx.maximum(mx.sum((emb[a] - emb[p]) ** 2, axis=-1), 1e-12))
        d_an = mx.sqrt(mx.maximum(mx.sum((emb[a] - emb[n]) ** 2, axis=-1), 1e-12))
        per_triplet = focal_weighted(nn.relu(d_ap - d_an + margin), focal_gamma)
        return _reduce(mx.sum(per_triplet), mx.array(triplets.shape[0]), reduction)
    d = pairwise_distances(emb)  # [B,B]
    pos, neg = label_masks(labels)
    has_neg = mx.any(neg, axis=1)  # [B]
    if strategy == "batch_hard":
        hardest_pos = mx.max(mx.where(pos, d, 0.0), axis=1)  # [B]
        hardest_neg = mx.min(mx.where(neg, d, _far(d, margin)), axis=1)  # [B]
        valid = mx.logical_and(mx.any(pos, axis=1), has_neg)
        per_anchor = mx.where(
            valid, focal_weighted(nn.relu(hardest_pos - hardest_neg + margin), focal_gamma), 0.0
        )
        return _reduce(mx.sum(per_anchor), mx.sum(valid), reduction)
    if strategy == "semi_hard":
        chosen = semi_hard_negatives(d, neg, margin)  # [B,B]
        pairs = mx.logical_and(pos, has_neg[:, None])
        per_pair = mx.where(pairs, focal_weighted(nn.relu(d - chosen + margin), focal_gamma), 0.0)
        return _reduce(mx.sum(per_pair), mx.sum(pairs), reduction)
    # batch_all and none over all valid triplets: for each (a, p) the negatives with d(a,n) < d(a,p) + margin
    # are exactly the triplets with a positive loss, and their loss sum is count * (d(a,p) + margin) - sum.
    count, below = negatives_below(d, neg, d + margin, margin)
    posf = pos.astype(d.dtype)
    total = mx.sum(posf * (count * (d + margin) - below))
    if strategy == "batch_all":
        return _reduce(total, mx.sum(posf * count), reduction)
    num_triplets = mx.sum(posf * mx.sum(neg, axis=1, keepdims=True).astype(d.dtype))
    return _reduce(total, num_triplets, reduction)


def semi_hard_negatives(d: mx.array, neg: mx.array, margin: float = 0.0) -> mx.array:
    """[B,B]: for each (a, p) the distance to a's nearest negative with d(a,n) > d(a,p), or to a's farthest
    negative when none is farther (TF-Addons' semi-hard choice); found without a B x B x B tensor."""
    b = d.shape[0]
    order, is_neg, place = _sorted_with_thresholds(d, neg, d, margin)
    # next_negative[a, i]: the first sorted place >= i holding a negative (2B when there is none)
    positions = mx.broadcast_to(mx.arange(2 * b)[None, :], is_neg.shape)
    next_negative = mx.cummin(mx.where(is_neg, positions, 2 * b), axis=1, reverse=True)
    after = mx.take_along_axis(next_negative, mx.minimum(place + 1, 2 * b - 1), axis=1)  # [B,B]
    found = after < 2 * b
    column = mx.take_along_axis(order, mx.minimum(after, 2 * b - 1), axis=1)  # a negative's column (< B)
    farthest = mx.argmax(mx.where(neg, d, -1.0), axis=1, keepdims=True)  # [B,1]
    index = mx.stop_gradient(mx.where(found, column, farthest))
    return mx.take_along_axis(d, index, axis=1)


class FocalTripletLoss:
    """The focal triplet loss of explicit (anchor, positive, negative) embeddings [T,E] each:
    mean over the triplets of (1 - exp(-l))**gamma * l, l = relu(d(a,p) - d(a,n) + margin)."""

    def __init__(self, margin: float = 0.2, gamma: float = 2.0) -> None:
        self.margin, self.gamma = margin, gamma

    def __call__(self, anchor: mx.array, positive: mx.array, negative: mx.array) -> mx.array:
        emb = mx.concatenate([anchor, positive, negative], axis=0)  # [3T,E]
        t = anchor.shape[0]
        ids = mx.arange(t)
        triplets = mx.stack([ids, ids + t, ids + 2 * t], axis=1)  # [T,3]
        labels = mx.zeros((3 * t,), dtype=mx.int32)  # unused: explicit triplets
        return triplet_loss(emb, labels, self.margin, "none", "mean", triplets, self.gamma)


def adaptive_margin(initial: float, target: float | None, epoch: int, num_epochs: int) -> float:
    """The margin of epoch `epoch` (from 0): `initial` moving linearly to `target` over the run
    (initial + (target - initial) * epoch / num_epochs); `target` None keeps `initial`. A pure function of
    the epoch, so a resumed run uses the same margins."""
    if target is None:
        return float(initial)
    progress = min(max(epoch, 0), num_epochs) / max(num_epochs, 1)
    return float(initial + (target - initial) * progress)


class AdaptiveMarginScheduler:
    """`step(epoch, total_epochs)` -> the margin for that epoch (see `adaptive_margin`)."""

    def __init__(self, initial_margin: float = 0.2, target_margin: float = 0.5) -> None:
        self.initial_margin, self.target_margin = initial_margin, target_margin
        self.current_margin = initial_margin

    def step(self, epoch: int, total_epochs: int) -> float:
        self.current_margin = adaptive_margin(self.initial_margin, self.target_margin, epoch, total_epochs)
        return self.current_margin


def joint_loss(
    out: dict[str, mx.array],
    labels: mx.array,
    *,
    classification_weight: float,
    triplet_weight: float,
    margin: float,
    strategy: str,
) -> tuple[mx.array, dict[str, mx.array]]:
    """(total loss, {"ce", "triplet"}) for the mesh model's outputs of one batch."""
    ce = mx.mean(nn.losses.cross_entropy(out["logits"].astype(mx.float32), labels))
    trip = triplet_loss(out["embedding"].astype(mx.float32), labels, margin, strategy)
    return classification_weight * ce + triplet_weight * trip, {"ce": ce, "triplet": trip}
