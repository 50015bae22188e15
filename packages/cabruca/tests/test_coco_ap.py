"""Box and mask AP (`cabruca.metrics.coco_ap`) against pycocotools' COCOeval called directly on COCO
dictionaries built here, on random predictions, and on a case checked by hand."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cabruca.metrics import coco_ap, mask_box, mask_rle

# pycocotools 2 calls numpy with a copy= keyword numpy 2 deprecates: its noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def direct_cocoeval(sizes, gts, preds, num_classes, iou_type):
    """The COCO files a user would write (1-based category ids, [x, y, w, h] boxes), through COCOeval."""
    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
    anns, dets = [], []
    for i, (gt, pred) in enumerate(zip(gts, preds, strict=True), start=1):
        for g in gt:
            x0, y0, x1, y1 = g["box"]
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": g["label"] + 1, "iscrowd": 0}
            ann.update(bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0))
            if iou_type == "segm":
                ann.update(segmentation=g["mask"], area=float(mask_utils.area(g["mask"])))
            anns.append(ann)
        for p in pred:
            x0, y0, x1, y1 = p["box"]
            det = {"image_id": i, "category_id": p["label"] + 1, "score": p["score"]}
            det.update(segmentation=p["mask"]) if iou_type == "segm" else det.update(
                bbox=[x0, y0, x1 - x0, y1 - y0]
            )
            dets.append(det)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c + 1} for c in range(num_classes)],
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [max(float(v), 0.0) for v in ev.stats[:3]]


def random_tree(rng, h, w, score=False):
    """A random elliptic crown: label, mask RLE, its box, and a score for predictions."""
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, rx, ry = rng.uniform(5, w - 5), rng.uniform(5, h - 5), rng.uniform(2, 9), rng.uniform(2, 9)
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    rle = mask_rle(mask)
    tree = {"label": int(rng.integers(0, 3)), "mask": rle, "box": mask_box(rle)}
    if score:
        tree["score"] = float(rng.uniform(0.01, 1))
    return tree


def jittered(rng, tree, h, w):
    """A prediction near a true tree: its mask shifted by a few pixels."""
    m = np.roll(mask_utils.decode(tree["mask"]).astype(bool), tuple(rng.integers(-3, 4, 2)), (0, 1))
    rle = mask_rle(m)
    label = tree["label"] if rng.random() < 0.8 else int(rng.integers(0, 3))
    return {"label": label, "mask": rle, "box": mask_box(rle), "score": float(rng.uniform(0.01, 1))}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_random_predictions_score_as_cocoeval_scores_them(seed, iou_type):
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(40, 80)), int(rng.integers(40, 80))) for _ in range(3)]
    gts = [[random_tree(rng, h, w) for _ in range(int(rng.integers(0, 6)))] for h, w in sizes]
    preds = [
        [jittered(rng, t, h, w) for t in gt if rng.random() < 0.7]
        + [random_tree(rng, h, w, score=True) for _ in range(int(rng.integers(0, 4)))]
        for (h, w), gt in zip(sizes, gts, strict=True)
    ]
    ours = coco_ap(sizes, gts, preds, 3, iou_type)
    expected = direct_cocoeval(sizes, gts, preds, 3, iou_type)
    assert [ours["mAP"], ours["mAP_50"], ours["mAP_75"]] == pytest.approx(expected, abs=1e-12)


def test_a_case_checked_by_hand():
    """One true 10 x 10 box; a prediction covering its top 6.8 rows (IoU 0.68) scored 0.9 and a false one
    scored 0.5: the match passes IoU 0.50, 0.55, 0.60, 0.65 of the ten COCO thresholds, so AP = 4/10, AP_50 = 1
    (the higher-scored prediction is the right one), AP_75 = 0."""
    gt = [[{"label": 0, "box": (0, 0, 10, 10), "mask": None}]]
    preds = [
        [
            {"label": 0, "box": (0, 0, 10, 6.8), "score": 0.9},
            {"label": 0, "box": (30, 30, 40, 40), "score": 0.5},
        ]
    ]
    ap = coco_ap([(50, 50)], gt, preds, 1, "bbox")
    assert ap == pytest.approx({"mAP": 0.4, "mAP_50": 1.0, "mAP_75": 0.0})
    # the false prediction ranked first halves the precision at full recall: AP_50 = 0.5
    preds[0][1]["score"] = 0.95
    assert coco_ap([(50, 50)], gt, preds, 1, "bbox")["mAP_50"] == pytest.approx(0.5, abs=0.01)
    assert coco_ap([(50, 50)], gt, [[]], 1, "bbox") == {"mAP": 0.0, "mAP_50": 0.0, "mAP_75": 0.0}
