import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from dtgcnn.losses import joint_loss, triplet_loss
from dtgcnn.metrics import batch_metrics, retrieval_metrics
from dtgcnn.model import DTGCNN, EdgeConv, ModelSpec, flops_per_sample, knn, smallest_k

# Four 1-D points (x, 0); labels 0,0,1,1. Distances: d01=1, d02=3, d03=0.5, d12=2, d13=0.5, d23=2.5.
EMB = mx.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.5, 0.0]])
LABELS = mx.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        # per anchor: hardest positive - nearest negative + 0.2 = 0.7, 0.7, 0.7, 2.2
        ("batch_hard", (0.7 + 0.7 + 0.7 + 2.2) / 4),
        # the 8 valid triplets have losses 0, 0.7, 0, 0.7, 0, 0.7, 2.2, 2.2: sum over the 5 active ones
        ("batch_all", (0.7 * 3 + 2.2 * 2) / 5),
        # per (a,p): semi-hard negatives exist for the first three pairs (loss 0); anchor 3 has none, so its
        # farthest negative (0.5) gives 2.5 - 0.5 + 0.2; mean over the 4 pairs
        ("semi_hard", 2.2 / 4),
    ],
)
def test_triplet_loss_hand_computed(strategy, expected):
    assert triplet_loss(EMB, LABELS, 0.2, strategy).item() == pytest.approx(expected, abs=1e-5)


def test_joint_loss_weights_the_parts():
    logits = mx.array([[0.0, math.log(3.0)]] * 4)  # p(class 1) = 3/4
    out = {"logits": logits, "embedding": EMB}
    total, parts = joint_loss(
        out,
        mx.array([1, 1, 1, 1]),
        classification_weight=2.0,
        triplet_weight=0.5,
        margin=0.2,
        strategy="batch_hard",
    )
    assert parts["ce"].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert total.item() == pytest.approx(2 * parts["ce"].item() + 0.5 * parts["triplet"].item(), abs=1e-6)


def test_batch_metrics_hand_computed():
    out = {"embedding": EMB, "logits": mx.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])}
    m = {k: v.item() for k, v in batch_metrics(out, LABELS, 0.2).items()}
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["triplet_accuracy"] == pytest.approx(3 / 8)
    assert m["hard_negative_ratio"] == pytest.approx(5 / 8)
    assert m["mean_positive_distance"] == pytest.approx(1.75, abs=1e-5)
    assert m["mean_negative_distance"] == pytest.approx(1.5, abs=1e-5)


def test_retrieval_metrics():
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], dtype=np.float32)
    assert retrieval_metrics(emb, np.array([0, 0, 1, 1])) == pytest.approx(
        {"recall_at_1": 1.0, "roc_auc": 1.0}
    )
    # Swap labels of points 1 and 2: point 0's nearest (1) now has another label; AUC from sklearn's definition.
    m = retrieval_metrics(emb, np.array([0, 1, 0, 1]))
    assert m["recall_at_1"] == pytest.approx(0.0)
    # positive pairs score (0,2)=0, (1,3)=0; negatives .8, -.6, .6, .8: each positive beats 1 of 4 negatives
    assert m["roc_auc"] == pytest.approx(0.25)


def test_knn_matches_brute_force():
    x = mx.random.normal((2, 40, 5), key=mx.random.key(0))
    d = np.array(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
    expected = np.sort(np.argsort(d, axis=-1)[:, :, :6], axis=-1)
    np.testing.assert_array_equal(np.sort(np.array(knn(x, 6)), axis=-1), expected)


@pytest.mark.parametrize("num_points", [256, 253])  # a multiple of the block, and padded with +inf
def test_blocked_knn_selects_the_same_neighbours_as_a_full_argpartition(num_points):
    """smallest_k's block-minima pruning (the path taken at real sizes) returns exactly the k nearest."""
    x = mx.random.normal((2, num_points, 5), key=mx.random.key(3))
    d = np.array(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
    expected = np.sort(np.argsort(d, axis=-1, kind="stable")[:, :, :7], axis=-1)
    score = mx.array(d)
    assert -(-num_points // 8) >= 2 * 7  # the blocked path, not the small-input fallback
    np.testing.assert_array_equal(np.sort(np.array(smallest_k(score, 7, block=8)), axis=-1), expected)
    np.testing.assert_array_equal(np.sort(np.array(knn(x, 7)), axis=-1), expected)


def test_blocked_knn_with_ties_returns_the_k_smallest_values():
    """Duplicated points tie at the k-th distance: any tied choice is valid, the selected distances must be
    the k smallest ones, with no index repeated."""
    base = np.random.default_rng(0).standard_normal((1, 100, 3)).astype(np.float32)
    pts = np.concatenate([base, base, base], axis=1)  # every point three times: many exact ties
    d = ((pts[:, :, None] - pts[:, None]) ** 2).sum(-1)  # [1,300,300]
    idx = np.array(smallest_k(mx.array(d), 5, block=8))
    picked = np.sort(np.take_along_axis(d, idx, axis=-1), axis=-1)
    np.testing.assert_array_equal(picked, np.sort(d, axis=-1)[:, :, :5])
    assert all(len(set(row)) == 5 for row in idx.reshape(-1, 5))


@pytest.mark.parametrize("training", [True, False])
def test_edgeconv_fast_path_equals_textbook(training):
    """The per-point linear layer and winner gather give the per-edge MLP's outputs and gradients."""
    mx.random.seed(1)
    conv = EdgeConv(6, 16, k=5)
    conv.train(training)
    x = mx.random.normal((2, 30, 6)) + 2.0
    target = mx.random.normal((2, 30, 16))
    np.testing.assert_allclose(np.array(conv(x)), np.array(conv.naive(x)), atol=1e-5)
    _, fast = nn.value_and_grad(conv, lambda m, x: (m(x) * target).sum())(conv, x)
    _, slow = nn.value_and_grad(conv, lambda m, x: (m.naive(x) * target).sum())(conv, x)
    for (name, a), (_, b) in zip(tree_flatten(fast), tree_flatten(slow), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4, err_msg=name)


def test_model_outputs_and_flops():
    spec = ModelSpec(
        in_channels=6,
        num_classes=3,
        k=4,
        edge_conv_dims=(8, 16),
        fusion_dim=32,
        hidden_dim=16,
        embedding_dim=8,
    )
    model = DTGCNN(spec)
    out = model(mx.random.normal((4, 20, 6)))
    assert out["embedding"].shape == (4, 8) and out["logits"].shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(np.array(out["embedding"]), axis=1), 1, atol=1e-5)
    fast, naive = flops_per_sample(spec, 20), flops_per_sample(spec, 20, naive_edges=True)
    # the edge MLP costs k times less per point: the textbook count exceeds ours by exactly that part
    edge = 2 * 20 * 2 * (6 * 8 + 8 * 16)
    assert naive["forward"] - fast["forward"] == pytest.approx(edge * (4 - 1))


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from dtgcnn.metrics import roc_auc

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(4, 200))
        target = rng.random(n) < 0.3
        target[:2] = [True, False]
        score = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # coarse rounding: many ties
        assert roc_auc(target, score) == pytest.approx(roc_auc_score(target, score), abs=1e-12)
