"""Detection (COCO mask mAP through pycocotools) and agroforestry metrics, accumulated over tiles."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .postprocess import Instance


def coco_ap(
    sizes: list[tuple[int, int]],
    gts: list[list[dict]],
    preds: list[list[dict]],
    num_classes: int,
    iou_type: str = "segm",
) -> dict[str, float]:
    """COCO AP by pycocotools' COCOeval (101-point interpolation, maxDets 100, area 'all').

    sizes: (height, width) per image; gts / preds: per image, dicts with "label" (class index 0..K-1),
    "box" (xmin, ymin, xmax, ymax in pixels), "mask" (a COCO RLE; needed for iou_type "segm") and, for
    predictions, "score". iou_type "segm" (mask AP) or "bbox" (box AP). Returns mAP (IoU 0.5:0.95), mAP_50,
    mAP_75; 0.0 where pycocotools reports -1 (no ground truth) and when nothing was predicted."""
    images, anns, dets = [], [], []
    for img_id, ((h, w), gt, pred) in enumerate(zip(sizes, gts, preds, strict=True), start=1):
        images.append({"id": img_id, "width": int(w), "height": int(h)})
        for g in gt:
            x0, y0, x1, y1 = (float(v) for v in g["box"])
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": g["label"] + 1, "iscrowd": 0}
            ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            ann["area"] = float(mask_utils.area(g["mask"])) if iou_type == "segm" else (x1 - x0) * (y1 - y0)
            if iou_type == "segm":
                ann["segmentation"] = g["mask"]
            anns.append(ann)
        for p in pred:
            det = {"image_id": img_id, "category_id": p["label"] + 1, "score": float(p["score"])}
            if iou_type == "segm":
                det["segmentation"] = p["mask"]
            else:
                x0, y0, x1, y1 = (float(v) for v in p["box"])
                det["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            dets.append(det)
    zero = {"mAP": 0.0, "mAP_50": 0.0, "mAP_75": 0.0}
    if not anns or not dets:
        return zero
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [max(float(v), 0.0) for v in ev.stats[:3]]
    return {"mAP": s[0], "mAP_50": s[1], "mAP_75": s[2]}


def mask_rle(mask: np.ndarray) -> dict:
    """bool (H, W) -> COCO RLE with a str "counts" (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_box(rle: dict) -> tuple[float, float, float, float]:
    """The (xmin, ymin, xmax, ymax) pixel extent of an RLE mask."""
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return x, y, x + w, y + h


def coco_mask_map(
    gts: list[list[Instance]], preds: list[list[Instance]], num_classes: int
) -> dict[str, float]:
    """Mask mAP of tiles: per tile, lists of instances (see `coco_ap`)."""

    def entries(instances: list[Instance]) -> list[dict]:
        out = []
        for inst in instances:
            rle = mask_rle(inst.mask.cpu().numpy())
            out.append({"label": inst.label, "mask": rle, "box": mask_box(rle), "score": inst.score})
        return out

    sizes = [
        tuple((gt[0].mask.shape if gt else pred[0].mask.shape) if (gt or pred) else (1, 1))
        for gt, pred in zip(gts, preds, strict=True)
    ]
    return coco_ap(sizes, [entries(g) for g in gts], [entries(p) for p in preds], num_classes, "segm")


def count_accuracy(pred_count: float, gt_count: float) -> float:
    """1 - |pred - gt| / max(gt, 1), floored at 0."""
    return max(0.0, 1.0 - abs(pred_count - gt_count) / max(gt_count, 1.0))


class Evaluator:
    """Accumulates one validation pass: instances for mAP, semantic confusion, counts."""

    def __init__(self, semantic_classes: list[str], instance_classes: list[str], tree_ids: list[int]):
        self.semantic_classes, self.instance_classes, self.tree_ids = (
            semantic_classes,
            instance_classes,
            tree_ids,
        )
        n = len(semantic_classes)
        self.confusion = torch.zeros(n, n, dtype=torch.long)
        self.gts: list[list[Instance]] = []
        self.preds: list[list[Instance]] = []
        self.count_acc: list[float] = []
        self.density_count_acc: list[float] = []
        self.gt_trees = self.pred_trees = 0

    def update(self, pred_sem, gt_sem, pred_instances, gt_instances, density_count: float | None = None):
        """One tile: label maps (H, W), instance lists, and the density head's count."""
        n = len(self.semantic_classes)
        gt, pred = gt_sem.flatten().cpu(), pred_sem.flatten().cpu()
        known = gt < n  # box-labelled tiles: the box corners (box_labels.IGNORE) have no true class
        self.confusion += torch.bincount(gt[known] * n + pred[known], minlength=n * n).view(n, n)
        # Masks move to the CPU (pycocotools encodes them there) so evaluation memory stays off the device.
        self.gts.append([Instance(i.mask.cpu(), i.label, i.score, i.centre) for i in gt_instances])
        self.preds.append([Instance(i.mask.cpu(), i.label, i.score, i.centre) for i in pred_instances])
        self.count_acc.append(count_accuracy(len(pred_instances), len(gt_instances)))
        if density_count is not None:
            self.density_count_acc.append(count_accuracy(density_count, len(gt_instances)))
        self.gt_trees += len(gt_instances)
        self.pred_trees += len(pred_instances)

    def compute(self) -> dict[str, float]:
        out = coco_mask_map(self.gts, self.preds, len(self.instance_classes))
        cm = self.confusion.double()
        iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp(min=1)
        present = (cm.sum(1) + cm.sum(0)) > 0
        out["mIoU"] = float(iou[present].mean()) if present.any() else 0.0
        for name, v in zip(self.semantic_classes, iou.tolist(), strict=True):
            out[f"IoU_{name}"] = v
        tree = torch.tensor(self.tree_ids)
        inter = cm[tree][:, tree].sum()  # tree pixel predicted as any tree class
        union = cm[tree].sum() + cm[:, tree].sum() - inter
        out["canopy_IoU"] = float(inter / union) if union > 0 else 1.0
        gt_share = cm[tree].sum(1) / cm[tree].sum().clamp(min=1)  # rows = ground truth
        pred_share = cm[:, tree].sum(0) / cm[:, tree].sum().clamp(min=1)
        for name, g, p in zip(self.instance_classes, gt_share.tolist(), pred_share.tolist(), strict=True):
            out[f"shade_share_{name}"] = p
            out[f"shade_share_gt_{name}"] = g
        out["shade_distribution_error"] = float(0.5 * (gt_share - pred_share).abs().sum())  # total variation
        out["tree_count_accuracy"] = float(np.mean(self.count_acc)) if self.count_acc else 0.0
        if self.density_count_acc:
            out["density_count_accuracy"] = float(np.mean(self.density_count_acc))
        out["trees_gt"], out["trees_pred"] = float(self.gt_trees), float(self.pred_trees)
        return out
