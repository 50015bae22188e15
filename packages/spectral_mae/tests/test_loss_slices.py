"""MAESpectralLoss reduces and writes its (B, L, t*p*p) tensors in slices of tokens: the parts and the
gradient are those of the whole-tensor computation it replaced, for any slice size."""

from __future__ import annotations

import pytest
import torch

from spectral_mae import losses
from spectral_mae.losses import MAESpectralLoss


def whole_tensor_reductions(pred, target, groups, bands):
    """The loss's per-token and per-pixel reductions as written before slicing: whole-tensor passes."""
    b, length, dim = pred.shape
    sites, pixels = length // groups, dim // bands
    sse = torch.linalg.vector_norm(pred - target, dim=-1).square()
    mean_p = pred.mean(-1)
    var_p = torch.linalg.vector_norm(pred - mean_p.unsqueeze(-1), dim=-1).square() / dim
    var_t = torch.linalg.vector_norm(target - target.mean(-1, keepdim=True), dim=-1).square() / dim
    pv, tv = pred.view(b, groups, sites, bands, pixels), target.view(b, groups, sites, bands, pixels)
    sums = [(x * y).sum(3).reshape(b, length, pixels) for x, y in ((pv, tv), (pv, pv), (tv, tv))]
    return (sse, var_p, mean_p, var_t), tuple(sums)


@pytest.mark.parametrize("tokens_per_slice", [1, 5, 1000])  # one token, a ragged last slice, one slice
def test_sliced_loss_equals_whole_tensor_loss_in_parts_and_gradient(monkeypatch, tokens_per_slice):
    torch.manual_seed(4)
    groups, bands, sites, pixels = 3, 2, 4, 5  # L = 12 tokens of 10 values; 24 tokens in all
    target = torch.randn(2, groups * sites, bands * pixels)
    pred = (target + 2 * torch.randn_like(target)).requires_grad_(True)  # some out of range: all four terms
    mask = (torch.rand(2, groups * sites) < 0.6).float()
    loss = MAESpectralLoss(
        groups, bands, mse_weight=1.0, sam_weight=0.5, variance_weight=0.3, range_penalty_weight=0.2
    )
    monkeypatch.setattr(losses, "TOKENS_PER_SLICE", 10_000)  # every tensor in one slice: whole-tensor passes
    whole = loss(pred, target, mask)
    (whole_grad,) = torch.autograd.grad(whole["loss"], pred)
    per_token, per_pixel = losses._token_stats(pred.detach(), target, bands)

    monkeypatch.setattr(losses, "TOKENS_PER_SLICE", tokens_per_slice)
    sliced = loss(pred, target, mask)
    (sliced_grad,) = torch.autograd.grad(sliced["loss"], pred)
    assert whole["range_penalty"] > 0
    for name in whole:
        torch.testing.assert_close(sliced[name], whole[name], rtol=1e-6, atol=0, msg=name)
    torch.testing.assert_close(sliced_grad, whole_grad, rtol=1e-6, atol=1e-9)

    # and the one-slice reductions are those of the code before slicing
    ref_token, ref_pixel = whole_tensor_reductions(pred.detach(), target, groups, bands)
    for got, ref in zip(per_token + per_pixel, ref_token + ref_pixel, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
