"""Box labels, the form most tree-crown data comes in, read from DeepForest CSV, Pascal VOC XML or COCO JSON.

A box-labelled split folder holds `images/` and one annotation source (`data.box_annotations` names it;
empty = the first found of these):

    labels.csv          DeepForest: image_path,xmin,ymin,xmax,ymax,label (pixels; image_path relative to the
                        CSV's folder or to images/; a row of four zeros marks an image without trees)
    annotations.json    COCO: images[{id, file_name, width, height}], annotations[{image_id, category_id,
                        bbox [x, y, w, h]}], categories[{id, name}] (read with pycocotools)
    annotations/*.xml   Pascal VOC: <filename>, <size>, <object><name><bndbox><xmin>... per file

Labels are matched to `data.instance_classes` by name (case-insensitive); with a single instance class every
label means that class. Every record is checked with its file and line / object named.

Training from boxes (see `weak_crowns`): the box centre is the tree centre (heatmap, offsets and density
targets are exact for it), and a weak crown mask, the ellipse inscribed in the box, stands in for the crown
mask: it gives the offsets' pixels, the crown boundary and the tree class for the semantic loss. The corners
of each box outside its ellipse are left out of the semantic loss (`IGNORE`), since they may be crown or
ground; pixels outside every box are background.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError

from .imagery import image_size

IGNORE = 255  # semantic label of pixels left out of the semantic loss and the pixel metrics
DEEPFOREST_COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")
EDGE_TOLERANCE = 1.0  # px a box may run past the image edge (annotation tools round outward); clipped


@dataclass
class BoxImage:
    image_path: Path
    height: int
    width: int
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # xmin, ymin, xmax, ymax
    labels: list[int] = field(default_factory=list)  # instance class index 0..K-1 per box


class _LabelMap:
    """Label names -> instance class index, as the module docstring says."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.index = {c.lower(): i for i, c in enumerate(classes)}

    def __call__(self, label, where: str) -> int:
        if len(self.classes) == 1:
            return 0
        found = self.index.get(str(label).strip().lower())
        if found is None:
            raise DataError(
                f"{where}: label {label!r} is not one of data.instance_classes ({', '.join(self.classes)}); "
                "name the classes of your data with data.instance_classes (and data.instance_semantic_ids, "
                "model.num_instance_classes), or use one class for all trees."
            )
        return found


def find_annotations(split_dir: Path, name: str = "") -> Path:
    """The annotation file or folder of a box-labelled split."""
    if name:
        path = Path(name) if Path(name).is_absolute() else split_dir / name
        if not path.exists():
            raise DataError(f"data.box_annotations: {path} does not exist.")
        return path
    for candidate in ("labels.csv", "annotations.json", "annotations"):
        if (split_dir / candidate).exists():
            return split_dir / candidate
    raise DataError(
        f"box-labelled split {split_dir} holds no labels.csv (DeepForest), annotations.json (COCO) or "
        "annotations/ (Pascal VOC XML); set data.box_annotations to your annotation file."
    )


def read_box_labels(path: Path, classes: list[str]) -> list[BoxImage]:
    """Any of the three formats, by the path's kind: .csv DeepForest, .json COCO, a folder or .xml VOC."""
    labels = _LabelMap(classes)
    if path.is_dir() or path.suffix.lower() == ".xml":
        files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"{path}: holds no Pascal VOC .xml file.")
        return [read_voc(f, labels) for f in files]
    if path.suffix.lower() == ".csv":
        return read_deepforest(path, labels)
    if path.suffix.lower() == ".json":
        return read_coco_boxes(path, labels)
    raise DataError(f"{path}: unknown box-label format (expected .csv, .json, or a folder of VOC .xml).")


def _image(folder: Path, name: str, where: str) -> tuple[Path, int, int]:
    """Resolve an image named by a label file (beside it, or in images/ of its split) and read its size."""
    for candidate in (folder / name, folder / "images" / name, folder.parent / "images" / name):
        if candidate.is_file():
            h, w = image_size(candidate)
            return candidate, h, w
    raise DataError(f"{where}: image {name!r} not found beside the label file or in images/.")


def _checked_box(rec: BoxImage, xmin, ymin, xmax, ymax, where: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in (xmin, ymin, xmax, ymax))
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: box coordinates {xmin!r}, {ymin!r}, {xmax!r}, {ymax!r} are not numbers."
        ) from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DataError(f"{where}: box coordinates must be finite, got {x0}, {y0}, {x1}, {y1}.")
    if x1 <= x0:
        raise DataError(f"{where}: xmax {x1:g} <= xmin {x0:g}.")
    if y1 <= y0:
        raise DataError(f"{where}: ymax {y1:g} <= ymin {y0:g}.")
    t = EDGE_TOLERANCE
    if x0 < -t or y0 < -t or x1 > rec.width + t or y1 > rec.height + t:
        raise DataError(
            f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the image "
            f"{rec.image_path.name} ({rec.width}x{rec.height} px); boxes are in pixels from the top-left corner."
        )
    return max(x0, 0.0), max(y0, 0.0), min(x1, rec.width), min(y1, rec.height)


