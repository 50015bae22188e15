"""Evaluation per whole image, as a user predicts: stitched tiles (`cabruca.tiled_inference`), tree counts per
image, and box and mask AP by pycocotools, at the chosen centre threshold and over a threshold sweep.

The sweep shows where the detections are: a short run's centre peaks may all lie below the configured
threshold, and then the chosen threshold finds nothing while a lower one does; `no_detection_note` says so.
Box-labelled data has no true crown masks (its crowns are box-derived ellipses), so mask AP is reported for
mask-labelled data only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .config import SWEEP, CabrucaConfig
from .data import ImageRecord, load_image
from .imagery import Imagery
from .metrics import coco_ap, mask_box, mask_rle
from .tiled_inference import StitchedPrediction, predict_image


def ground_truth(rec: ImageRecord, cfg: CabrucaConfig) -> list[dict]:
    """The image's trees: label, box (the given box for box labels, the mask's extent otherwise), mask."""
    _, _, ids, labels, _ = load_image(rec, cfg.data.instance_semantic_ids)
    trees = []
    for k, label in enumerate(labels.tolist(), start=1):
        if rec.boxes is not None:
            trees.append({"label": int(label), "box": rec.boxes[k - 1], "mask": None})
        elif (ids == k).any():  # a crown painted over entirely by later ones is not visible
            rle = mask_rle(ids == k)
            trees.append({"label": int(label), "box": mask_box(rle), "mask": rle})
    return trees


def predicted_trees(pred: StitchedPrediction) -> list[dict]:
    out = []
    for k, tree in enumerate(pred.trees, start=1):
        rle = mask_rle(pred.instances == k)
        out.append({"label": tree.label, "box": mask_box(rle), "mask": rle, "score": tree.score})
    return out


def no_detection_note(threshold: float, peak_max: float, canopy_pixels: int, sweep: list[dict]) -> str | None:
    """None when the threshold finds trees; else where they appear (the sweep's highest threshold with
    detections), or why none can: no centre peak, or peaks without canopy pixels to form crowns."""
    at = next((row for row in sweep if row["threshold"] == threshold), None)
    if at is not None and at["trees_pred"] > 0:
        return None
    found = [row["threshold"] for row in sweep if row["trees_pred"] > 0]
    if found:
        where = f"detections appear at --score-threshold {max(found):g} and below"
    elif canopy_pixels == 0:
        where = "no pixel is classed as tree canopy, so no crown can form at any threshold: train longer"
    else:
        where = "no threshold of the sweep finds any (crowns need canopy pixels around a peak): train longer"
    return (
        f"no tree detected at --score-threshold {threshold:g}: the strongest tree-centre peak in these images "
        f"is {peak_max:.3f}; {where}."
    )


@torch.no_grad()
def evaluate_images(
    model: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    records: list[ImageRecord],
    cfg: CabrucaConfig,
    *,
    tile_size: int,
    overlap: int,
    score_threshold: float,
    sweep: Sequence[float] = SWEEP,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
) -> dict:
    """Per-image counts, count MAE, box/mask AP at `score_threshold`, and the same over `sweep`."""
    thresholds = sorted({float(score_threshold), *map(float, sweep)})
    num_classes = len(cfg.data.instance_classes)
    has_masks = all(rec.boxes is None for rec in records)
    gts, sizes, names, peak_max, canopy = [], [], [], 0.0, 0
    preds: dict[float, list[list[dict]]] = {t: [] for t in thresholds}
    for rec in records:
        with Imagery(rec.image_path) as image:
            stitched = predict_image(
                model,
                image,
                tile_size=tile_size,
                overlap=overlap,
                thresholds=thresholds,
                postprocess=cfg.postprocess,
                instance_semantic_ids=cfg.data.instance_semantic_ids,
                device=device,
                batch_size=batch_size,
            )
        gts.append(ground_truth(rec, cfg))
        sizes.append((rec.height, rec.width))
        names.append(rec.image_path.name)
        peak_max = max(peak_max, stitched[0].peak_max)
        canopy += int(np.isin(stitched[0].semantic, cfg.data.instance_semantic_ids).sum())
        for pred in stitched:
            preds[pred.threshold].append(predicted_trees(pred))

    def scores(t: float) -> dict:
        counts = [len(p) for p in preds[t]]
        row = {
            "threshold": t,
            "trees_pred": sum(counts),
            "count_MAE": float(np.mean([abs(c - len(g)) for c, g in zip(counts, gts, strict=True)])),
        }
        for key, v in coco_ap(sizes, gts, preds[t], num_classes, "bbox").items():
            row[f"box_{key}"] = v
        if has_masks:
            for key, v in coco_ap(sizes, gts, preds[t], num_classes, "segm").items():
                row[f"mask_{key}"] = v
        return row

    rows = {t: scores(t) for t in thresholds}
    chosen = rows[float(score_threshold)]
    result = {
        "score_threshold": float(score_threshold),
        "tile_size": tile_size,
        "overlap": overlap,
        "trees_gt": sum(len(g) for g in gts),
        **{k: v for k, v in chosen.items() if k != "threshold"},
        "peak_max": peak_max,
        "canopy_px": canopy,
        "per_image": [
            {"image": n, "trees_gt": len(g), "trees_pred": len(p), "count_error": len(p) - len(g)}
            for n, g, p in zip(names, gts, preds[float(score_threshold)], strict=True)
        ],
        "sweep": [rows[t] for t in thresholds],
    }
    note = no_detection_note(float(score_threshold), peak_max, canopy, result["sweep"])
    if note:
        result["note"] = note
    return result


def sweep_table(result: dict) -> str:
    """The sweep as aligned text rows for the console."""
    keys = [
        k
        for k in ("trees_pred", "count_MAE", "box_mAP_50", "box_mAP", "mask_mAP_50", "mask_mAP")
        if k in result["sweep"][0]
    ]
    lines = [
        f"{'threshold':>9}  "
        + "  ".join(f"{k:>11}" for k in keys)
        + f"   (trees in truth: {result['trees_gt']})"
    ]
    for row in result["sweep"]:
        mark = "  <- chosen" if row["threshold"] == result["score_threshold"] else ""
        cells = "  ".join(f"{row[k]:>11.3f}" if isinstance(row[k], float) else f"{row[k]:>11}" for k in keys)
        lines.append(f"{row['threshold']:>9g}  {cells}{mark}")
    return "\n".join(lines)
