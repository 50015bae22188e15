"""Curriculum learning: train on easy triplets first, then on harder ones, in `curriculum_stages` stages.

Difficulty is a distance margin on unit vectors (large = easy):
- a triplet row (a, p, n): d(a, n) - d(a, p);
- a labelled sentence x: d(x, nearest other label's centroid) - d(x, its own label's centroid), the
  centroids of the training sentences (x left out of its own): how far x sits inside its label.
Stage 0 ranks in the encoder's space (an untrained model knows no difficulty); with
`curriculum_difficulty: model` every later stage re-ranks in the current model's embeddings when it starts.

Stage s trains on a pool: `cumulative` pacing takes the easiest (s + 1) / curriculum_stages of the rows,
`bands` the s-th band of the ranking (the last stage then holds only the hardest rows). Labelled sentences
are ranked within each label, so every label keeps its share in every pool and P x K batches stay possible.
An epoch always has the batches of a full epoch, drawn from the pool in a fresh shuffle, so the LR schedule's
length stays right. The stage advances every `curriculum_epochs_per_stage` epochs (schedule) or after
`curriculum_patience` validations without a val/loss improvement (plateau).

Exact resume: the order of an epoch is a pure function of (seed, epoch, stage, ranking); the stage, the
plateau counters and a model ranking are this callback's state, saved in every checkpoint.
"""

from __future__ import annotations

import math

import numpy as np

