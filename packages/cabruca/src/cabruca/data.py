"""Dataset format, up-front validation, tiling and the tile Dataset.

Layout of one split (e.g. `<data_dir>/train/`):

    images/<name>.png        RGB aerial image (any size; cut into tile_size tiles with overlap)
    masks/<name>.png         semantic class ids (uint8, same size as the image, ids < num_semantic_classes)
    annotations.json         COCO instances: images[{id, file_name, width, height}],
                             annotations[{image_id, category_id 1..K, segmentation (RLE or polygons),
                             keypoints [x, y, v] = tree centre (optional: mask centroid otherwise)}]

With `data.labels: boxes` a split holds images/ and box labels instead (DeepForest CSV, Pascal VOC XML or
COCO boxes; see `cabruca.box_labels`), trained through box centres and weak elliptic crowns.

Instance masks are painted in annotation order (a later annotation owns overlapping pixels), giving one
instance id map per image: the visible (modal) crowns that the model's centre/offset heads can represent.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from common.errors import DataError
from common.sampler import ResumableSampler
from common.seeding import sample_rng

from .augment import augment
from .box_labels import find_annotations, read_box_labels, weak_crowns
from .config import DataConfig
from .imagery import image_size, read_rgb
from .targets import make_targets


@dataclass
class ImageRecord:
    name: str
    image_path: Path
    mask_path: Path | None  # None for box-labelled images
    height: int
    width: int
    categories: list[int] = field(default_factory=list)  # instance class index 0..K-1 per annotation
    segmentations: list = field(default_factory=list)  # COCO segmentation per annotation
    keypoints: list = field(default_factory=list)  # (x, y) or None per annotation
    boxes: list | None = None  # box-labelled image: (xmin, ymin, xmax, ymax) per annotation


def _fail(split_dir: Path, what: str) -> DataError:
    return DataError(f"invalid dataset {split_dir}: {what}")


def load_split(split_dir: str | Path, cfg: DataConfig, *, check_masks: bool = True) -> list[ImageRecord]:
    """Read and validate one split before any training starts. DataError names the file and sample."""
    split_dir = Path(split_dir)
    if cfg.labels == "boxes":
        return load_box_split(split_dir, cfg)
    ann_path = split_dir / "annotations.json"
    if not split_dir.is_dir():
        raise DataError(
            f"dataset split folder {split_dir} does not exist (expected images/, masks/ and "
            "annotations.json inside; `python -m cabruca.synthetic OUT_DIR` writes an example)."
        )
    if not ann_path.is_file():
        raise _fail(split_dir, "annotations.json is missing")
    try:
        coco = json.loads(ann_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{ann_path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    for key in ("images", "annotations"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise DataError(f"{ann_path} is not a COCO instances file: the list '{key}' is missing.")
    records: dict[int, ImageRecord] = {}
    n_sem, n_inst = len(cfg.semantic_classes), len(cfg.instance_classes)
    for img in coco["images"]:
        try:
            img_id, name, w, h = img["id"], img["file_name"], int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{ann_path}: image entry {img!r} needs id, file_name, width and height."
            ) from None
        image_path, mask_path = split_dir / "images" / name, split_dir / "masks" / (Path(name).stem + ".png")
        if not image_path.is_file():
            raise _fail(split_dir, f"image {image_path} listed in annotations.json is missing")
        if not mask_path.is_file():
            raise _fail(split_dir, f"semantic mask {mask_path} for image {name} is missing")
        ih, iw = image_size(image_path)
        if (iw, ih) != (w, h):
            raise _fail(split_dir, f"image {name} is {iw}x{ih} but annotations.json says {w}x{h}")
        if check_masks:
            mask = np.asarray(Image.open(mask_path))
            if mask.shape != (h, w):
                raise _fail(
                    split_dir, f"mask {mask_path.name} has shape {mask.shape}, image {name} is {h}x{w}"
                )
            if mask.max(initial=0) >= n_sem:
                raise _fail(
                    split_dir,
                    f"mask {mask_path.name} holds class id {int(mask.max())} but only "
                    f"{n_sem} semantic classes exist (ids 0..{n_sem - 1})",
                )
        records[img_id] = ImageRecord(name, image_path, mask_path, h, w)
    for i, ann in enumerate(coco["annotations"]):
        rec = records.get(ann.get("image_id"))
        if rec is None:
            raise DataError(
                f"{ann_path}: annotation #{i} refers to unknown image_id {ann.get('image_id')!r}."
            )
        cat = ann.get("category_id")
        if not isinstance(cat, int) or not 1 <= cat <= n_inst:
            raise DataError(
                f"{ann_path}: annotation #{i} on {rec.name} has category_id {cat!r}; "
                f"expected 1..{n_inst} ({', '.join(cfg.instance_classes)})."
            )
        seg = ann.get("segmentation")
        try:
            _decode_segmentation(seg, rec.height, rec.width)
        except Exception as exc:  # pycocotools raises assorted types on malformed input
            raise DataError(
                f"{ann_path}: annotation #{i} on {rec.name} has a broken segmentation ({exc})."
            ) from None
        kp = ann.get("keypoints")
        rec.categories.append(cat - 1)
        rec.segmentations.append(seg)
        rec.keypoints.append((float(kp[0]), float(kp[1])) if kp and len(kp) >= 3 and kp[2] > 0 else None)
    if not records:
        raise _fail(split_dir, "annotations.json lists no images")
    return list(records.values())


def load_box_split(split_dir: Path, cfg: DataConfig) -> list[ImageRecord]:
    """A box-labelled split (DeepForest CSV, VOC XML or COCO boxes), validated record by record."""
    if not split_dir.is_dir():
        raise DataError(f"dataset split folder {split_dir} does not exist (expected images/ and box labels).")
    images = read_box_labels(find_annotations(split_dir, cfg.box_annotations), cfg.instance_classes)
    return [
        ImageRecord(
            b.image_path.stem,
            b.image_path,
            None,
            b.height,
            b.width,
            b.labels,
            [],
            [None] * len(b.labels),
            b.boxes,
        )
        for b in images
    ]


def _decode_segmentation(seg, h: int, w: int) -> np.ndarray:
    """COCO polygons or (compressed/uncompressed) RLE -> bool (H, W)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg, dict):
        rle = {
            "size": seg["size"],
            "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"],
        }
    else:
        raise ValueError("segmentation must be a polygon list or an RLE dict")
    with warnings.catch_warnings():  # pycocotools' numpy-2 `copy=` DeprecationWarning: noise, not our input
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    if m.shape[:2] != (h, w):
        raise ValueError(f"mask size {m.shape[:2]} differs from the image size {(h, w)}")
    return m.astype(bool)


