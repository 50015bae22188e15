"""Mesh dataset: reader and up-front validation, augmentation, the P x K batch order, prefetching.

Format (per split in train/val/test):
    {split}_metadata.json  {"samples": [{"subject_id", "mesh_id", "label"}, ...], optional "num_vertices"}
    {split}_data.h5        /<subject_id>/<mesh_id>/coordinates [N,3] and /normals [N,3]
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.errors import DataError
from common.prefetch import prefetch_in_thread
from common.sampler import ResumableSampler
from common.seeding import epoch_permutation, sample_rng

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    subject_id: str
    mesh_id: str
    label: int


class MeshSplit:
    """One split of a dataset directory, validated on construction (`DataError` naming file and sample)."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        *,
        num_vertices: int,
        num_classes: int | None = None,
        use_normals: bool = True,
        center: bool = True,
        cache: bool = False,
    ):
        self.data_dir = Path(data_dir)
        self.split = split
        self.meta_path = self.data_dir / f"{split}_metadata.json"
        self.h5_path = self.data_dir / f"{split}_data.h5"
        self.num_vertices = num_vertices
        self.use_normals = use_normals
        self.center = center
        self.samples = self._read_metadata()
        self.num_classes = num_classes or (max(s.label for s in self.samples) + 1)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._h5: h5py.File | None = None
        self._lock = threading.Lock()  # h5py handles are not meant for concurrent use from two threads
        self._validate()

    @classmethod
    def for_config(
        cls, data_dir: str | Path, split: str, cfg, num_classes: int | None, *, cache: bool = False
    ) -> MeshSplit:
        """The split read the way a run with config `cfg` (a TrainConfig) reads it."""
        return cls(
            data_dir,
            split,
            num_vertices=cfg.num_vertices,
            num_classes=num_classes,
            use_normals=cfg.use_normals,
            center=cfg.center_meshes,
            cache=cache,
        )

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def in_channels(self) -> int:
        return 6 if self.use_normals else 3

    def __len__(self) -> int:
        return len(self.samples)

    def _read_metadata(self) -> list[Sample]:
        for path in (self.meta_path, self.h5_path):
            if not path.is_file():
                raise DataError(
                    f"Missing data file {path} (expected {{split}}_metadata.json and "
                    f"{{split}}_data.h5 for split '{self.split}'; make one with python -m dtgcnn.synthetic)."
                )
        try:
            meta = json.loads(self.meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.meta_path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("samples"), list) or not meta["samples"]:
            raise DataError(f"{self.meta_path} needs a non-empty list under the key 'samples'.")
        declared = meta.get("num_vertices")
        if declared is not None and int(declared) != self.num_vertices:
            raise DataError(
                f"{self.meta_path} declares num_vertices={declared} but the config expects "
                f"{self.num_vertices}; set num_vertices={declared}."
            )
        samples = []
        for i, entry in enumerate(meta["samples"]):
            missing = [
                k for k in ("subject_id", "mesh_id", "label") if not isinstance(entry, dict) or k not in entry
            ]
            if missing:
                raise DataError(f"{self.meta_path}: sample #{i} lacks key(s) {', '.join(missing)}.")
            if not isinstance(entry["label"], int) or isinstance(entry["label"], bool) or entry["label"] < 0:
                raise DataError(
                    f"{self.meta_path}: sample #{i} ({entry['subject_id']}/{entry['mesh_id']}) has "
                    f"label {entry['label']!r}; labels are integers >= 0."
                )
            samples.append(Sample(str(entry["subject_id"]), str(entry["mesh_id"]), entry["label"]))
        return samples

    def _validate(self) -> None:
        """Read every mesh once: keys, shapes, finiteness, label range (before any training starts)."""
        for i, s in enumerate(self.samples):
            where = f"{self.h5_path} sample #{i} ({s.subject_id}/{s.mesh_id})"
            if s.label >= self.num_classes:
                raise DataError(
                    f"{self.meta_path}: sample #{i} ({s.subject_id}/{s.mesh_id}) has label {s.label}, "
                    f"out of range for num_classes={self.num_classes}."
                )
            coords, normals = self._read(i, where)
            for name, arr in (("coordinates", coords), ("normals", normals)):
                if arr.shape != (self.num_vertices, 3):
                    raise DataError(
                        f"{where}: {name} has shape {list(arr.shape)}, expected "
                        f"[{self.num_vertices}, 3] (num_vertices={self.num_vertices})."
                    )
                if not np.isfinite(arr).all():
                    raise DataError(f"{where}: {name} contains NaN or inf.")

    def _file(self) -> h5py.File:
        if self._h5 is None:
            try:
                self._h5 = h5py.File(self.h5_path, "r")
            except OSError as exc:
                raise DataError(f"Cannot open {self.h5_path} as HDF5: {exc}") from exc
        return self._h5

    def _read(self, index: int, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        s = self.samples[index]
        with self._lock:
            h5 = self._file()
            group = h5.get(f"{s.subject_id}/{s.mesh_id}")
            if group is None or "coordinates" not in group or "normals" not in group:
                where = where or f"{self.h5_path} sample #{index} ({s.subject_id}/{s.mesh_id})"
                raise DataError(f"{where}: missing group or its 'coordinates'/'normals' datasets.")
            pair = (np.asarray(group["coordinates"], np.float32), np.asarray(group["normals"], np.float32))
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def mesh(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates [N,3], normals [N,3]) float32, centred when configured."""
        coords, normals = self._read(index)
        if self.center:
            coords = coords - coords.mean(axis=0, keepdims=True)
        return coords, normals

    def features(self, coords: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Model input per point [N, 3 or 6]."""
        return np.concatenate([coords, normals], axis=1) if self.use_normals else coords

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


class MeshAugmentation:
    """Random rigid rotation (about a random axis, within +-rotation_range degrees), isotropic scale, coordinate
    jitter and mirror flip (x -> -x); normals are rotated and flipped with the surface, never scaled or jittered."""

    def __init__(
        self,
        rotation_range: float = 15.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        noise_std: float = 0.01,
        flip_probability: float = 0.0,
    ):
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise DataError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}.")
        if not 0.0 <= flip_probability <= 1.0:
            raise DataError(f"flip_probability must be in [0, 1], got {flip_probability}.")
        self.rotation_range = rotation_range
        self.scale_range = tuple(scale_range)
        self.noise_std = noise_std
        self.flip_probability = flip_probability

    @staticmethod
    def rotation_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
        """Rodrigues rotation [3,3] about `axis` (any length) by `degrees`."""
        axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        a = np.deg2rad(degrees)
        return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)

    def __call__(self, coords: np.ndarray, normals: np.ndarray, rng: np.random.Generator):
        rot = self.rotation_matrix(rng.normal(size=3), rng.uniform(-self.rotation_range, self.rotation_range))
        if rng.random() < self.flip_probability:
            rot = rot @ np.diag([-1.0, 1.0, 1.0])  # reflection first, then rotation
        scale = rng.uniform(*self.scale_range)
        coords = (coords @ rot.T) * scale + rng.normal(0.0, self.noise_std, size=coords.shape)
        normals = normals @ rot.T
        return coords.astype(np.float32), normals.astype(np.float32)


