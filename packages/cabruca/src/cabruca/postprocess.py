"""Turn the model's dense outputs into scored tree instances (Panoptic-DeepLab grouping).

1. Peaks of the class-wise centre heatmap: a pixel equal to the max of its nms_kernel window and above
   centre_threshold (top_k kept). The peak's channel is its provisional class.
2. Tree pixels: semantic class in instance_semantic_ids. Each votes for the centre nearest to
   (pixel + predicted offset).
3. Each group's class is the majority semantic class of its pixels; its score is the peak value times the
   mean semantic probability of that class over the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Instance:
    mask: torch.Tensor  # (H, W) bool
    label: int  # instance class index 0..K-1
    score: float
    centre: tuple[float, float]  # (x, y) pixel of the peak


def find_peaks(heatmap: torch.Tensor, threshold: float, kernel: int, top_k: int):
    """heatmap (C, H, W) -> (scores (P,), classes (P,), ys (P,), xs (P,)) of local maxima."""
    heat, cls = heatmap.max(dim=0)  # (H, W): one centre per pixel whatever its class
    pooled = F.max_pool2d(heat[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
    keep = (heat == pooled) & (heat > threshold)
    scores = heat[keep]
    ys, xs = torch.nonzero(keep, as_tuple=True)
    if scores.numel() > top_k:
        scores, order = scores.topk(top_k)
        ys, xs = ys[order], xs[order]
    return scores, cls[ys, xs], ys, xs


@torch.no_grad()
def decode_instances(
    semantic_prob: torch.Tensor,
    heatmap: torch.Tensor,
    offsets: torch.Tensor,
    instance_semantic_ids: list[int],
    *,
    threshold: float = 0.3,
    nms_kernel: int = 7,
    top_k: int = 200,
    min_area: int = 4,
) -> list[Instance]:
    """One tile. semantic_prob (S, H, W) class probabilities (a one-hot mask works), heatmap (C, H, W),
    offsets (2, H, W) as (dy, dx)."""
    s, h, w = semantic_prob.shape
    scores, _, ys, xs = find_peaks(heatmap, threshold, nms_kernel, top_k)
    semantic = semantic_prob.argmax(0)  # (H, W)
    sem_ids = torch.tensor(instance_semantic_ids, device=semantic.device)
    tree = (semantic[..., None] == sem_ids).any(-1)  # (H, W)
    if scores.numel() == 0 or not tree.any():
        return []
    py, px = torch.nonzero(tree, as_tuple=True)  # (P,) tree pixels
    vy, vx = py + offsets[0, py, px], px + offsets[1, py, px]  # where each pixel says its centre is
    d2 = (vy[:, None] - ys[None].float()) ** 2 + (vx[:, None] - xs[None].float()) ** 2  # (P, K)
    owner = d2.argmin(1)  # (P,) peak index per tree pixel
    out = []
    for k in range(scores.numel()):
        sel = owner == k
        if int(sel.sum()) < min_area:
            continue
        mask = torch.zeros(h, w, dtype=torch.bool, device=semantic.device)
        mask[py[sel], px[sel]] = True
        votes = torch.bincount(semantic[mask], minlength=s)[sem_ids]  # pixels per instance class
        label = int(votes.argmax())
        conf = semantic_prob[instance_semantic_ids[label]][mask].mean()
        out.append(Instance(mask, label, float(scores[k] * conf), (float(xs[k]), float(ys[k]))))
    return out


def instances_from_ids(instances: torch.Tensor, labels: torch.Tensor) -> list[Instance]:
    """Ground truth of one tile: id map (H, W) + labels (N,) -> instances with score 1."""
    out = []
    for k, label in enumerate(labels.tolist(), start=1):
        mask = instances == k
        if mask.any():
            out.append(Instance(mask, int(label), 1.0, (-1.0, -1.0)))
    return out