def _readable(read, path):
    """`read(path)`, with an unreadable file (truncated, corrupt, not an image) reported as a DataError naming it."""
    try:
        return read(path)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's and rasterio's ways of saying "corrupt"
        raise DataError(
            f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); replace or remove it."
        ) from None


def load_image(rec: ImageRecord, instance_semantic_ids: Sequence[int] = (1, 2, 3)):
    """`instance_semantic_ids`: the semantic class each instance class paints (box-labelled images).
    -> rgb float32 (H, W, 3) in [0, 1], semantic uint8 (H, W), instance ids int32 (H, W),
    labels int64 (N,), centres float32 (N, 2) [x, y] (keypoint, or mask centroid when absent)."""
    rgb = _readable(read_rgb, rec.image_path)
    if rec.boxes is not None:
        semantic, ids, centres = weak_crowns(
            rec.boxes, rec.categories, rec.height, rec.width, list(instance_semantic_ids)
        )
        return rgb, semantic, ids, np.asarray(rec.categories, np.int64), centres
    semantic = _readable(lambda path: np.asarray(Image.open(path), np.uint8), rec.mask_path)
    ids = np.zeros((rec.height, rec.width), np.int32)
    for k, seg in enumerate(rec.segmentations, start=1):
        ids[_decode_segmentation(seg, rec.height, rec.width)] = k
    centres = []
    for k, kp in enumerate(rec.keypoints, start=1):
        if kp is None:
            ys, xs = np.nonzero(ids == k)
            kp = (xs.mean(), ys.mean()) if len(xs) else (-1.0, -1.0)
        centres.append(kp)
    return (
        rgb,
        semantic,
        ids,
        np.asarray(rec.categories, np.int64),
        np.asarray(centres, np.float32).reshape(-1, 2),
    )


