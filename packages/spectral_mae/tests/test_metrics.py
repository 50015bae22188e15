"""Reconstruction metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spectral_mae.metrics import mse_per_band, reconstruction_metrics


def test_psnr_mse_sam_hand_computed():
    target = torch.zeros(1, 3, 16, 16)
    target[:, 0] = 1.0  # every pixel's spectrum is [1, 0, 0]; data range 1
    recon = target.clone()
    recon[:, 1] = 0.1  # error 0.1 on band 1 everywhere -> MSE over the cube = 0.01 / 3
    mask = torch.zeros_like(target)
    mask[:, 1] = 1  # only band 1 hidden
    m = reconstruction_metrics(recon, target, mask)
    assert m["recon_mse"] == pytest.approx(0.01)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 / 3)), rel=1e-4)
    assert m["sam_deg"] == pytest.approx(math.degrees(math.atan(0.1)), rel=1e-4)


def test_identical_cubes_give_perfect_ssim_and_zero_angle():
    torch.manual_seed(0)
    target = torch.rand(2, 4, 16, 16) + 0.1
    m = reconstruction_metrics(target.clone(), target, torch.ones_like(target))
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["recon_mse"] == 0.0
    assert m["sam_deg"] == pytest.approx(0.0, abs=0.05)  # acos near 1 is sensitive to float32 rounding


def test_mse_per_band():
    target = torch.zeros(1, 2, 4, 4)
    recon = torch.ones(1, 2, 4, 4)
    recon[:, 1] = 2.0
    assert torch.allclose(mse_per_band(recon, target, torch.ones_like(target)), torch.tensor([1.0, 4.0]))