def read_deepforest(path: Path, labels: _LabelMap) -> list[BoxImage]:
    images: dict[str, BoxImage] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as a text CSV file ({exc}).") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in DEEPFOREST_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path}: line 1: the header lacks {', '.join(missing)}; a DeepForest CSV has the columns "
            f"{','.join(DEEPFOREST_COLUMNS)}."
        )
    for row in reader:
        where = f"{path.name}, line {reader.line_num}"
        name = (row["image_path"] or "").strip()
        if not name:
            raise DataError(f"{where}: image_path is empty.")
        if name not in images:
            images[name] = BoxImage(*_image(path.parent, name, where))
        rec = images[name]
        coords = [row[c] for c in ("xmin", "ymin", "xmax", "ymax")]
        if all(str(v).strip() in ("0", "0.0") for v in coords):
            continue  # DeepForest's mark of an image without trees
        rec.boxes.append(_checked_box(rec, *coords, where))
        rec.labels.append(labels(row["label"], where))
    if not images:
        raise DataError(f"{path}: holds no rows.")
    return list(images.values())


def read_voc(path: Path, labels: _LabelMap) -> BoxImage:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}: is not valid XML ({exc}).") from None
    name = root.findtext("filename")
    if not name:
        raise DataError(f"{path}: <filename> is missing.")
    rec = BoxImage(*_image(path.parent, name.strip(), path.name))
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        w, h = size.findtext("width"), size.findtext("height")
        if (int(float(w)), int(float(h))) != (rec.width, rec.height):
            raise DataError(
                f"{path.name}: <size> says {w}x{h} but {rec.image_path.name} is {rec.width}x{rec.height} px."
            )
    for i, obj in enumerate(root.iter("object"), start=1):
        where = f"{path.name}, object #{i}"
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{where}: <bndbox> is missing.")
        rec.boxes.append(
            _checked_box(rec, *(box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")), where)
        )
        rec.labels.append(labels(obj.findtext("name") or "", where))
    return rec


def read_coco_boxes(path: Path, labels: _LabelMap) -> list[BoxImage]:
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    except (AssertionError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: is not a COCO annotation file ({exc!r}).") from None
    categories = {c["id"]: c.get("name", str(c["id"])) for c in coco.dataset.get("categories", [])}
    records: dict[int, BoxImage] = {}
    for img in coco.dataset.get("images", []):
        where = f"{path.name}, image id {img.get('id')!r}"
        if "file_name" not in img or "id" not in img:
            raise DataError(f"{where}: an image needs id and file_name.")
        rec = BoxImage(*_image(path.parent, img["file_name"], where))
        if "width" in img and "height" in img and (img["width"], img["height"]) != (rec.width, rec.height):
            raise DataError(
                f"{where}: says {img['width']}x{img['height']} but {rec.image_path.name} is "
                f"{rec.width}x{rec.height} px."
            )
        records[img["id"]] = rec
    for ann in coco.dataset.get("annotations", []):
        where = f"{path.name}, annotation id {ann.get('id')!r}"
        rec = records.get(ann.get("image_id"))
        if rec is None:
            raise DataError(f"{where}: refers to unknown image_id {ann.get('image_id')!r}.")
        if ann.get("category_id") not in categories:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in categories.")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}.")
        x, y, w, h = bbox
        try:
            corners = (x, y, float(x) + float(w), float(y) + float(h))
        except (TypeError, ValueError):
            raise DataError(f"{where}: bbox {bbox!r} holds a value that is not a number.") from None
        rec.boxes.append(_checked_box(rec, *corners, where))
        rec.labels.append(labels(categories[ann["category_id"]], where))
    if not records:
        raise DataError(f"{path}: lists no images.")
    return list(records.values())


def weak_crowns(
    boxes: list[tuple[float, float, float, float]], labels: list[int], h: int, w: int, semantic_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes -> semantic (H, W) uint8 (IGNORE in the box corners), instance ids (H, W) int32 from the
    inscribed ellipses (a later box owns overlaps, as later masks do), centres (N, 2) [x, y] = box centres."""
    semantic = np.zeros((h, w), np.uint8)
    ids = np.zeros((h, w), np.int32)
    windows = [(slice(int(y0), math.ceil(y1)), slice(int(x0), math.ceil(x1))) for x0, y0, x1, y1 in boxes]
    for win in windows:
        semantic[win] = IGNORE
    centres = []
    for k, ((x0, y0, x1, y1), label, win) in enumerate(zip(boxes, labels, windows, strict=True), start=1):
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
        yy, xx = np.mgrid[win].astype(np.float32) + 0.5  # pixel centres inside the box
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        if not inside.any():  # a box thinner than a pixel: its nearest pixel
            inside[
                min(int(cy) - win[0].start, inside.shape[0] - 1),
                min(int(cx) - win[1].start, inside.shape[1] - 1),
            ] = True
        ids[win][inside] = k
        semantic[win][inside] = semantic_ids[label]
        centres.append((cx - 0.5, cy - 0.5))  # pixel-index coordinates, as mask centroids are
    return semantic, ids, np.asarray(centres, np.float32).reshape(-1, 2)