def tile_windows(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners (y0, x0) covering the image; the last row/column is flush with the edge."""

    def starts(n):
        if n <= tile:
            return [0]
        stride = tile - overlap
        s = list(range(0, n - tile, stride))
        return s + [n - tile]

    return [(y, x) for y in starts(h) for x in starts(w)]


def crop_tile(rgb, semantic, ids, labels, centres, y0: int, x0: int, tile: int):
    """Cut one tile (zero-padded past the image edge). Instances are re-numbered 1..n in the tile; a tree
    whose centre falls outside the tile gets the centroid of its visible part as centre."""
    img = np.zeros((tile, tile, 3), np.float32)
    sem = np.zeros((tile, tile), np.uint8)
    inst = np.zeros((tile, tile), np.int32)
    part = rgb[y0 : y0 + tile, x0 : x0 + tile]
    h, w = part.shape[:2]
    img[:h, :w], sem[:h, :w] = part, semantic[y0 : y0 + tile, x0 : x0 + tile]
    old = ids[y0 : y0 + tile, x0 : x0 + tile]
    present = np.unique(old)
    present = present[present > 0]
    new_labels, new_centres = [], []
    for new_id, k in enumerate(present, start=1):
        inside = old == k
        inst[:h, :w][inside] = new_id
        cx, cy = centres[k - 1] - (x0, y0)
        if not (0 <= cx < w and 0 <= cy < h):
            ys, xs = np.nonzero(inside)
            cx, cy = xs.mean(), ys.mean()
        new_labels.append(labels[k - 1])
        new_centres.append((cx, cy))
    return (
        img,
        sem,
        inst,
        np.asarray(new_labels, np.int64),
        np.asarray(new_centres, np.float32).reshape(-1, 2),
    )


class CabrucaTiles(torch.utils.data.Dataset):
    """Tiles of every image in a split. Items are requested as (index, epoch) so augmentation is a pure
    function of (seed, epoch, index)."""

    def __init__(self, records: list[ImageRecord], cfg: DataConfig, *, seed: int, train: bool):
        self.records, self.cfg, self.seed, self.train = records, cfg, seed, train
        self.windows = [
            (r, y, x)
            for r, rec in enumerate(records)
            for y, x in tile_windows(rec.height, rec.width, cfg.tile_size, cfg.tile_overlap)
        ]
        self._cache: dict[int, tuple] = {}  # decoded images (per worker process)

    def __len__(self) -> int:
        return len(self.windows)

    def _image(self, r: int):
        if r not in self._cache:
            self._cache[r] = load_image(self.records[r], self.cfg.instance_semantic_ids)
        return self._cache[r]

    def tile(self, index: int, epoch: int = 0):
        """Numpy tile after augmentation: image (T,T,3), semantic (T,T), instances (T,T), labels, centres."""
        r, y0, x0 = self.windows[index]
        img, sem, inst, labels, centres = crop_tile(*self._image(r), y0, x0, self.cfg.tile_size)
        if self.train and self.cfg.augment.enabled:
            img, sem, inst, centres = augment(
                img, sem, inst, centres, sample_rng(self.seed, epoch, index), self.cfg.augment
            )
        return img, sem, inst, labels, centres

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        img, sem, inst, labels, centres = self.tile(index, epoch)
        c = self.cfg
        t = make_targets(
            inst,
            labels,
            centres,
            len(c.instance_classes),
            centre_sigma=c.centre_sigma,
            density_sigma=c.density_sigma,
            density_scale=c.density_scale,
        )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),  # (3, T, T) in [0, 1]
            "semantic": torch.from_numpy(sem.astype(np.int64)),  # (T, T)
            "instances": torch.from_numpy(inst.astype(np.int64)),  # (T, T) 0 = no tree
            "labels": torch.from_numpy(labels),  # (N,) class index per instance id 1..N
            **{k: torch.as_tensor(v) for k, v in t.items()},
        }


def collate(samples: list[dict]) -> dict:
    """Stack dense tensors; keep the variable-length `labels` as a list."""
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "labels"}
    out["labels"] = [s["labels"] for s in samples]
    return out


class TileBatches:
    """A `ResumableSampler`'s batches as (tile index, epoch) pairs, the items `CabrucaTiles` takes, so each
    tile's augmentation is `sample_rng(seed, epoch, index)` in any worker process. Use it as a DataLoader's
    `batch_sampler`; `sampler.set_epoch(epoch, start_batch)` chooses the epoch and where it starts."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(i, epoch) for i in batch]


def make_loader(
    dataset: CabrucaTiles, cfg: DataConfig, sampler: ResumableSampler
) -> torch.utils.data.DataLoader:
    """Batches of `dataset` in the order of `sampler` (its epoch and start batch), collated for the model.

    The loader has its own `generator`: iterating a DataLoader draws a seed for its workers, which would
    otherwise come from torch's global RNG and leave a resumed run's RNG state one draw off an uninterrupted
    run's. Augmentation never uses that seed (it is `sample_rng(seed, epoch, index)`)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=TileBatches(sampler),
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory,
        persistent_workers=False,
        generator=torch.Generator(),
    )
