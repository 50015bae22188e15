"""Triplets from labelled sentences: `TripletGenerator`.

    generator = TripletGenerator(similarity_threshold=0.3, negative_sampling_strategy="semi_hard")
    triplets = generator.generate_triplets(sentences, labels, num_triplets_per_anchor=5)
    save_triplets(triplets, "data/triplets.json")             # dtgcnn.text_prep

Similarity is the cosine of the sentences' encoder vectors (`dtgcnn.encoders`, default hashing). A positive
shares the anchor's label and has similarity >= `similarity_threshold` (paraphrases, not merely the same
topic); a negative has another label and is chosen by the strategy:

  random     any sentence of another label
  hard       the most similar sentences of other labels (the anchor's k nearest negatives): the triplets a
             trained model gets most wrong, and the noisiest (a near-duplicate under another label)
  semi_hard  FaceNet's band: farther from the anchor than the positive, but by less than `margin`
             (d(a,p) < d(a,n) < d(a,p) + margin, d = Euclidean distance of the unit vectors); when the band
             is empty, the nearest negative farther than the positive, then any random one

Deterministic: the same inputs and `seed` give the same triplets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError, DataError
from dtgcnn.encoders import TextEncoder, get_encoder

log = logging.getLogger("trainyard.dtgcnn")
STRATEGIES = ("random", "semi_hard", "hard")
_CHUNK = 1024  # anchors per similarity block: memory stays O(chunk x N) for large sets


class TripletGenerator:
    """See the module docstring. `encoder`: a spec string for `get_encoder` or an encoder object."""

    def __init__(
        self,
        similarity_threshold: float = 0.8,
        negative_sampling_strategy: str = "random",
        encoder: str | TextEncoder = "hashing",
        *,
        margin: float = 0.2,
        seed: int = 0,
    ) -> None:
        if negative_sampling_strategy not in STRATEGIES:
            raise ConfigError(
                f"TripletGenerator: negative_sampling_strategy {negative_sampling_strategy!r} is not one of "
                f"{', '.join(STRATEGIES)}."
            )
        if not -1.0 <= similarity_threshold <= 1.0:
            raise ConfigError(
                f"TripletGenerator: similarity_threshold is a cosine similarity in [-1, 1], "
                f"got {similarity_threshold}."
            )
        self.similarity_threshold = float(similarity_threshold)
        self.strategy = negative_sampling_strategy
        self.encoder = get_encoder(encoder) if isinstance(encoder, str) else encoder
        self.margin, self.seed = float(margin), int(seed)

    def generate_triplets(
        self, sentences: Sequence[str], labels: Sequence, num_triplets_per_anchor: int = 5
    ) -> list[dict[str, str]]:
        """[{"anchor", "positive", "negative"}, ...]: up to `num_triplets_per_anchor` per sentence (one per
        distinct positive that passes the threshold), in anchor order."""
        sentences = list(sentences)
        if len(sentences) != len(labels):
            raise DataError(
                f"generate_triplets: {len(sentences)} sentences but {len(labels)} labels; give one label each."
            )
        vectors = self.encoder.encode(sentences)
        rows = self.generate_indices(vectors, labels, num_triplets_per_anchor)
        return [
            {"anchor": sentences[a], "positive": sentences[p], "negative": sentences[n]} for a, p, n in rows
        ]

    def generate_indices(
        self, vectors: np.ndarray, labels: Sequence, num_triplets_per_anchor: int
    ) -> np.ndarray:
        """[T, 3] int64 rows (anchor, positive, negative) of indices into `vectors` / `labels`."""
        if num_triplets_per_anchor < 1:
            raise ConfigError(f"num_triplets_per_anchor must be >= 1, got {num_triplets_per_anchor}.")
        unit = np.asarray(vectors, dtype=np.float32)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        _, label_ids = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
        if label_ids.max(initial=0) < 1:
            raise DataError(
                "generate_triplets: every sentence has the same label; negatives need two labels."
            )
        # positives and negatives draw from separate streams, so every strategy picks the same (a, p) pairs
        pos_rng = np.random.default_rng([self.seed, 0])
        neg_rng = np.random.default_rng([self.seed, 1])
        rows: list[tuple[int, int, int]] = []
        best_same = []  # each anchor's most similar same-label sentence, for the error message
        for start in range(0, len(unit), _CHUNK):
            sim = unit[start : start + _CHUNK] @ unit.T  # [chunk, N] cosine similarities
            for r, a in enumerate(range(start, min(start + _CHUNK, len(unit)))):
                same = label_ids == label_ids[a]
                same[a] = False
                positives = np.flatnonzero(same & (sim[r] >= self.similarity_threshold))
                if same.any():
                    best_same.append(float(sim[r][same].max()))
                if len(positives) == 0:
                    continue
                chosen = pos_rng.permutation(positives)[:num_triplets_per_anchor]
                negatives = np.flatnonzero(label_ids != label_ids[a])
                for p, n in zip(chosen, self._negatives(sim[r], chosen, negatives, neg_rng), strict=True):
                    rows.append((a, int(p), int(n)))
        if not rows:
            top = f"; the most similar same-label pairs reach {max(best_same):.3f}" if best_same else ""
            raise DataError(
                f"generate_triplets: no sentence has a same-label positive with similarity >= "
                f"{self.similarity_threshold} under the {self.encoder.name} encoder{top}. Lower "
                "similarity_threshold."
            )
        kept = len({a for a, _, _ in rows})
        log.info(
            "generated %d %s triplets from %d of %d anchors (positives at similarity >= %.2f)",
            len(rows),
            self.strategy,
            kept,
            len(unit),
            self.similarity_threshold,
        )
        return np.array(rows, dtype=np.int64)

    def _negatives(
        self, sim: np.ndarray, positives: np.ndarray, negatives: np.ndarray, rng: np.random.Generator
    ) -> list[int]:
        """One negative per positive, by the strategy (distinct where enough negatives exist)."""
        if self.strategy == "random":
            return list(rng.choice(negatives, size=len(positives), replace=len(negatives) < len(positives)))
        by_similarity = negatives[np.argsort(-sim[negatives], kind="stable")]  # nearest negatives first
        if self.strategy == "hard":
            return [int(by_similarity[i % len(by_similarity)]) for i in range(len(positives))]
        dist = np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0))  # unit vectors: d^2 = 2 - 2 cos
        picked = []
        for p in positives:
            d_ap = dist[p]
            d_an = dist[negatives]
            band = negatives[(d_an > d_ap) & (d_an < d_ap + self.margin)]
            if len(band):
                picked.append(int(rng.choice(band)))
                continue
            farther = by_similarity[dist[by_similarity] > d_ap]
            picked.append(int(farther[0]) if len(farther) else int(rng.choice(negatives)))
        return picked