class PKOrder:
    """The epoch's sample order as label-balanced P x K groups: `order(epoch)` is a pure function of
    (seed, epoch), for `common.sampler.ResumableSampler(order=...)` with batch size P*K.

    Each consecutive group of P*K positions holds K meshes of each of P labels: K >= 2 of a label gives
    positives, P >= 2 labels gives negatives, which triplet mining needs. Labels are drawn in a fresh random
    order whenever fewer than P are left; a label's meshes are taken in its own per-epoch shuffle, cycling
    (labels with fewer than K meshes repeat some). An epoch has floor(num_samples / (P*K)) groups (at least
    one)."""

    def __init__(self, labels: np.ndarray, batch_size: int, samples_per_label: int, seed: int):
        self.labels = np.asarray(labels)
        self.k = samples_per_label
        self.p = batch_size // samples_per_label
        self.seed = seed
        self.classes = np.unique(self.labels)
        if self.k < 2 or self.p < 2:
            raise DataError(
                f"batch_size={batch_size} with samples_per_label={samples_per_label} gives "
                f"P={self.p} labels x K={self.k}; triplet mining needs P >= 2 and K >= 2."
            )
        if len(self.classes) < self.p:
            raise DataError(
                f"The training split has {len(self.classes)} labels but a batch needs P={self.p}; "
                f"lower batch_size or raise samples_per_label."
            )
        self.by_label = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, order): the sampler asks repeatedly

    @property
    def batch_size(self) -> int:
        """P*K: the sampler's batch size, so every batch is one whole group."""
        return self.p * self.k

    @property
    def groups_per_epoch(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def __call__(self, epoch: int) -> np.ndarray:
        """Dataset indices [groups_per_epoch * P * K]: the epoch's P x K groups, concatenated."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._build(epoch))
        return self._cached[1]

    def _build(self, epoch: int) -> np.ndarray:
        label_stream: list = []
        cursor = {c: 0 for c in self.classes}
        order = {
            c: sample_rng(self.seed, epoch, 1_000_000 + int(c)).permutation(idx)
            for c, idx in self.by_label.items()
        }
        out, refill = [], 0
        for _ in range(self.groups_per_epoch):
            if len(label_stream) < self.p:
                perm = epoch_permutation(len(self.classes), self.seed, epoch * 1000 + refill)
                refill += 1
                label_stream.extend(self.classes[perm])
            chosen, label_stream = label_stream[: self.p], label_stream[self.p :]
            for c in chosen:
                idx = order[c]
                out.extend(idx[(cursor[c] + j) % len(idx)] for j in range(self.k))
                cursor[c] += self.k
        return np.asarray(out, dtype=np.int64)


def pk_sampler(
    labels: np.ndarray,
    batch_size: int,
    samples_per_label: int,
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> ResumableSampler:
    """The training sampler: batches of P = batch_size // K labels x K = samples_per_label meshes (`PKOrder`),
    resumable at any batch of any epoch. With `world_size` processes, process `rank` takes group
    i * world_size + rank of the order as its batch i (each P x K group stays whole on one process)."""
    order = PKOrder(labels, batch_size, samples_per_label, seed)
    return ResumableSampler(
        len(order.labels), order.batch_size, seed=seed, order=order, rank=rank, world_size=world_size
    )


def eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Sequential batches covering 0..n-1 once (the last may be short)."""
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def make_batch(
    split: MeshSplit,
    indices: np.ndarray,
    augmentation: MeshAugmentation | None,
    seed: int,
    epoch: int,
    first_position: int,
) -> tuple[np.ndarray, np.ndarray]:
    """x [B,N,C] float32 and labels [B] int32; sample j of the batch is augmented with
    sample_rng(seed, epoch, first_position + j), so augmentation does not depend on thread timing."""
    xs = []
    for j, i in enumerate(indices):
        coords, normals = split.mesh(int(i))
        if augmentation is not None:
            coords, normals = augmentation(coords, normals, sample_rng(seed, epoch, first_position + j))
        xs.append(split.features(coords, normals))
    return np.stack(xs).astype(np.float32), split.labels[indices].astype(np.int32)


def prefetch(
    split: MeshSplit,
    batches: Sequence[Sequence[int]],
    *,
    augmentation: MeshAugmentation | None,
    seed: int,
    epoch: int,
    start: int = 0,
    depth: int = 2,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (batch_index, x, labels) for batches[start:] (the epoch's batches of dataset indices), prepared
    `depth` batches ahead in a thread. Batch b of process `rank` of `world_size` sits at position
    (b * world_size + rank) * batch size of the epoch order, which seeds its samples' augmentation: the same
    samples get the same augmentation whatever the number of processes."""

    def prepared():
        for b in range(start, len(batches)):
            idx = np.asarray(batches[b], dtype=np.int64)
            first = (b * world_size + rank) * len(batches[0])
            yield (b, *make_batch(split, idx, augmentation, seed, epoch, first))

    return prefetch_in_thread(prepared(), depth, name="dtgcnn-prefetch")