from common.callbacks import Callback
from common.sampler import ResumableSampler
from common.seeding import sample_rng
from dtgcnn.config import DTGCNNConfig
from dtgcnn.data import PKOrder


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def triplet_margins(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """d(a, n) - d(a, p) per row, on unit vectors [T, D] (large = easy)."""
    a, p, n = _unit(anchor), _unit(positive), _unit(negative)
    return np.linalg.norm(a - n, axis=1) - np.linalg.norm(a - p, axis=1)


def sentence_margins(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(x, nearest other centroid) - d(x, own centroid without x) per row [N] (large = easy)."""
    v = _unit(vectors)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), v.shape[1]))
    np.add.at(sums, inverse, v)
    others = _unit(sums)  # [C, D] unit centroids
    dist = np.linalg.norm(v[:, None, :] - others[None, :, :], axis=2)  # [N, C]
    own_sum = sums[inverse] - v  # leave x out of its own centroid
    own = np.where((counts[inverse] > 1)[:, None], _unit(own_sum), v)
    d_own = np.linalg.norm(v - own, axis=1)
    dist[np.arange(len(v)), inverse] = np.inf
    return dist.min(axis=1) - d_own


def easy_first(margins: np.ndarray) -> np.ndarray:
    """Row indices from easiest (largest margin) to hardest; ties in row order."""
    return np.argsort(-np.asarray(margins), kind="stable")


def stage_pool(ranking: np.ndarray, stage: int, num_stages: int, pacing: str) -> np.ndarray:
    """The rows of `stage` from an easy-first ranking (sorted row indices)."""
    n = len(ranking)
    end = math.ceil(n * (stage + 1) / num_stages)
    start = math.ceil(n * stage / num_stages) if pacing == "bands" else 0
    return np.sort(ranking[start : max(end, start + 1)])


class PoolPKOrder(PKOrder):
    """P x K groups drawn from a stage's pool, as many groups as a full epoch has."""

    def __init__(self, labels, batch_size: int, samples_per_label: int, seed: int, groups: int) -> None:
        super().__init__(labels, batch_size, samples_per_label, seed)
        self.groups = groups

    @property
    def groups_per_epoch(self) -> int:
        return self.groups


class Curriculum(Callback):
    """The curriculum of one training loader: its stage, its ranking, and the loader's order function."""

    def __init__(self, cfg: DTGCNNConfig, loader) -> None:
        from common.errors import ConfigError

        if cfg.curriculum_stages < 1 or cfg.curriculum_epochs_per_stage < 1 or cfg.curriculum_patience < 1:
            raise ConfigError(
                "curriculum_stages, curriculum_epochs_per_stage and curriculum_patience must be >= 1."
            )
        self.cfg, self.loader = cfg, loader
        self.stage = 0
        self.best, self.wait = math.inf, 0
        self.margins = self.encoder_margins()
        self._cache: tuple | None = None

    # -- ranking -------------------------------------------------------------------------------------------
    def _rows(self, vectors: np.ndarray) -> np.ndarray:
        """Margins of the loader's rows given one vector per dataset text [len(texts), D]."""
        ds, items = self.loader.dataset, self.loader.items
        if ds.kind == "sentences":
            return sentence_margins(vectors[ds.sentence_ids[items]], ds.labels[items])
        t = ds.triplets[items]
        return triplet_margins(vectors[t[:, 0]], vectors[t[:, 1]], vectors[t[:, 2]])

    def encoder_margins(self) -> np.ndarray:
        return self._rows(self.loader.dataset.vectors)

    def model_margins(self, model) -> np.ndarray:
        ds = self.loader.dataset
        ids = np.unique(
            ds.sentence_ids[self.loader.items] if ds.kind == "sentences" else ds.triplets[self.loader.items]
        )
        table = np.zeros((len(ds.texts), model.spec["output_dim"]), np.float32)
        table[ids] = model.embed_vectors(ds.vectors[ids])
        return self._rows(table)

    def pool(self, stage: int) -> np.ndarray:
        """Rows (indices into loader.items) of `stage`; labelled sentences are ranked within each label."""
        cfg, ds = self.cfg, self.loader.dataset
        if ds.kind != "sentences":
            return stage_pool(easy_first(self.margins), stage, cfg.curriculum_stages, cfg.curriculum_pacing)
        labels = ds.labels[self.loader.items]
        parts = []
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            ranked = rows[easy_first(self.margins[rows])]
            parts.append(stage_pool(ranked, stage, cfg.curriculum_stages, cfg.curriculum_pacing))
        return np.sort(np.concatenate(parts))

    # -- the stage -----------------------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> int:
        if self.cfg.curriculum_advance == "schedule":
            return min(epoch // self.cfg.curriculum_epochs_per_stage, self.cfg.curriculum_stages - 1)
        return self.stage

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's row order (indices into loader.items), a pure function of (seed, epoch, stage,
        ranking), as long as a full epoch's order."""
        stage = self.stage_at(epoch)
        if self._cache is not None and self._cache[:2] == (epoch, stage):
            return self._cache[2]
        pool = self.pool(stage)
        seed, n = self.loader.seed, len(self.loader.items)
        ds = self.loader.dataset
        draw = epoch * self.cfg.curriculum_stages + stage  # one draw per (epoch, stage)
        if ds.kind == "sentences":
            labels, batch = ds.labels[self.loader.items], self.loader.sampler.batch_size
            groups = PKOrder(labels, batch, ds.samples_per_label, seed).groups_per_epoch  # a full epoch's
            order = pool[PoolPKOrder(labels[pool], batch, ds.samples_per_label, seed, groups)(draw)]
        else:
            rng = sample_rng(seed, draw, 1_000_000)
            reps = math.ceil(n / len(pool))
            order = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]
        self._cache = (epoch, stage, order)
        return order

    def install(self) -> None:
        """Draw the loader's batches from the curriculum from now on."""
        loader = self.loader
        old = loader.sampler
        loader.sampler = ResumableSampler(
            len(loader.items),
            old.batch_size,
            seed=loader.seed,
            drop_last=old.drop_last,
            order=self.order,
            rank=old.rank,  # under mlx.launch: this process's slice of every global batch, as before
            world_size=old.world_size,
        )

    # -- the loop's calls ------------------------------------------------------------------------------------
    def on_train_epoch_end(self, loop, metrics: dict[str, float]) -> None:
        cfg, epoch = self.cfg, loop.pos.epoch
        before = self.stage_at(epoch)
        if cfg.curriculum_advance == "plateau" and "val/loss" in metrics:
            if metrics["val/loss"] < self.best - 1e-12:
                self.best, self.wait = metrics["val/loss"], 0
            else:
                self.wait += 1
            if self.wait >= cfg.curriculum_patience and self.stage < cfg.curriculum_stages - 1:
                self.stage, self.best, self.wait = self.stage + 1, math.inf, 0
        after = self.stage_at(epoch + 1)
        if after != before:
            if cfg.curriculum_difficulty == "model":
                self.margins = self.model_margins(loop.task.model)
            loop.log({"curriculum/stage": float(after + 1)})

    def state_dict(self) -> dict:
        return {"stage": self.stage, "best": self.best, "wait": self.wait, "margins": self.margins}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.best, self.wait = int(state["stage"]), float(state["best"]), int(state["wait"])
        self.margins = np.asarray(state["margins"], dtype=np.float64)
        self._cache = None


class CurriculumScheduler:
    """The guide's `CurriculumScheduler(dataset, num_stages=4)` over a whole `TripletDataset`:
    `compute_triplet_difficulties()` ranks its rows easy-first (encoder margins), `get_stage_data()` returns
    the rows of `current_stage` (triplets (anchor, positive, negative) or sentences (text, label)),
    `advance_stage()` moves on. Training uses the same ranking through `curriculum: true`."""

    def __init__(self, dataset, num_stages: int = 4, pacing: str = "bands") -> None:
        self.dataset, self.num_stages, self.pacing = dataset, num_stages, pacing
        self.current_stage = 0

    def compute_triplet_difficulties(self) -> np.ndarray:
        ds = self.dataset
        if ds.kind == "sentences":
            return easy_first(sentence_margins(ds.vectors[ds.sentence_ids], ds.labels))
        t = ds.triplets
        return easy_first(triplet_margins(ds.vectors[t[:, 0]], ds.vectors[t[:, 1]], ds.vectors[t[:, 2]]))

    def get_stage_data(self) -> list[tuple[str, ...]]:
        ds = self.dataset
        rows = stage_pool(
            self.compute_triplet_difficulties(), self.current_stage, self.num_stages, self.pacing
        )
        if ds.kind == "sentences":
            return [(ds.texts[ds.sentence_ids[r]], ds.label_names[ds.labels[r]]) for r in rows]
        return [tuple(ds.texts[i] for i in ds.triplets[r]) for r in rows]

    def advance_stage(self) -> None:
        self.current_stage = min(self.current_stage + 1, self.num_stages - 1)
