"""Reconstruction metrics on cubes in physical units (reflectance): MSE, SAM, PSNR, SSIM (torchmetrics).

Every metric is computed per sample and then averaged over the batch, so equal-sized DDP shards average to
the single-process value. The data range of PSNR/SSIM is each target cube's own max - min.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    spectral_angle_mapper,
    structural_similarity_index_measure,
)

METRIC_NAMES = ("recon_mse", "sam_deg", "psnr", "ssim")


@torch.no_grad()
def reconstruction_metrics(
    recon: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor
) -> dict[str, float]:
    """recon, target, voxel_mask: (B, C, H, W); voxel_mask 1 where the model had to predict.

    recon_mse: over the hidden voxels only (the visible ones are copied from the input);
    sam_deg: mean spectral angle in degrees over all pixels; psnr (dB) and ssim over the whole cube.
    """
    recon, target, voxel_mask = recon.float(), target.float(), voxel_mask.float()
    per_sample: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for rec, tgt, msk in zip(recon, target, voxel_mask, strict=True):
        rec, tgt = rec.unsqueeze(0), tgt.unsqueeze(0)  # (1, C, H, W)
        hidden = msk.sum().clamp_min(1)
        per_sample["recon_mse"].append(float((((rec[0] - tgt[0]) ** 2) * msk).sum() / hidden))
        per_sample["sam_deg"].append(math.degrees(float(spectral_angle_mapper(rec, tgt))))
        data_range = float(tgt.max() - tgt.min()) or 1.0
        per_sample["psnr"].append(float(peak_signal_noise_ratio(rec, tgt, data_range=data_range)))
        per_sample["ssim"].append(float(structural_similarity_index_measure(rec, tgt, data_range=data_range)))
    return {name: sum(values) / len(values) for name, values in per_sample.items()}


def mse_per_band(recon: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (C,): MSE per band over hidden voxels (for the per-wavelength plot)."""
    err = ((recon.float() - target.float()) ** 2) * voxel_mask
    return err.sum(dim=(0, 2, 3)) / voxel_mask.sum(dim=(0, 2, 3)).clamp_min(1)
