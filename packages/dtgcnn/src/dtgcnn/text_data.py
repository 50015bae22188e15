"""Text triplet data: JSON and CSV triplet files and labelled sentences, validated, encoded once,
served as resumable batches.

Formats (checked up front; a bad file is refused naming the file, the line or index, and the field):
    JSON  {"triplets": [{"anchor": str, "positive": str, "negative": str}, ...]}
    CSV   header anchor,positive,negative   (one triplet per row)
    CSV   header text,label                 (labelled sentences; triplets are mined from the labels)

Identical texts are one node: each distinct text gets an id and its encoder vector is computed once
(`dtgcnn.encoders.encode_cached`). Which rows count as "the same class" inside a batch:
- labelled sentences: the same label;
- bare triplets: only what the triplets say, through the anchor-positive links: texts joined by a chain of
  anchor-positive pairs share a class (union-find over the batch), every other text of the batch is a
  negative. So in-batch negatives come from the other triplets, and a text repeated across triplets is one row.

Batch order is a pure function of (seed, epoch) through `common.sampler.ResumableSampler` (labelled
sentences: dtgcnn's P x K order), so a resumed run continues at the saved batch index exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.prefetch import prefetch_in_thread
from common.sampler import ResumableSampler
from common.seeding import epoch_permutation

TRIPLET_FIELDS = ("anchor", "positive", "negative")
SENTENCE_FIELDS = ("text", "label")


@dataclass
class TextBatch:
    """One batch: the distinct texts' vectors and their in-batch classes, plus the batch's triplets."""

    index: int  # batch index in the epoch
    vectors: np.ndarray  # [U, input_dim] float32, one row per distinct text of the batch
    labels: np.ndarray  # [U] int32 in-batch class ids
    triplets: np.ndarray | None  # [T, 3] int32 rows of (anchor, positive, negative), None for sentences
    text_ids: np.ndarray  # [U] ids into the dataset's texts


def _where(path: Path, line: int | None = None, index: str | None = None) -> str:
    return f"{path}" + (f", line {line}" if line is not None else "") + (f", {index}" if index else "")


def _text(value, path: Path, field: str, line: int | None = None, index: str | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else "empty" if isinstance(value, str) else type(value).__name__
        raise DataError(
            f"{_where(path, line, index)}: field '{field}' is {got}; every {field} must be a non-empty string."
        )
    return value


def read_triplet_file(path: str | Path) -> tuple[str, list[tuple[str, ...]]]:
    """("triplets", [(anchor, positive, negative), ...]) or ("sentences", [(text, label), ...])."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist (make one with python -m dtgcnn.synthetic --text).")
    if path.suffix.lower() == ".json":
        return "triplets", _read_json(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(path)
    raise DataError(
        f"{path}: unknown data format {path.suffix!r}; give a .json file of triplets "
        '({"triplets": [{"anchor", "positive", "negative"}]}) or a .csv file '
        "(anchor,positive,negative, or text,label)."
    )


def _read_json(path: Path) -> list[tuple[str, ...]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("triplets"), list):
        raise DataError(
            f'{path}: expected an object {{"triplets": [{{"anchor", "positive", "negative"}}, ...]}}.'
        )
    rows = []
    for i, item in enumerate(doc["triplets"]):
        where = f"triplets[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{path}, {where}: expected an object with anchor, positive, negative.")
        rows.append(tuple(_text(item.get(f), path, f, index=where) for f in TRIPLET_FIELDS))
    return _checked(rows, path, lambda i: f"triplets[{i}]")


