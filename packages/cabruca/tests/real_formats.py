"""Real-format files written by the reference libraries from the package's synthetic scenes: GeoTIFF
orthomosaics by rasterio (with a CRS and transform), box labels as DeepForest CSV (csv), Pascal VOC XML
(xml.etree) and COCO JSON (json, read back by pycocotools)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine

CRS = "EPSG:31984"  # SIRGAS 2000 / UTM zone 24S: southern Bahia, where cabruca is grown
ORIGIN = (480000.0, 8370000.0)  # top-left corner, metres
PIXEL = 0.1  # metres per pixel


def write_geotiff(png: Path, out: Path, *, origin=ORIGIN) -> Path:
    """RGB PNG -> 3-band uint8 GeoTIFF in EPSG:31984 with a north-up transform."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    profile = {
        "driver": "GTiff",
        "height": rgb.shape[0],
        "width": rgb.shape[1],
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": Affine(PIXEL, 0.0, origin[0], 0.0, -PIXEL, origin[1]),  # north up
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return out


def synthetic_boxes(split: Path) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """{image file name: [(xmin, ymin, xmax, ymax, class name)]} from a synthetic split's COCO masks."""
    coco = json.loads((split / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    boxes: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[files[ann["image_id"]]].append((x, y, x + w, y + h, names[ann["category_id"]]))
    return boxes


def box_split_as_geotiffs(src_split: Path, out_split: Path) -> dict[str, list]:
    """A box-labelled split: the synthetic images as GeoTIFFs in out_split/images; returns their boxes
    keyed by the GeoTIFF's file name (labels are written by the writers below)."""
    boxes = {}
    for name, trees in synthetic_boxes(src_split).items():
        tif = Path(name).with_suffix(".tif").name
        write_geotiff(src_split / "images" / name, out_split / "images" / tif)
        boxes[tif] = trees
    return boxes


def write_deepforest_csv(path: Path, boxes: dict[str, list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        for image, trees in boxes.items():
            for x0, y0, x1, y1, label in trees:
                writer.writerow([image, x0, y0, x1, y1, label])
    return path


def write_voc(folder: Path, boxes: dict[str, list], sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image, trees in boxes.items():
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = image
        size = ET.SubElement(root, "size")
        h, w = sizes[image]
        for key, value in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for x0, y0, x1, y1, label in trees:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = label
            bnd = ET.SubElement(obj, "bndbox")
            for key, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bnd, key).text = f"{value:g}"
        ET.ElementTree(root).write(folder / f"{Path(image).stem}.xml")
    return folder


def write_coco_boxes(path: Path, boxes: dict[str, list], sizes: dict[str, tuple[int, int]], classes) -> Path:
    images, anns = [], []
    for img_id, (image, trees) in enumerate(boxes.items(), start=1):
        h, w = sizes[image]
        images.append({"id": img_id, "file_name": image, "width": w, "height": h})
        for x0, y0, x1, y1, label in trees:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": classes.index(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
