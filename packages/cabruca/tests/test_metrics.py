"""COCO mask mAP (pycocotools) and agroforestry metrics on hand-built cases."""

from __future__ import annotations

import pytest
import torch

from cabruca.metrics import Evaluator, coco_mask_map, count_accuracy
from cabruca.postprocess import Instance


def box(y0, y1, x0, x1, label=0, score=1.0, size=40):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return Instance(m, label, score, (-1, -1))


def test_map_on_a_hand_built_case():
    """GT A, B (10x25 px). Prediction A' = A (score .9), B' = 10x17 inside B (IoU 170/250 = 0.68, score .8).
    IoU 0.50..0.65: both match -> AP 1. IoU 0.70..0.95: B' is a false positive, recall stops at 1/2 ->
    the 101-point interpolated precision is 1 for recall 0..0.50 (51 points) -> AP 51/101."""
    gt = [[box(0, 10, 0, 25), box(20, 30, 0, 25)]]
    pred = [[box(0, 10, 0, 25, score=0.9), box(20, 30, 0, 17, score=0.8)]]
    m = coco_mask_map(gt, pred, 3)
    assert m["mAP_50"] == pytest.approx(1.0)
    assert m["mAP_75"] == pytest.approx(51 / 101)
    assert m["mAP"] == pytest.approx((4 * 1.0 + 6 * 51 / 101) / 10)


def test_map_is_per_class_and_penalises_wrong_labels():
    gt = [[box(0, 10, 0, 10, label=0), box(20, 30, 20, 30, label=1)]]
    pred = [[box(0, 10, 0, 10, label=0), box(20, 30, 20, 30, label=2)]]  # second has the wrong class
    # class 0: AP 1; class 1: a GT without a match, AP 0; class 2: no GT, ignored -> mean 0.5
    assert coco_mask_map(gt, pred, 3)["mAP_50"] == pytest.approx(0.5)
    assert coco_mask_map([[]], [[]], 3)["mAP"] == 0.0


def test_agroforestry_metrics_on_a_hand_built_tile():
    # semantic classes: 0 background, 1 cacao, 2 shade, 3 other; trees are 1..3
    gt = torch.zeros(10, 10, dtype=torch.long)
    gt[:, :4] = 1  # 40 cacao pixels
    gt[:, 4:6] = 2  # 20 shade pixels
    pred = gt.clone()
    pred[:, 4:6] = 1  # shade predicted as cacao (still canopy)
    pred[:, 6:7] = 3  # 10 background pixels predicted as other tree
    ev = Evaluator(["bg", "cacao", "shade", "other"], ["cacao", "shade", "other"], [1, 2, 3])
    ev.update(pred, gt, [box(0, 2, 0, 2, size=10)] * 3, [box(0, 2, 0, 2, size=10)] * 4, density_count=4.4)
    m = ev.compute()
    assert m["canopy_IoU"] == pytest.approx(60 / 70)
    assert m["shade_share_gt_cacao"] == pytest.approx(40 / 60) and m["shade_share_gt_shade"] == pytest.approx(
        20 / 60
    )
    assert m["shade_share_cacao"] == pytest.approx(60 / 70) and m["shade_share_other"] == pytest.approx(
        10 / 70
    )
    # total variation between (2/3, 1/3, 0) and (6/7, 0, 1/7)
    assert m["shade_distribution_error"] == pytest.approx(0.5 * (abs(2 / 3 - 6 / 7) + 1 / 3 + 1 / 7))
    assert m["tree_count_accuracy"] == pytest.approx(0.75)
    assert m["density_count_accuracy"] == pytest.approx(0.9)
    assert m["IoU_cacao"] == pytest.approx(40 / 60) and m["IoU_bg"] == pytest.approx(30 / 40)


def test_count_accuracy_floors_at_zero():
    assert count_accuracy(10, 2) == 0.0 and count_accuracy(0, 0) == 1.0
