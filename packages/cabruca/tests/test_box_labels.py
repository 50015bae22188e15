"""Box labels from DeepForest CSV, Pascal VOC XML and COCO JSON written by code: the three readers agree with
the boxes written, bad records are named by file and line/object, and the box-supervised targets put each
tree's centre at its box centre."""

from __future__ import annotations

import numpy as np
import pytest

from cabruca.box_labels import IGNORE, read_box_labels, weak_crowns
from cabruca.config import INSTANCE_CLASSES, DataConfig
from cabruca.data import CabrucaTiles, load_split
from common.errors import DataError

from .real_formats import box_split_as_geotiffs, write_coco_boxes, write_deepforest_csv, write_voc


@pytest.fixture(scope="module")
def box_split(tiny_data, tmp_path_factory):
    """The tiny synthetic validation split as GeoTIFFs with its boxes in all three formats."""
    split = tmp_path_factory.mktemp("boxes")
    boxes = box_split_as_geotiffs(tiny_data / "val", split)
    sizes = {name: (128, 128) for name in boxes}
    write_deepforest_csv(split / "labels.csv", boxes)
    write_voc(split / "annotations", boxes, sizes)
    write_coco_boxes(split / "annotations.json", boxes, sizes, INSTANCE_CLASSES)
    return split, boxes


@pytest.mark.parametrize("source", ["labels.csv", "annotations", "annotations.json"])
def test_each_format_reads_back_the_boxes_written(box_split, source):
    split, boxes = box_split
    (image,) = read_box_labels(split / source, INSTANCE_CLASSES)
    (name, trees), *_ = boxes.items()
    assert image.image_path == split / "images" / name and (image.height, image.width) == (128, 128)
    np.testing.assert_allclose(image.boxes, [t[:4] for t in trees], atol=1e-4)
    assert image.labels == [INSTANCE_CLASSES.index(t[4]) for t in trees]


def test_box_split_trains_from_box_centres(box_split):
    split, boxes = box_split
    cfg = DataConfig(labels="boxes", box_annotations="labels.csv", tile_size=128, tile_overlap=0)
    records = load_split(split, cfg)
    tile = CabrucaTiles(records, cfg, seed=0, train=False)[0]
    (trees,) = boxes.values()
    # one unit Gaussian peak per tree, at its box centre, in its class's heatmap channel
    for x0, y0, x1, y1, label in trees:
        cx, cy = int(np.rint((x0 + x1) / 2 - 0.5)), int(np.rint((y0 + y1) / 2 - 0.5))
        assert tile["heatmap"][INSTANCE_CLASSES.index(label), cy, cx] == 1.0
    assert float(tile["count"]) == len(trees)
    assert float(tile["density"].sum()) == pytest.approx(100.0 * len(trees), rel=1e-4)


def test_weak_crowns_are_inscribed_ellipses_with_ignored_corners():
    semantic, ids, centres = weak_crowns([(10, 20, 30, 30)], [1], 40, 50, [1, 2, 3])
    assert centres.tolist() == [[19.5, 24.5]]  # pixel-index coordinates of the box centre
    assert ids[25, 20] == 1 and semantic[25, 20] == 2  # centre: the tree, painted with its class
    assert ids[20, 10] == 0 and semantic[20, 10] == IGNORE  # a box corner: unknown
    assert semantic[5, 5] == 0 and ids[20:30, 10:30].sum() == (ids > 0).sum()  # nothing outside the box


def _write_csv(path, rows):
    path.write_text(
        "image_path,xmin,ymin,xmax,ymax,label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    return path


def test_bad_records_are_named_by_file_and_line(box_split, tmp_path):
    split, boxes = box_split
    name = next(iter(boxes))
    (tmp_path / "images").symlink_to(split / "images")
    good = [name, 1, 2, 20, 30, "cacao_tree"]
    cases = {
        "line 3: xmax 40 <= xmin 52": [good, [name, 52, 2, 40, 30, "cacao_tree"]],
        "line 2: label 'palm'": [[name, 1, 2, 20, 30, "palm"]],
        "line 2: box (1, 2, 200, 30) lies outside": [[name, 1, 2, 200, 30, "cacao_tree"]],
        "line 2: image 'missing.tif' not found": [["missing.tif", 1, 2, 20, 30, "cacao_tree"]],
        "line 2: box coordinates 'a'": [[name, "a", 2, 20, 30, "cacao_tree"]],
    }
    for message, rows in cases.items():
        with pytest.raises(DataError, match="labels.csv, " + message.replace("(", r"\(").replace(")", r"\)")):
            read_box_labels(_write_csv(tmp_path / "labels.csv", rows), INSTANCE_CLASSES)
    (tmp_path / "labels.csv").write_text("image,x0\n")
    with pytest.raises(DataError, match="line 1: the header lacks image_path"):
        read_box_labels(tmp_path / "labels.csv", INSTANCE_CLASSES)


def test_bad_voc_and_coco_records_are_named(box_split, tmp_path):
    split, boxes = box_split
    voc = (split / "annotations" / f"{next(iter(boxes))[:-4]}.xml").read_text()
    bad_voc = tmp_path / "scene.xml"
    bad_voc.write_text(voc.replace("<ymax>", "<ymax>-", 2))  # the first two objects get a negative ymax
    (tmp_path / "images").symlink_to(split / "images")
    with pytest.raises(DataError, match=r"scene.xml, object #1: ymax -\d+ <= ymin"):
        read_box_labels(bad_voc, INSTANCE_CLASSES)
    coco = (split / "annotations.json").read_text().replace('"category_id": 1', '"category_id": 7', 1)
    (tmp_path / "annotations.json").write_text(coco)
    with pytest.raises(
        DataError, match="annotations.json, annotation id \\d+: category_id 7 is not in categories"
    ):
        read_box_labels(tmp_path / "annotations.json", INSTANCE_CLASSES)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json: is not valid JSON"):
        read_box_labels(tmp_path / "broken.json", INSTANCE_CLASSES)


def test_single_class_takes_every_label(box_split):
    split, boxes = box_split
    (image,) = read_box_labels(split / "labels.csv", ["Tree"])
    assert set(image.labels) == {0} and len(image.boxes) == len(next(iter(boxes.values())))
