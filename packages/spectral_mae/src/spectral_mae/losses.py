"""MAESpectralLoss: masked reconstruction MSE + spectral angle + variance + range penalty, each returned.

All terms are means over equal-sized per-sample sets (every sample hides the same number of tokens), so a
batch mean equals the mean of per-rank means in DDP, and the DDP gradient equals the single-process one.
"""

from __future__ import annotations

import torch
from torch import nn


def tokens_to_pixel_spectra(x: torch.Tensor, groups: int, bands_per_token: int) -> torch.Tensor:
    """(B, L, t*p*p) tokens in (group, row, col) order -> (B, N_pix, C) per-pixel spectra, C = groups*t."""
    b, length, dim = x.shape
    sites = length // groups  # spatial patch positions
    pixels = dim // bands_per_token  # p*p pixels per token
    x = x.reshape(b, groups, sites, bands_per_token, pixels)
    return x.permute(0, 2, 4, 1, 3).reshape(b, sites * pixels, groups * bands_per_token)


def spectral_angle(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Angle in radians between spectra along the last axis.

    Written here rather than torchmetrics' SAM because this one is a training loss: torchmetrics divides by
    the raw norms (NaN for an all-zero spectrum) and acos has an infinite gradient at cos = +-1; the eps and
    the clamp keep the gradient finite.
    """
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))


class MAESpectralLoss(nn.Module):
    """Loss on the hidden tokens of a spatial-spectral MAE.

    pred, target: (B, L, t*p*p) tokens (model.patchify layout); mask: (B, L), 1 = hidden.
    - mse: mean squared error over the hidden tokens' values.
    - sam: mean spectral angle (radians) between the target spectrum and the reconstructed one (visible
      groups from the target, hidden ones from the prediction) over pixels with at least one hidden group
      (mean per sample, then over samples).
    - variance: mean |std(pred) - std(target)| over hidden tokens; MSE alone favours blurry, flat patches.
    - range_penalty: mean squared excursion of hidden predictions outside the sample's target [min, max].
    """

    def __init__(self, groups: int, bands_per_token: int, mse_weight: float = 1.0, sam_weight: float = 0.1,
                 variance_weight: float = 0.01, range_penalty_weight: float = 0.001):
        super().__init__()
        self.groups, self.bands_per_token = groups, bands_per_token
        self.weights = {"mse": mse_weight, "sam": sam_weight, "variance": variance_weight,
                        "range_penalty": range_penalty_weight}

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, mask = pred.float(), mask.float()  # AMP: reduce in float32
        hidden = mask.sum()
        parts = {
            "mse": (((pred - target) ** 2).mean(-1) * mask).sum() / hidden,
            "sam": self._sam(pred, target, mask),
            "variance": ((pred.std(-1, correction=0) - target.std(-1, correction=0)).abs() * mask).sum() / hidden,
            "range_penalty": self._range_penalty(pred, target, mask),
        }
        parts["loss"] = sum(self.weights[name] * value for name, value in parts.items())
        return parts

    def _sam(self, pred, target, mask):
        mixed = torch.where(mask.bool().unsqueeze(-1), pred, target)  # (B, L, t*p*p)
        spectra_pred = tokens_to_pixel_spectra(mixed, self.groups, self.bands_per_token)  # (B, N, C)
        spectra_true = tokens_to_pixel_spectra(target, self.groups, self.bands_per_token)
        # A pixel counts when any of its spectral groups was hidden: (B, G, sites) -> (B, sites) -> (B, N).
        b, length = mask.shape
        pixels_per_site = spectra_pred.shape[1] // (length // self.groups)
        counted = mask.reshape(b, self.groups, -1).amax(1).repeat_interleave(pixels_per_site, dim=1)
        angles = spectral_angle(spectra_pred, spectra_true)  # (B, N)
        # Mean per sample, then over the batch, so that per-rank means average to the global mean in DDP.
        return ((angles * counted).sum(1) / counted.sum(1).clamp_min(1)).mean()

    @staticmethod
    def _range_penalty(pred, target, mask):
        lo = target.amin(dim=(1, 2), keepdim=True)  # (B, 1, 1): per sample, so DDP shards agree
        hi = target.amax(dim=(1, 2), keepdim=True)
        excess = torch.relu(pred - hi) ** 2 + torch.relu(lo - pred) ** 2  # (B, L, t*p*p)
        return (excess.mean(-1) * mask).sum() / mask.sum()
