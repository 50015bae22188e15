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
    model = build_model(
        img_size=4,
        patch_size=(2, 2),
        in_chans=4,
        embed_dim=8,
        encoder_depth=1,
        encoder_num_heads=1,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=1,
    )
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
    assert spectral_angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(
        math.pi / 2, abs=1e-3
    )


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


def reference_parts(pred, target, mask, groups, bands_per_token):
    """The loss written the plain way (pixel spectra materialised, relu excursions), as the oracle for the
    pass-saving formulation in MAESpectralLoss."""
    hidden = mask.sum()
    mixed = torch.where(mask.bool().unsqueeze(-1), pred, target)
    angles = spectral_angle(
        tokens_to_pixel_spectra(mixed, groups, bands_per_token),
        tokens_to_pixel_spectra(target, groups, bands_per_token),
    )  # (B, N)
    b, length = mask.shape
    pixels_per_site = angles.shape[1] // (length // groups)
    counted = mask.reshape(b, groups, -1).amax(1).repeat_interleave(pixels_per_site, dim=1)
    lo, hi = target.amin(dim=(1, 2), keepdim=True), target.amax(dim=(1, 2), keepdim=True)
    excess = torch.relu(pred - hi) ** 2 + torch.relu(lo - pred) ** 2
    return {
        "mse": (((pred - target) ** 2).mean(-1) * mask).sum() / hidden,
        "sam": ((angles * counted).sum(1) / counted.sum(1).clamp_min(1)).mean(),
        "variance": ((pred.std(-1, correction=0) - target.std(-1, correction=0)).abs() * mask).sum() / hidden,
        "range_penalty": (excess.mean(-1) * mask).sum() / hidden,
    }


def test_loss_matches_plain_formulation_in_value_and_gradient():
    torch.manual_seed(1)
    groups, bands, sites, pixels = 3, 2, 4, 5  # tokens of 2 bands x 5 pixels; L = 12
    target = torch.randn(2, groups * sites, bands * pixels)
    pred = (target + 2 * torch.randn_like(target)).requires_grad_(True)  # some predictions out of range
    mask = (torch.rand(2, groups * sites) < 0.6).float()
    mask[:, :sites] = 0  # group 0 all visible, so some pixels have hidden groups and some do not count
    weights = dict(mse_weight=1.0, sam_weight=0.5, variance_weight=0.3, range_penalty_weight=0.2)
    parts = MAESpectralLoss(groups, bands, **weights)(pred, target, mask)
    (grad,) = torch.autograd.grad(parts["loss"], pred)
    ref = reference_parts(pred, target, mask, groups, bands)
    for name in ref:
        assert parts[name].item() == pytest.approx(ref[name].item(), rel=1e-5), name
    ref_total = sum(w * ref[name.removesuffix("_weight")] for name, w in weights.items())
    (ref_grad,) = torch.autograd.grad(ref_total, pred)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("spread", [2.0, 0.0])  # predictions out of the target's range, and all inside it
def test_every_part_has_the_numerical_gradient(spread):
    torch.manual_seed(2)
    groups, bands, sites, pixels = 2, 3, 3, 2
    target = torch.randn(2, groups * sites, bands * pixels, dtype=torch.float64)
    pred = (0.5 * target + spread * torch.randn_like(target)).requires_grad_(True)
    mask = torch.tensor([[1.0, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float64)
    loss = MAESpectralLoss(
        groups, bands, mse_weight=1.0, sam_weight=0.5, variance_weight=0.3, range_penalty_weight=0.2
    )
    assert (loss(pred, target, mask)["range_penalty"] > 0).item() == (spread > 0)

    def parts(p):
        out = loss(p, target, mask)
        return torch.stack([out[name] for name in ("mse", "sam", "variance", "range_penalty", "loss")])

    assert torch.autograd.gradcheck(parts, (pred,), eps=1e-6, atol=1e-5)
