"""Triplet-loss values against pytorch-metric-learning (the dev-only oracle), O(B^2) memory, no sentinel.

Both sides use Euclidean distances on the embeddings as given (`LpDistance(normalize_embeddings=False)`);
reducers: MeanReducer for none / batch_hard / semi_hard, AvgNonZeroReducer for batch_all.
"""

import mlx.core as mx
import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from dtgcnn.losses import negatives_below, pairwise_distances, semi_hard_negatives, triplet_loss

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import miners, reducers  # noqa: E402
from pytorch_metric_learning.distances import LpDistance  # noqa: E402

MARGIN = 0.2


def random_case(seed, b=24, e=6, classes=5):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((b, e)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, classes, b).astype(np.int32)
    return emb, labels


def ours(emb, labels, strategy, reduction="mean", triplets=None):
    t = None if triplets is None else mx.array(triplets)
    return triplet_loss(mx.array(emb), mx.array(labels), MARGIN, strategy, reduction, triplets=t).item()


def pml(emb, labels, strategy, indices=None):
    dist = LpDistance(normalize_embeddings=False)
    reducer = reducers.AvgNonZeroReducer() if strategy == "batch_all" else reducers.MeanReducer()
    loss_fn = pml_losses.TripletMarginLoss(margin=MARGIN, distance=dist, reducer=reducer)
    e, y = torch.tensor(emb), torch.tensor(labels.astype(np.int64))
    if strategy == "batch_hard":
        indices = miners.BatchHardMiner(distance=dist)(e, y)
    return float(loss_fn(e, y, indices))


def tf_semi_hard_reference(emb, labels):
    """TF-Addons' semi-hard choice by brute force: (a, p, chosen n) for every positive pair."""
    d = np.sqrt(np.maximum(((emb[:, None] - emb[None]) ** 2).sum(-1), 1e-12))
    out = []
    for a in range(len(labels)):
        negs = np.flatnonzero(labels != labels[a])
        for p in np.flatnonzero(labels == labels[a]):
            if p == a or len(negs) == 0:
                continue
            farther = negs[d[a, negs] > d[a, p]]
            n = farther[np.argmin(d[a, farther])] if len(farther) else negs[np.argmax(d[a, negs])]
            out.append((a, p, n))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["none", "batch_hard", "batch_all"])
def test_loss_equals_pytorch_metric_learning(strategy, seed):
    emb, labels = random_case(seed)
    assert ours(emb, labels, strategy) == pytest.approx(pml(emb, labels, strategy), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_follows_tf_addons_and_matches_pml_on_its_triplets(seed):
    emb, labels = random_case(seed)
    ref = tf_semi_hard_reference(emb, labels)
    chosen = np.array(
        semi_hard_negatives(pairwise_distances(mx.array(emb)), mx.array(labels[:, None] != labels[None]))
    )
    d = np.sqrt(np.maximum(((emb[:, None] - emb[None]) ** 2).sum(-1), 1e-12))
    np.testing.assert_allclose(chosen[ref[:, 0], ref[:, 1]], d[ref[:, 0], ref[:, 2]], rtol=1e-5)
    indices = tuple(torch.tensor(ref[:, i]) for i in range(3))
    assert ours(emb, labels, "semi_hard") == pytest.approx(pml(emb, labels, "semi_hard", indices), rel=1e-5)
    # PML's own semi-hard miner returns every triplet inside the band d(a,p) < d(a,n) < d(a,p) + margin;
    # where a pair has any, the TF-Addons choice is the nearest of them.
    dist = LpDistance(normalize_embeddings=False)
    a, p, n = (
        t.numpy()
        for t in miners.TripletMarginMiner(MARGIN, type_of_triplets="semihard", distance=dist)(
            torch.tensor(emb), torch.tensor(labels.astype(np.int64))
        )
    )
    assert len(a) > 0
    for ai, pi in set(zip(a.tolist(), p.tolist(), strict=True)):
        band = n[(a == ai) & (p == pi)]
        assert chosen[ai, pi] == pytest.approx(d[ai, band].min(), rel=1e-5)


def test_explicit_triplets_and_sum_reduction():
    emb, labels = random_case(3)
    trip = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 9, 10]], dtype=np.int32)
    indices = tuple(torch.tensor(trip[:, i]) for i in range(3))
    expected = pml(emb, labels, "none", indices)
    assert ours(emb, labels, "none", triplets=trip) == pytest.approx(expected, rel=1e-5)
    assert ours(emb, labels, "none", "sum", triplets=trip) == pytest.approx(4 * expected, rel=1e-5)
    for strategy in ("batch_hard", "semi_hard", "batch_all"):
        assert ours(emb, labels, strategy, "sum") >= ours(emb, labels, strategy, "mean")


def test_gradients_match_a_brute_force_batch_all():
    """The sorted-row form has the gradient of the plain B x B x B sum (small B, where that is cheap)."""
    emb, labels = random_case(4, b=12)

    def brute(e):
        d = pairwise_distances(e)
        y = mx.array(labels)
        same = y[:, None] == y[None]
        pos = mx.logical_and(same, mx.logical_not(mx.eye(12, dtype=mx.bool_)))
        valid = mx.logical_and(pos[:, :, None], mx.logical_not(same)[:, None, :])
        t = mx.where(valid, mx.maximum(d[:, :, None] - d[:, None, :] + MARGIN, 0.0), 0.0)
        return mx.sum(t) / mx.maximum(mx.sum(t > 0), 1)

    fast = mx.grad(lambda e: triplet_loss(e, mx.array(labels), MARGIN, "batch_all"))(mx.array(emb))
    np.testing.assert_allclose(np.array(fast), np.array(mx.grad(brute)(mx.array(emb))), atol=1e-5)


def test_no_sentinel_when_an_anchor_has_no_negative():
    emb, _ = random_case(5, b=8)
    one_class = np.zeros(8, dtype=np.int32)
    for strategy in ("none", "batch_hard", "semi_hard", "batch_all"):
        assert ours(emb, one_class, strategy) == 0.0
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2], dtype=np.int32)  # anchors 6, 7 have no positive
    for strategy in ("batch_hard", "semi_hard", "batch_all"):
        assert 0.0 <= ours(emb, labels, strategy) < 4.0


def test_negatives_below_counts_and_sums():
    emb, labels = random_case(6, b=16)
    d = np.sqrt(np.maximum(((emb[:, None] - emb[None]) ** 2).sum(-1), 1e-12))
    neg = labels[:, None] != labels[None]
    thr = d + 0.3
    count, total = negatives_below(mx.array(d), mx.array(neg), mx.array(thr))
    below = neg[:, None, :] & (d[:, None, :] < thr[:, :, None])  # [a, p, n]
    np.testing.assert_array_equal(np.array(count), below.sum(-1))
    np.testing.assert_allclose(np.array(total), (below * d[:, None, :]).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["batch_hard", "semi_hard", "batch_all", "none"])
def test_memory_at_batch_1024_stays_quadratic(strategy):
    b = 1024
    emb, labels = random_case(7, b=b, e=64, classes=64)
    e, y = mx.array(emb), mx.array(labels)
    mx.eval(e, y)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    loss, grad = mx.value_and_grad(lambda x: triplet_loss(x, y, MARGIN, strategy))(e)
    mx.eval(loss, grad)
    used = mx.get_peak_memory() - before
    cube = b**3 * 4  # one float32 B x B x B tensor: 4 GiB
    assert used < 64 * b * b * 4 < cube / 10, f"{strategy}: peak {used / 2**20:.0f} MiB"
    assert np.isfinite(loss.item())
