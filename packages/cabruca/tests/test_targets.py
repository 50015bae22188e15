"""Target generation and post-processing: ground-truth targets decode back to the ground truth."""

from __future__ import annotations

import numpy as np
import torch

from cabruca.config import DataConfig
from cabruca.data import CabrucaTiles, load_split
from cabruca.metrics import coco_mask_map
from cabruca.postprocess import decode_instances, instances_from_ids
from cabruca.synthetic import generate
from cabruca.targets import crown_boundaries, make_targets


def _one_hot(sem: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(sem, n).permute(2, 0, 1).float()


def test_targets_encode_centres_offsets_boundaries_and_counts():
    inst = np.zeros((20, 20), np.int32)
    inst[2:9, 2:9] = 1
    inst[10:18, 11:19] = 2
    t = make_targets(
        inst,
        np.array([0, 2]),
        np.array([[5.0, 5.0], [14.6, 13.2]], np.float32),
        3,
        centre_sigma=2.0,
        density_sigma=2.0,
        density_scale=100.0,
    )
    assert t["heatmap"][0, 5, 5] == 1.0 and t["heatmap"][2, 13, 15] == 1.0 and t["heatmap"][1].max() == 0
    # Every tree pixel points at its (rounded) centre; background has zero offset and zero weight.
    ys, xs = np.nonzero(inst == 2)
    assert np.allclose(ys + t["offsets"][0, ys, xs], 13) and np.allclose(xs + t["offsets"][1, ys, xs], 15)
    assert t["offset_weight"].sum() == (inst > 0).sum() and t["offsets"][:, inst == 0].max() == 0
    assert np.isclose(t["density"].sum(), 200.0, rtol=1e-5) and t["count"] == 2
    b = crown_boundaries(inst)
    assert b[2, 4] == 1 and b[5, 5] == 0 and b[0, 0] == 0  # rim, interior, background


def test_crown_boundary_is_not_drawn_at_the_tile_edge():
    inst = np.ones((6, 6), np.int32)
    assert crown_boundaries(inst).sum() == 0


def test_ground_truth_targets_round_trip_to_map_one(tmp_path):
    """Full scenes from the generator (overlapping crowns of all three classes): targets -> decode -> the
    ground-truth instances, scored by pycocotools at mAP 1.0."""
    data = generate(tmp_path, num_train=1, num_val=3, image_size=128, seed=5)
    cfg = DataConfig(tile_size=128, tile_overlap=0)
    ds = CabrucaTiles(load_split(data / "val", cfg), cfg, seed=0, train=False)
    gts, preds = [], []
    for i in range(len(ds)):
        s = ds[i]
        pred = decode_instances(
            _one_hot(s["semantic"], 6),
            s["heatmap"],
            s["offsets"],
            cfg.instance_semantic_ids,
            threshold=0.5,
            nms_kernel=7,
            min_area=1,
        )
        gt = instances_from_ids(s["instances"], s["labels"])
        assert len(pred) == len(gt) >= 3
        gts.append(gt)
        preds.append(pred)
    m = coco_mask_map(gts, preds, 3)
    assert m == {"mAP": 1.0, "mAP_50": 1.0, "mAP_75": 1.0}


def test_augmented_tiles_also_round_trip(tiny_data):
    cfg = DataConfig(tile_size=64, tile_overlap=0)
    ds = CabrucaTiles(load_split(tiny_data / "train", cfg), cfg, seed=4, train=True)
    for i in range(4):
        s = ds[(i, 2)]
        pred = decode_instances(
            _one_hot(s["semantic"], 6),
            s["heatmap"],
            s["offsets"],
            cfg.instance_semantic_ids,
            threshold=0.5,
            nms_kernel=3,
            min_area=1,
        )
        gt = instances_from_ids(s["instances"], s["labels"])
        matched = sum(any(bool((p.mask == g.mask).all()) and p.label == g.label for p in pred) for g in gt)
        assert matched == len(gt)


def test_decode_handles_no_peaks():
    sem = torch.zeros(6, 8, 8)
    sem[1] = 1
    assert decode_instances(sem, torch.zeros(3, 8, 8), torch.zeros(2, 8, 8), [1, 2, 3]) == []
