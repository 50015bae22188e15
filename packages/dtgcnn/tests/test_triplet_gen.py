"""TripletGenerator on a real text set: positives pass the threshold, hard negatives are measurably closer
to the anchor than semi-hard ones, and those closer than random ones; deterministic with a seed."""

from collections import Counter

import numpy as np
import pytest

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError, DataError
from dtgcnn.encoders import get_encoder
from dtgcnn.textsets import load_text_set
from dtgcnn.triplet_gen import TripletGenerator


@pytest.fixture(scope="module")
def intents():
    sentences, labels = load_text_set("ha-intents-en", max_per_label=20)
    return sentences, np.array(labels), get_encoder("hashing").encode(sentences)


def test_negative_strategies_order_by_distance(intents):
    sentences, labels, vectors = intents
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = {
        s: TripletGenerator(0.3, s, seed=7).generate_indices(vectors, labels, 3)
        for s in ("random", "semi_hard", "hard")
    }
    # the same (anchor, positive) pairs under every strategy: a paired comparison of the negatives
    assert all((r[:, :2] == rows["random"][:, :2]).all() for r in rows.values())
    a, p = rows["random"][:, 0], rows["random"][:, 1]
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (np.sum(unit[a] * unit[p], axis=1) >= 0.3 - 1e-6).all()
    d_ap = np.linalg.norm(unit[a] - unit[p], axis=1)
    d_an = {s: np.linalg.norm(unit[a] - unit[r[:, 2]], axis=1) for s, r in rows.items()}
    for r in rows.values():
        assert (labels[r[:, 2]] != labels[r[:, 0]]).all()
    mean = {s: float(d.mean()) for s, d in d_an.items()}
    assert mean["hard"] + 0.1 < mean["semi_hard"] < mean["random"] - 0.1, mean
    # hard = each anchor's nearest other-label sentence; semi-hard lie beyond the positive, mostly in the band
    sim = unit @ unit.T
    nearest_negative = np.where(labels[:, None] != labels[None, :], sim, -np.inf).max(axis=1)
    first = np.r_[True, a[1:] != a[:-1]]  # each anchor's first triplet gets its nearest negative
    hard_sim = np.sum(unit[a] * unit[rows["hard"][:, 2]], axis=1)
    np.testing.assert_allclose(hard_sim[first], nearest_negative[a[first]], atol=1e-5)
    # semi-hard: inside the band d(a,p) < d(a,n) < d(a,p) + margin whenever the band holds a negative,
    # else the nearest negative beyond the positive (brute force over every negative of the anchor)
    dist = np.sqrt(np.maximum(2 - 2 * sim, 0))
    for i, (anchor, _, negative) in enumerate(rows["semi_hard"]):
        others = dist[anchor][labels != labels[anchor]]
        in_band = (others > d_ap[i]) & (others < d_ap[i] + 0.2)
        if in_band.any():
            assert d_ap[i] < dist[anchor, negative] < d_ap[i] + 0.2 + 1e-6
        else:
            assert dist[anchor, negative] == pytest.approx(others[others > d_ap[i]].min(), abs=1e-5)


def test_texts_and_determinism(intents):
    sentences, labels = intents[0][:200], intents[1][:200]
    gen = lambda seed: TripletGenerator(0.5, "semi_hard", seed=seed).generate_triplets(sentences, labels, 2)  # noqa: E731
    first = gen(1)
    assert first == gen(1) and first != gen(2)
    label_of = dict(zip(sentences, labels, strict=True))
    assert all(label_of[t["anchor"]] == label_of[t["positive"]] != label_of[t["negative"]] for t in first)
    assert max(Counter(t["anchor"] for t in first).values()) == 2


def test_bad_requests_are_clear(intents):
    sentences, labels, _ = intents
    with pytest.raises(ConfigError, match="negative_sampling_strategy 'easy'"):
        TripletGenerator(0.5, "easy")
    with pytest.raises(DataError, match="no sentence has a same-label positive with similarity >= 0.999"):
        TripletGenerator(0.999).generate_triplets(sentences[:30], labels[:30], 1)
    with pytest.raises(DataError, match="30 sentences but 29 labels"):
        TripletGenerator(0.5).generate_triplets(sentences[:30], labels[:29], 1)
