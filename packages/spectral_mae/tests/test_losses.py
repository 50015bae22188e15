"""MAESpectralLoss components against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spectral_mae.losses import MAESpectralLoss, spectral_angle, tokens_to_pixel_spectra
from spectral_mae.model import build_model


def make_loss(**weights):
    return MAESpectralLoss(groups=2, bands_per_token=1, **weights)


def test_pixel_spectra_match_unpatchify():
    model = build_model(img_size=4, patch_size=(2, 2), in_chans=4, embed_dim=8, encoder_depth=1,
                        encoder_num_heads=1, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=1)
    imgs = torch.randn(2, 4, 4, 4)
    spectra = tokens_to_pixel_spectra(model.patchify(imgs), model.groups, model.t)  # (B, N, C)
    assert torch.equal(spectra.sort(1).values, imgs.flatten(2).transpose(1, 2).sort(1).values)
    # and pixel by pixel: each row is one pixel's full spectrum
    assert any(torch.equal(spectra[0, i], imgs[0, :, 0, 0]) for i in range(16))


def test_mse_only_counts_masked_tokens():
    # 2 groups x 1 site, tokens of 1 band x 2 pixels: L = 2, token dim = 2.
    target = torch.zeros(1, 2, 2)
    pred = torch.tensor([[[1.0, 3.0], [10.0, 10.0]]])
    mask = torch.tensor([[1.0, 0.0]])
    parts = make_loss()(pred, target, mask)
    assert parts["mse"].item() == pytest.approx((1 + 9) / 2)


def test_sam_is_the_angle_of_the_mixed_spectrum():
    # Pixel spectra (2 bands): target [1, 0]; prediction of the hidden group 0 token = 0, group 1 visible.
    target = torch.tensor([[[1.0], [1.0]]])  # (B=1, L=2 tokens: group 0 and 1 at one site, 1 pixel each)
    pred = torch.tensor([[[0.0], [5.0]]])
    mask = torch.tensor([[1.0, 0.0]])  # group 0 hidden -> reconstructed spectrum [0, 1] (group 1 from target)
    parts = make_loss()(pred, target, mask)
    # angle between [0, 1] and [1, 1] is 45 degrees
    assert parts["sam"].item() == pytest.approx(math.pi / 4, abs=1e-4)
    assert spectral_angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(math.pi / 2,
                                                                                                        abs=1e-3)


def test_variance_and_range_penalty():
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])  # token stds: 1 and 0; sample range [0, 2]
    pred = torch.tensor([[[3.0, 3.0], [-1.0, 1.0]]])  # stds 0 and 1; excursions: 1 above, 1 below
    mask = torch.tensor([[1.0, 1.0]])
    parts = make_loss()(pred, target, mask)
    assert parts["variance"].item() == pytest.approx((1 + 1) / 2)
    # token 0: ((3-2)^2 + (3-2)^2) / 2 = 1; token 1: ((0-(-1))^2 + 0) / 2 = 0.5 -> mean 0.75
    assert parts["range_penalty"].item() == pytest.approx(0.75)


def test_total_is_the_weighted_sum():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0]])
    weights = dict(mse_weight=0.5, sam_weight=0.2, variance_weight=0.3, range_penalty_weight=0.4)
    loss = MAESpectralLoss(groups=2, bands_per_token=3, **weights)
    parts = loss(pred, target, mask)
    expected = sum(w * parts[name.removesuffix("_weight")] for name, w in weights.items())
    assert parts["loss"].item() == pytest.approx(expected.item())
    parts["loss"].backward() if parts["loss"].requires_grad else None
    assert all(torch.isfinite(v) for v in parts.values())


def test_loss_gradient_is_finite_for_perfect_prediction():
    target = torch.randn(1, 4, 6)
    pred = target.clone().requires_grad_(True)
    parts = MAESpectralLoss(groups=2, bands_per_token=3)(pred, target, torch.ones(1, 4))
    parts["loss"].backward()
    assert torch.isfinite(pred.grad).all()
