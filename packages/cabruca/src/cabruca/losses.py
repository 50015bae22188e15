"""Multi-task loss: semantic CE, instance (centre heatmap MSE + offset L1), crown BCE, density MSE.

Every component is returned on its own so it can be logged; `loss` is their weighted sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .box_labels import IGNORE
from .config import LossConfig


class MultiTaskLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(
        self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        c = self.cfg
        out = {k: v.float() for k, v in out.items()}  # losses in float32 under autocast
        weight = (
            torch.tensor(c.semantic_class_weights, device=out["semantic"].device)
            if c.semantic_class_weights
            else None
        )
        # (B, S, H, W) vs (B, H, W); box-labelled tiles leave the box corners out (box_labels.IGNORE)
        semantic = F.cross_entropy(out["semantic"], batch["semantic"], weight=weight, ignore_index=IGNORE)
        centre = F.mse_loss(out["heatmap"], batch["heatmap"])  # (B, K, H, W)
        w = batch["offset_weight"]  # (B, H, W): offsets only count on tree pixels
        offset = (
            F.l1_loss(out["offsets"], batch["offsets"], reduction="none").sum(1) * w
        ).sum() / w.sum().clamp(min=1)
        crown = F.binary_cross_entropy_with_logits(
            out["crown"],
            batch["crown"],
            pos_weight=torch.tensor(c.crown_pos_weight, device=out["crown"].device),
        )
        density = F.mse_loss(out["density"], batch["density"])
        instance = c.centre_weight * centre + c.offset_weight * offset
        total = c.semantic_weight * semantic + instance + c.crown_weight * crown + c.density_weight * density
        return {
            "loss": total,
            "semantic": semantic,
            "instance": instance,
            "centre": centre,
            "offset": offset,
            "crown": crown,
            "density": density,
        }
