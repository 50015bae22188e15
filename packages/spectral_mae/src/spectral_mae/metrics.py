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

from spectral_mae.config import METRIC_NAMES


@torch.no_grad()
def reconstruction_metrics(
    recon: torch.Tensor,
    target: torch.Tensor,
    voxel_mask: torch.Tensor,
    names: tuple[str, ...] | list[str] = METRIC_NAMES,
) -> dict[str, float]:
    """recon, target, voxel_mask: (B, C, H, W); voxel_mask 1 where the model had to predict.

    recon_mse: over the hidden voxels only (the visible ones are copied from the input);
    sam_deg: mean spectral angle in degrees over all pixels; psnr (dB) and ssim over the whole cube.
    Only `names` are computed (config `metric.names`: SSIM is the costly one on large cubes).
    """
    recon, target, voxel_mask = recon.float(), target.float(), voxel_mask.float()
    per_sample: dict[str, list[float]] = {name: [] for name in names}
    for rec, tgt, msk in zip(recon, target, voxel_mask, strict=True):
        rec, tgt = rec.unsqueeze(0), tgt.unsqueeze(0)  # (1, C, H, W)
        data_range = float(tgt.max() - tgt.min()) or 1.0
        for name in names:
            if name == "recon_mse":
                value = float((((rec[0] - tgt[0]) ** 2) * msk).sum() / msk.sum().clamp_min(1))
            elif name == "sam_deg":
                value = math.degrees(float(spectral_angle_mapper(rec, tgt)))
            elif name == "psnr":
                value = float(peak_signal_noise_ratio(rec, tgt, data_range=data_range))
            else:
                value = float(structural_similarity_index_measure(rec, tgt, data_range=data_range))
            per_sample[name].append(value)
    return {name: sum(values) / len(values) for name, values in per_sample.items()}


@torch.no_grad()
def spectral_angle_accuracy(recon: torch.Tensor, target: torch.Tensor, threshold_deg: float) -> float:
    """Share of pixels whose reconstructed spectrum is within `threshold_deg` of the original's, (B, C, H, W)
    each; the mean over samples of each sample's share (so DDP shards average to the single-process value)."""
    cosine = torch.nn.functional.cosine_similarity(
        recon.float(), target.float(), dim=1, eps=1e-8
    )  # (B, H, W)
    angle_deg = torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))
    return float((angle_deg <= threshold_deg).float().mean(dim=(1, 2)).mean())


def mse_per_band(recon: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (C,): MSE per band over hidden voxels (for the per-wavelength plot)."""
    err = ((recon.float() - target.float()) ** 2) * voxel_mask
    return err.sum(dim=(0, 2, 3)) / voxel_mask.sum(dim=(0, 2, 3)).clamp_min(1)
