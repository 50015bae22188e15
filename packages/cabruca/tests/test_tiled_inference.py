"""Tiling and stitching checked against known trees: a stub model reads the trees from the image itself
(red = crown, green = centre peak), so every count and crown of the stitched prediction is known exactly,
whatever tile the tree falls in or across. Then the files written from it: GeoJSON (read back by geopandas),
mask GeoTIFF and counts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from cabruca.config import PostprocessConfig
from cabruca.exports import crown_features, write_counts, write_crowns, write_mask
from cabruca.imagery import Imagery
from cabruca.predict import count_row
from cabruca.tiled_inference import predict_image, tile_cells

from .real_formats import CRS, ORIGIN, PIXEL

geopandas = pytest.importorskip("geopandas")  # the oracle for the GeoJSON files


def stub_model(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3, T, T): red > 0.5 is crown, green marks centres -> a unit Gaussian heatmap peak at each centre,
    semantic class 1 on crowns, zero offsets (pixels vote for the nearest peak)."""
    crown, centre = batch[:, 0], batch[:, 1]
    r = torch.arange(-6, 7, dtype=torch.float32)
    g = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 8)
    heat = F.conv2d(centre[:, None], g[None, None], padding=6).clamp(max=1)  # (B, 1, T, T)
    logits = torch.stack([10 * (0.5 - crown), 10 * (crown - 0.5)], 1)  # (B, 2, T, T)
    return {"semantic": logits, "heatmap": heat, "offsets": torch.zeros_like(batch[:, :2])}


