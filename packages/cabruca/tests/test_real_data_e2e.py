"""From real-format files to answers: GeoTIFF orthomosaics (EPSG:31984, written by rasterio) with box labels
in COCO JSON (train), DeepForest CSV (val) and Pascal VOC XML (test) -> a short box-supervised training ->
`python -m cabruca.predict` and `python -m cabruca.evaluate`. The model is barely trained, so the checks are
on plumbing and consistency (counts = features, coordinates, georeference), not on finding trees; the
stitching itself is checked exactly in test_tiled_inference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cabruca import predict
from cabruca.config import INSTANCE_CLASSES
from cabruca.evaluate import evaluate_checkpoint
from cabruca.train import train
from common.checkpoint import load_checkpoint
from common.cli import run_cli

from .conftest import make_cfg
from .real_formats import (
    CRS,
    box_split_as_geotiffs,
    write_coco_boxes,
    write_deepforest_csv,
    write_voc,
)

geopandas = pytest.importorskip("geopandas")  # the oracle for the GeoJSON files


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    data = root / "data"
    sizes = lambda boxes: {name: (128, 128) for name in boxes}  # noqa: E731 - the synthetic scenes' size
    train_boxes = box_split_as_geotiffs(tiny_data / "train", data / "train")
    write_coco_boxes(data / "train" / "annotations.json", train_boxes, sizes(train_boxes), INSTANCE_CLASSES)
    val_boxes = box_split_as_geotiffs(tiny_data / "val", data / "val")
    write_deepforest_csv(data / "val" / "labels.csv", val_boxes)
    write_voc(data / "test" / "annotations", val_boxes, sizes(val_boxes))
    (data / "test" / "images").symlink_to(data / "val" / "images")
    cfg = make_cfg(
        data,
        root / "outputs",
        **{
            "data.labels": "boxes",
            "training.num_epochs": 1,
            "training.max_steps_per_epoch": 2,
            # two steps: tilt the semantic head towards canopy so that crowns form (trees need canopy pixels)
            "loss.semantic_class_weights": [0.01, 5.0, 5.0, 5.0, 1.0, 1.0],
        },
    )
    result = train(cfg)
    return root, data, result.run_dir, val_boxes


def test_checkpoints_best_weights_only_and_full_last(trained):
    _, _, run, _ = trained
    best, last = run / "checkpoints" / "checkpoint_best.pth", run / "checkpoints" / "checkpoint_latest.pth"
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert manifest["best"] == best.name and manifest["last"] == last.name
    assert "optimizer" not in load_checkpoint(best) and "optimizer" in load_checkpoint(last)
    assert best.stat().st_size < 0.6 * last.stat().st_size  # AdamW keeps two moments per weight


def test_predict_writes_counts_crowns_and_masks_in_the_images_crs(trained, capsys):
    root, data, run, val_boxes = trained
    out = root / "predicted"
    args = ["--checkpoint", str(run), "--input", str(data / "val" / "images"), "--output-dir", str(out)]
    run_cli(predict.main, [*args, "--score-threshold", "0.0", "--tile-size", "64", "--device", "cpu"])
    rows = list(csv.DictReader((out / "counts.csv").open()))
    assert [r["image"] for r in rows] == list(val_boxes)
    for row in rows:
        stem = Path(row["image"]).stem
        crowns = geopandas.read_file(out / "crowns" / f"{stem}.geojson")
        assert int(row["trees"]) == len(crowns) > 0  # threshold 0: every centre peak is a tree
        assert sum(int(row[f"trees_{c}"]) for c in INSTANCE_CLASSES) == len(crowns)
        assert crowns.crs == CRS and row["crs"] == "urn:ogc:def:crs:EPSG::31984"
        with rasterio.open(data / "val" / "images" / row["image"]) as src:
            left, bottom, right, top = src.bounds
            transform = src.transform
        minx, miny, maxx, maxy = crowns.total_bounds
        assert left <= minx and maxx <= right and bottom <= miny and maxy <= top
        for kind in ("semantic", "instances"):
            with rasterio.open(out / "masks" / f"{stem}_{kind}.tif") as mask:
                assert mask.crs == CRS and mask.transform == transform and mask.shape == (128, 128)
                ids = mask.read(1)
        assert sorted(np.unique(ids[ids > 0]).tolist()) == sorted(crowns["tree_id"].tolist())
    # a second run into the same folder is refused, naming the folder; --overwrite allows it
    with pytest.raises(SystemExit) as stop:
        run_cli(predict.main, args)
    assert stop.value.code == 2 and "is not empty" in capsys.readouterr().err
    run_cli(predict.main, [*args, "--overwrite", "--score-threshold", "0.999", "--device", "cpu"])
    assert (
        "no tree found at --score-threshold 0.999: the strongest tree-centre peak is"
        in capsys.readouterr().out
    )


def test_evaluate_reports_counts_box_ap_and_a_threshold_sweep(trained):
    root, data, run, val_boxes = trained
    report = json.loads(
        evaluate_checkpoint(
            run / "checkpoints" / "checkpoint_best.pth",
            data,
            split="test",  # the VOC split
            out_dir=root / "evaluation",
            device="cpu",
            max_overlays=0,
            score_threshold=0.999,
            tile_size=64,
            overlap=16,
            sweep=(0.0, 0.5),
        ).read_text()
    )
    images = report["images"]
    (boxes,) = val_boxes.values()
    assert images["trees_gt"] == len(boxes) and images["tile_size"] == 64 and images["overlap"] == 16
    (per_image,) = images["per_image"]
    assert per_image["count_error"] == per_image["trees_pred"] - len(boxes)
    assert images["count_MAE"] == abs(per_image["count_error"])
    assert [row["threshold"] for row in images["sweep"]] == [0.0, 0.5, 0.999]
    assert images["sweep"][0]["trees_pred"] > 0 and 0 <= images["box_mAP_50"] <= 1
    assert "mask_mAP" not in images  # box labels: no true crown masks
    if images["trees_pred"] == 0:
        assert "no tree detected at --score-threshold 0.999" in images["note"]


def test_bad_input_is_one_paragraph_naming_the_file(trained, tmp_path, capsys):
    root, data, run, _ = trained
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as stop:
        run_cli(
            predict.main,
            [
                "--checkpoint",
                str(run),
                "--input",
                str(tmp_path / "notes.txt"),
                "--output-dir",
                str(tmp_path / "o"),
            ],
        )
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "notes.txt: not an image file" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the inputs were checked
