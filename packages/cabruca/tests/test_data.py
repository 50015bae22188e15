"""Dataset validation, tiling, the generator, and augmentation consistency."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cabruca.augment import augment, hflip, rot90, vflip
from cabruca.config import AugmentConfig, DataConfig
from cabruca.data import CabrucaTiles, load_image, load_split, tile_windows
from cabruca.synthetic import generate
from common.errors import DataError


@pytest.fixture
def split(tiny_data, tmp_path):
    """A private copy of the validation split that a test may break."""
    return shutil.copytree(tiny_data / "val", tmp_path / "val")


def test_generator_is_deterministic_and_writes_the_format(tmp_path):
    a = generate(tmp_path / "a", num_train=1, num_val=1, image_size=96, seed=3)
    b = generate(tmp_path / "b", num_train=1, num_val=1, image_size=96, seed=3)
    for rel in ("train/images/scene_0000.png", "train/masks/scene_0000.png", "train/annotations.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    recs = load_split(a / "train", DataConfig())
    rgb, sem, ids, labels, centres = load_image(recs[0])
    assert rgb.shape == (96, 96, 3) and sem.shape == (96, 96)
    assert set(np.unique(labels)) <= {0, 1, 2} and len(labels) == ids.max() >= 3
    # Instance masks are the visible crowns: each lies on its class's semantic pixels.
    for k, label in enumerate(labels, start=1):
        assert (sem[ids == k] == DataConfig().instance_semantic_ids[label]).all()


def test_missing_image_is_named(split):
    (split / "images" / "scene_0000.png").unlink()
    with pytest.raises(DataError, match="scene_0000.png.*missing"):
        load_split(split, DataConfig())


def test_mask_size_mismatch_is_named(split):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(split / "masks" / "scene_0000.png")
    with pytest.raises(DataError, match=r"mask scene_0000.png has shape \(10, 12\)"):
        load_split(split, DataConfig())


def test_class_id_out_of_range(split):
    Image.fromarray(np.full((128, 128), 9, np.uint8)).save(split / "masks" / "scene_0000.png")
    with pytest.raises(DataError, match="class id 9 but only 6 semantic classes"):
        load_split(split, DataConfig())


def test_broken_coco_json(split):
    (split / "annotations.json").write_text('{"images": [')
    with pytest.raises(DataError, match="annotations.json is not valid JSON"):
        load_split(split, DataConfig())


def test_bad_category_and_segmentation(split):
    coco = json.loads((split / "annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 7
    (split / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="category_id 7; expected 1..3"):
        load_split(split, DataConfig())
    coco["annotations"][0]["category_id"] = 1
    coco["annotations"][0]["segmentation"] = {"size": [5, 5], "counts": "###"}
    (split / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="broken segmentation"):
        load_split(split, DataConfig())


def test_polygon_annotations_are_read(split):
    coco = json.loads((split / "annotations.json").read_text())
    coco["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 0,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
        }
    ]
    (split / "annotations.json").write_text(json.dumps(coco))
    _, _, ids, labels, centres = load_image(load_split(split, DataConfig())[0])
    assert labels.tolist() == [1] and 300 < (ids == 1).sum() < 500
    assert np.allclose(
        centres[0], [(ids == 1).nonzero()[1].mean(), (ids == 1).nonzero()[0].mean()]
    )  # centroid


def test_tile_windows_cover_with_overlap():
    wins = tile_windows(300, 200, 128, 32)
    assert wins[0] == (0, 0) and (300 - 128, 200 - 128) in wins
    covered = np.zeros((300, 200), bool)
    for y, x in wins:
        covered[y : y + 128, x : x + 128] = True
    assert covered.all()
    assert tile_windows(50, 50, 128, 32) == [(0, 0)]  # smaller than a tile: one zero-padded tile


def _scene():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3), dtype=np.float32)
    sem = rng.integers(0, 6, (16, 16)).astype(np.uint8)
    inst = np.zeros((16, 16), np.int32)
    inst[2:5, 9:13] = 1
    inst[10:14, 1:4] = 2
    return image, sem, inst, np.array([[10.0, 3.0], [2.0, 12.0]], np.float32)  # centres inside their crowns


@pytest.mark.parametrize("op", [hflip, vflip, rot90])
def test_geometry_moves_labels_with_the_image(op):
    image, sem, inst, centres = _scene()
    img2, sem2, inst2, c2 = op(image, sem, inst, centres)
    # The semantic mask and the id map undergo exactly the image's pixel permutation: encode each pixel's
    # identity in the image and check that the labels followed it.
    ident = np.arange(256, dtype=np.float32).reshape(16, 16, 1).repeat(3, 2)
    moved = op(ident, sem, inst, centres)[0][..., 0].astype(int)
    assert (sem2 == sem.ravel()[moved]).all() and (inst2 == inst.ravel()[moved]).all()
    # Each centre lands on the pixel its original pixel moved to.
    for (x, y), (x2, y2) in zip(centres.astype(int), c2.astype(int), strict=True):
        assert moved[y2, x2] == y * 16 + x
        assert inst2[y2, x2] == inst[y, x]


def test_random_augmentation_is_consistent_and_reproducible():
    image, sem, inst, centres = _scene()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5)
    for seed in range(6):
        out = augment(image, sem, inst, centres, np.random.default_rng(seed), cfg)
        again = augment(image, sem, inst, centres, np.random.default_rng(seed), cfg)
        assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
        _, sem2, inst2, c2 = out
        for k, (x, y) in enumerate(c2.astype(int), start=1):
            assert inst2[y, x] == k  # the centre still sits on its own crown
        assert np.array_equal(np.sort(sem2.ravel()), np.sort(sem.ravel()))  # a permutation of the pixels
        assert out[0].min() >= 0 and out[0].max() <= 1


def test_dataset_tiles_and_epoch_dependent_augmentation(tiny_data):
    cfg = DataConfig(tile_size=64, tile_overlap=0)
    ds = CabrucaTiles(load_split(tiny_data / "train", cfg), cfg, seed=1, train=True)
    assert len(ds) == 3 * 4
    a, b, c = ds[(0, 0)], ds[(0, 0)], ds[(0, 1)]
    assert all(torch_equal(a[k], b[k]) for k in ("image", "semantic", "heatmap"))
    assert not torch_equal(a["image"], c["image"])  # another epoch, another augmentation
    assert (
        a["image"].shape == (3, 64, 64)
        and a["heatmap"].shape == (3, 64, 64)
        and a["offsets"].shape == (2, 64, 64)
    )
    assert int(a["count"]) == len(a["labels"]) == int(a["instances"].max())


def torch_equal(x, y):
    return bool((x == y).all())