def scene(h=150, w=190, radius=5, seed=0):
    """Disc trees on a grid, many of them across the seams of 64 px tiles; RGB float and the id map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    ids = np.zeros((h, w), np.int32)
    centres = []
    for cy in range(10, h - 8, 19):
        for cx in range(10, w - 8, 21):
            cy2, cx2 = cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3))
            ids[(yy - cy2) ** 2 + (xx - cx2) ** 2 <= radius**2] = len(centres) + 1
            centres.append((cx2, cy2))
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 255 * (ids > 0)
    for cx, cy in centres:
        rgb[cy, cx, 1] = 255
    return rgb, ids, centres


def write_tif(path, rgb, crs=CRS):
    transform = rasterio.transform.Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    h, w = rgb.shape[:2]
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=3, dtype="uint8", crs=crs, transform=transform
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


def predict(path, tile=64, overlap=16, thresholds=(0.5,)):
    with Imagery(path) as image:
        return predict_image(
            stub_model,
            image,
            tile_size=tile,
            overlap=overlap,
            thresholds=list(thresholds),
            postprocess=PostprocessConfig(nms_kernel=7, min_area=4),
            instance_semantic_ids=[1],
            batch_size=3,
        )


def test_tile_cells_partition_the_axis():
    for n, tile, overlap in [(190, 64, 16), (64, 64, 0), (30, 64, 8), (1000, 256, 64), (257, 128, 1)]:
        cells = tile_cells(n, tile, overlap)
        assert cells[0][1] == 0 and cells[-1][2] == n
        for (s, lo, hi), nxt in zip(cells, cells[1:] + [None], strict=True):
            assert s <= lo < hi <= s + tile  # each tile owns part of what it sees
            if nxt:
                assert hi == nxt[1]  # no gap, no overlap


@pytest.mark.parametrize("overlap", [0, 16])
def test_stitched_trees_are_counted_once_with_their_whole_crowns(tmp_path, overlap):
    rgb, ids, centres = scene()
    (pred,) = predict(write_tif(tmp_path / "o.tif", rgb), overlap=overlap)
    assert len(pred.trees) == len(centres)  # seams neither drop nor double-count a tree
    assert sorted(t.centre for t in pred.trees) == sorted((float(x), float(y)) for x, y in centres)
    assert pred.peak_max == pytest.approx(1.0)
    if overlap >= 2 * 5 + 2:  # crowns within overlap / 2 of the cut are seen whole by their owning tile
        for k, tree in enumerate(pred.trees, start=1):
            true_id = ids[int(tree.centre[1]), int(tree.centre[0])]
            assert np.array_equal(pred.instances == k, ids == true_id)
    assert np.array_equal(pred.semantic, (ids > 0).astype(np.uint8))


def test_thresholds_above_every_peak_find_nothing(tmp_path):
    rgb, _, centres = scene(h=70, w=80)
    low, high = predict(
        write_tif(tmp_path / "o.tif", rgb), thresholds=(0.5, 1.0)
    )  # peaks are 1: none is above 1
    assert len(low.trees) == len(centres) and high.trees == [] and high.instances.max() == 0


def test_files_carry_the_images_coordinates(tmp_path):
    rgb, ids, centres = scene()
    tif = write_tif(tmp_path / "ortho.tif", rgb)
    (pred,) = predict(tif)
    with Imagery(tif) as image:
        features = crown_features(pred, image, ["tree"])
        write_crowns(tmp_path / "crowns.geojson", features, image)
        mask = write_mask(tmp_path / "ortho_instances", pred.instances, image)
        write_counts(tmp_path / "counts.csv", [count_row(image, pred, ["tree"])])
    crowns = geopandas.read_file(tmp_path / "crowns.geojson")
    assert crowns.crs == CRS and len(crowns) == len(centres)
    h, w = ids.shape
    x0, y1 = ORIGIN
    bounds = crowns.total_bounds  # minx, miny, maxx, maxy in metres
    assert x0 <= bounds[0] and bounds[2] <= x0 + w * PIXEL and y1 - h * PIXEL <= bounds[1] and bounds[3] <= y1
    # each polygon covers exactly its crown's pixels: area in m^2 = pixels x pixel area
    np.testing.assert_allclose(crowns.area, crowns["area_px"] * PIXEL**2)
    for _, row in crowns.iterrows():
        assert row.geometry.contains(geopandas.points_from_xy([row.centre_x], [row.centre_y])[0])
    with rasterio.open(mask) as src:
        assert src.crs == CRS and src.transform == image.transform
        assert np.array_equal(src.read(1), pred.instances)
    (row,) = csv.DictReader((tmp_path / "counts.csv").open())
    assert int(row["trees"]) == len(crowns) and row["crs"] == "urn:ogc:def:crs:EPSG::31984"


def test_png_input_gives_pixel_coordinates(tmp_path):
    from PIL import Image

    rgb, ids, centres = scene(h=70, w=80)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    (pred,) = predict(tmp_path / "plain.png")
    with Imagery(tmp_path / "plain.png") as image:
        assert not image.georeferenced
        write_crowns(tmp_path / "c.geojson", crown_features(pred, image, ["tree"]), image)
        path = write_mask(tmp_path / "plain_instances", pred.instances, image)
    doc = json.loads((tmp_path / "c.geojson").read_text())
    assert "crs" not in doc and doc["coordinate_system"].startswith("pixel")
    xs = [p["properties"]["centre_x"] - 0.5 for p in doc["features"]]
    assert sorted(xs) == sorted(float(x) for x, _ in centres)
    assert path.suffix == ".png" and np.array_equal(np.asarray(Image.open(path)), pred.instances)


def test_no_detection_messages_say_where_detections_start():
    from cabruca.image_eval import no_detection_note
    from cabruca.predict import detection_hint

    assert "detections appear at --score-threshold 0.12 or lower" in detection_hint(0.3, 0.127, 500)
    assert "no pixel is classed as tree canopy" in detection_hint(0.1, 0.4, 0)
    sweep = [
        {"threshold": 0.05, "trees_pred": 7},
        {"threshold": 0.1, "trees_pred": 2},
        {"threshold": 0.3, "trees_pred": 0},
    ]
    note = no_detection_note(0.3, 0.17, 900, sweep)
    assert (
        "no tree detected at --score-threshold 0.3" in note
        and "appear at --score-threshold 0.1 and below" in note
    )
    assert no_detection_note(0.1, 0.17, 900, sweep) is None
    nothing = [{**row, "trees_pred": 0} for row in sweep]
    assert "no pixel is classed as tree canopy" in no_detection_note(0.3, 0.17, 0, nothing)