def _read_csv(path: Path) -> tuple[str, list[tuple[str, ...]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = tuple(h.strip() for h in (reader.fieldnames or ()))
        if set(header) == set(TRIPLET_FIELDS):
            kind, fields = "triplets", TRIPLET_FIELDS
        elif set(header) == set(SENTENCE_FIELDS):
            kind, fields = "sentences", SENTENCE_FIELDS
        else:
            raise DataError(
                f"{path}, line 1: header {','.join(header) or '(none)'} is neither "
                f"{','.join(TRIPLET_FIELDS)} nor {','.join(SENTENCE_FIELDS)}."
            )
        rows, lines = [], []
        for record in reader:
            if None in record:
                raise DataError(
                    f"{_where(path, reader.line_num)}: more fields than the header's {len(header)}."
                )
            record = {k.strip(): v for k, v in record.items()}
            rows.append(tuple(_text(record.get(f), path, f, reader.line_num) for f in fields))
            lines.append(reader.line_num)
    if kind == "triplets":
        rows = _checked(rows, path, lambda i: f"line {lines[i]}")
    if not rows:
        raise DataError(f"{path}: no rows after the header.")
    return kind, rows


def _checked(rows: list[tuple[str, ...]], path: Path, where) -> list[tuple[str, ...]]:
    if not rows:
        raise DataError(f"{path}: no triplets.")
    for i, (a, p, n) in enumerate(rows):
        if n in (a, p):
            raise DataError(
                f"{path}, {where(i)}: field 'negative' repeats the {'anchor' if n == a else 'positive'}; "
                "a negative must differ from both."
            )
    return rows


def in_batch_classes(pairs: np.ndarray, n: int) -> np.ndarray:
    """Class ids [n] for n nodes joined by anchor-positive `pairs` [T,2] (union-find; ids 0.. by first node)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, p in pairs:
        ra, rp = root(int(a)), root(int(p))
        if ra != rp:
            parent[max(ra, rp)] = min(ra, rp)
    roots = np.array([root(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int32)


class TripletDataset:
    """A triplet or labelled-sentence file, validated and encoded: `TripletDataset("data/triplets.json")`.

    Attributes: `kind` ("triplets" | "sentences"), `texts` (distinct), `triplets` [T,3] text ids or
    `sentence_ids` [N] with `labels` [N] and `label_names`; `vectors` [len(texts), dim] (encoded on first use)."""

    def __init__(
        self,
        path: str | Path,
        encoder: str = "hashing",
        *,
        cache_dir: str | Path | None = None,
        samples_per_label: int = 4,
    ) -> None:
        self.path = Path(path)
        self.encoder_spec, self.cache_dir = encoder, cache_dir
        self.samples_per_label = samples_per_label
        self.kind, rows = read_triplet_file(self.path)
        ids: dict[str, int] = {}
        to_id = lambda t: ids.setdefault(t, len(ids))  # noqa: E731
        if self.kind == "triplets":
            self.triplets = np.array([[to_id(t) for t in row] for row in rows], dtype=np.int64)
            self.labels = self.label_names = self.sentence_ids = None
        else:
            label_of: dict[str, str] = {}
            for text, label in rows:
                if label_of.setdefault(text, label) != label:
                    raise DataError(
                        f"{self.path}: the text {text[:60]!r} has two labels, {label_of[text]!r} and {label!r}."
                    )
            self.label_names = sorted(set(label_of.values()))
            index = {name: i for i, name in enumerate(self.label_names)}
            self.sentence_ids = np.array([to_id(t) for t in label_of], dtype=np.int64)
            self.labels = np.array([index[label_of[t]] for t in label_of], dtype=np.int32)
            self.triplets = None
        self.texts = list(ids)
        self._vectors: np.ndarray | None = None
        self._encoder = None

    def __len__(self) -> int:
        return len(self.triplets) if self.kind == "triplets" else len(self.sentence_ids)

    @property
    def encoder(self):
        if self._encoder is None:
            from dtgcnn.encoders import get_encoder

            self._encoder = get_encoder(self.encoder_spec)
        return self._encoder

    @property
    def input_dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def vectors(self) -> np.ndarray:
        """[len(texts), input_dim] float32 encoder vectors (from the on-disk cache when already computed)."""
        if self._vectors is None:
            from dtgcnn.encoders import encode_cached

            vectors = encode_cached(self.encoder, self.texts, self.cache_dir or None)
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            if len(bad):
                raise DataError(
                    f"{self.path}: the encoder gave a NaN/inf vector for text {self.texts[bad[0]]!r}."
                )
            self._vectors = vectors
        return self._vectors

    def split(self, train_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train items, val items): a seeded permutation of the rows, the first train_split share trains."""
        if not 0.0 < train_split <= 1.0:
            raise DataError(f"train_split must be in (0, 1], got {train_split}.")
        order = epoch_permutation(len(self), seed, 0)
        cut = max(1, int(round(train_split * len(self))))
        return np.sort(order[:cut]), np.sort(order[cut:])

    def create_dataloaders(
        self,
        batch_size: int = 512,
        train_split: float = 0.9,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[TextLoader, TextLoader]:
        """(train_loader, val_loader) over a seeded split of the rows; the train loader shuffles per epoch and,
        in a run of `world_size` processes, gives process `rank` its slice of every global batch."""
        train, val = self.split(train_split, seed)
        if len(val) == 0:
            raise DataError(
                f"{self.path}: train_split={train_split} leaves no rows for validation ({len(self)} rows)."
            )
        return TextLoader(
            self, train, batch_size, seed, train=True, rank=rank, world_size=world_size
        ), TextLoader(self, val, batch_size, seed, train=False)


class TextLoader:
    """Batches of one split of a `TripletDataset`: `batches(epoch, start)` (resumable), or iterate it.

    With `world_size` processes (training under mlx.launch), process `rank` takes batch i * world_size + rank
    of the single-process order as its batch i (`ResumableSampler`'s sharding: a P x K group stays whole), so
    the processes' batch i together are the global batch of `batch_size` x `world_size` rows."""

    def __init__(
        self,
        dataset: TripletDataset,
        items: np.ndarray,
        batch_size: int,
        seed: int,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.dataset, self.items = dataset, np.asarray(items, dtype=np.int64)
        self.batch_size, self.seed, self.train = batch_size, seed, train
        self.prefetch_depth = 2
        if train and dataset.kind == "sentences":
            from dtgcnn.data import PKOrder

            order = PKOrder(dataset.labels[self.items], batch_size, dataset.samples_per_label, seed)
            self.sampler = ResumableSampler(
                len(self.items), order.batch_size, seed=seed, order=order, rank=rank, world_size=world_size
            )
        else:
            self.sampler = ResumableSampler(
                len(self.items),
                batch_size,
                seed=seed,
                shuffle=train,
                drop_last=train and len(self.items) > batch_size * world_size,
                rank=rank,
                world_size=world_size,
            )

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()

    def __iter__(self) -> Iterator[TextBatch]:
        return iter(self.batches(0, 0))

    def batches(self, epoch: int, start: int = 0) -> Iterator[TextBatch]:
        """The epoch's batches from index `start`, prepared ahead in a background thread."""
        self.sampler.set_epoch(epoch, start)
        chosen = list(self.sampler)

        def prepared():
            for offset, rows in enumerate(chosen):
                yield self.make_batch(start + offset, self.items[np.asarray(rows, dtype=np.int64)])

        return prefetch_in_thread(prepared(), self.prefetch_depth, name="dtgcnn-text-prefetch")

    def make_batch(self, index: int, rows: np.ndarray) -> TextBatch:
        ds = self.dataset
        if ds.kind == "sentences":
            ids = ds.sentence_ids[rows]
            return TextBatch(index, ds.vectors[ids], ds.labels[rows].astype(np.int32), None, ids)
        ids, local = np.unique(ds.triplets[rows], return_inverse=True)  # distinct texts of the batch
        local = local.reshape(-1, 3).astype(np.int32)
        classes = in_batch_classes(local[:, :2], len(ids))
        return TextBatch(index, ds.vectors[ids], classes, local, ids)

    def retrieval_set(self) -> tuple[np.ndarray, np.ndarray]:
        """(text ids, class labels) of this split for retrieval metrics: sentences with their labels; for
        triplets, the distinct texts classed by the split's anchor-positive links."""
        ds = self.dataset
        if ds.kind == "sentences":
            return ds.sentence_ids[self.items], ds.labels[self.items]
        ids, local = np.unique(ds.triplets[self.items], return_inverse=True)
        return ids, in_batch_classes(local.reshape(-1, 3)[:, :2], len(ids))


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """uint64 fingerprints of texts (first 8 bytes of sha256): which texts a model saw in training."""
    from dtgcnn.encoders import text_key

    return np.array([int.from_bytes(text_key(t)[:8], "little") for t in texts], dtype=np.uint64)
