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


ANGLE_CLAMP = 1 - 1e-6  # acos is clamped to [-ANGLE_CLAMP, ANGLE_CLAMP]: finite gradient at cos = +-1
NORM_EPS = 1e-8  # added to the product of the spectra's norms


def spectral_angle(a: torch.Tensor, b: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Angle in radians between spectra along the last axis.

    Written here rather than torchmetrics' SAM because this one is a training loss: torchmetrics divides by
    the raw norms (NaN for an all-zero spectrum) and acos has an infinite gradient at cos = +-1; the eps and
    the clamp keep the gradient finite.
    """
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return torch.acos(cos.clamp(-ANGLE_CLAMP, ANGLE_CLAMP))


PARTS = ("mse", "sam", "variance", "range_penalty")


# The reductions below are the loss's hottest passes over (B, L, t*p*p) tokens; each is written the way that
# is fastest on CPU among equal formulations (torch's own var_mean / std, square().mean() and a product
# followed by a strided sum were 2.5-6x slower over 3125-value tokens).

# Tokens per slice in _token_stats and _gradient: 128 tokens of 3125 values are 1.6 MB, so a slice stays in
# cache for all its reductions and its temporary differences reuse one small allocation, where whole-batch
# passes write 60 MB tensors to fresh memory and read them back.
TOKENS_PER_SLICE = 128


def _var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance and mean over the last axis: the mean, then the centred sum of squares as one
    norm. Two passes are as exact as var_mean's Welford pass, which does not vectorise along the last axis."""
    mean = x.mean(-1)
    return _mean_square(x - mean.unsqueeze(-1)), mean


def _mean_square(x: torch.Tensor) -> torch.Tensor:
    """mean(x ** 2) over the last axis in one fused reduction, with no squared copy of x."""
    return torch.linalg.vector_norm(x, dim=-1).square() / x.shape[-1]


def _band_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, t, P) x 2 -> (N, P): sum over each token's t bands of a * b, one band at a time, so no full-size
    product is written and no sum runs along the strided band axis."""
    out = a[:, 0] * b[:, 0]
    for band in range(1, a.shape[1]):
        out.addcmul_(a[:, band], b[:, band])
    return out


def _token_stats(
    pred: torch.Tensor, target: torch.Tensor, bands: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Per token of pred, target (..., V), V = bands * P, in one pass over both in slices of tokens:
    - per token (...,): sum of squared errors, pred's variance and mean, target's variance;
    - per token and pixel (..., P): sums over the token's bands of pred * target, pred ** 2, target ** 2.

    Each token is reduced on its own, so slicing changes no result; it keeps each slice in cache for its
    seven reductions and the temporary differences (pred - target, pred - mean, target - mean) small.
    """
    dim = pred.shape[-1]
    pixels = dim // bands
    pred_rows, target_rows = pred.reshape(-1, dim), target.reshape(-1, dim)  # (N, V) views
    per_token = pred.new_empty(4, pred_rows.shape[0])  # sse, var_p, mean_p, var_t
    per_pixel = pred.new_empty(3, pred_rows.shape[0], pixels)  # pred.target, pred.pred, target.target
    for start in range(0, pred_rows.shape[0], TOKENS_PER_SLICE):
        rows = slice(start, start + TOKENS_PER_SLICE)
        p, t = pred_rows[rows], target_rows[rows]  # (n, V)
        token, pixel = per_token[:, rows], per_pixel[:, rows]
        token[0] = torch.linalg.vector_norm(p - t, dim=-1).square()
        token[1], token[2] = _var_mean(p)
        token[3] = _var_mean(t)[0]
        p, t = p.view(-1, bands, pixels), t.view(-1, bands, pixels)  # (n, t, P)
        pixel[0], pixel[1], pixel[2] = _band_dot(p, t), _band_dot(p, p), _band_dot(t, t)
    lead = pred.shape[:-1]
    return (
        tuple(row.view(lead) for row in per_token),
        tuple(row.view(*lead, pixels) for row in per_pixel),
    )


def _gradient(
    pred: torch.Tensor,
    target: torch.Tensor,
    bands: int,
    coef_pred: torch.Tensor,
    coef_target: torch.Tensor,
    offset: torch.Tensor,
    excess: torch.Tensor | None = None,
    coef_excess: torch.Tensor | None = None,
) -> torch.Tensor:
    """coef_pred * pred - coef_target * target - offset (+ coef_excess * excess), the loss's gradient, for
    pred, target, excess (..., V), V = bands * P; coefficients per token and pixel (..., 1, P), offset and
    coef_excess per token. Written slice by slice of tokens, so each product after the first adds to a
    slice still in cache; every value is the same as whole-tensor addcmuls."""
    dim = pred.shape[-1]
    pixels = dim // bands
    pred_rows, target_rows = pred.reshape(-1, bands, pixels), target.reshape(-1, bands, pixels)  # (N, t, P)
    coef_pred, coef_target = coef_pred.reshape(-1, 1, pixels), coef_target.reshape(-1, 1, pixels)
    neg_offset = -offset.reshape(-1, 1, 1)
    if excess is not None:
        excess, coef_excess = excess.reshape(-1, dim), coef_excess.reshape(-1, 1)
    grad = torch.empty_like(pred_rows)
    for start in range(0, grad.shape[0], TOKENS_PER_SLICE):
        rows = slice(start, start + TOKENS_PER_SLICE)
        out = grad[rows]
        torch.addcmul(neg_offset[rows], pred_rows[rows], coef_pred[rows], out=out)
        out.addcmul_(target_rows[rows], coef_target[rows], value=-1)
        if excess is not None:
            out.view(-1, dim).addcmul_(excess[rows], coef_excess[rows])
    return grad.view_as(pred)


class MAESpectralLoss(nn.Module):
    """Loss on the hidden tokens of a spatial-spectral MAE.

    pred, target: (B, L, t*p*p) tokens (model.patchify layout); mask: (B, L), 1 = hidden.
    - mse: mean squared error over the hidden tokens' values.
    - sam: mean spectral angle (radians) between the target spectrum and the reconstructed one (visible
      groups from the target, hidden ones from the prediction) over pixels with at least one hidden group
      (mean per sample, then over samples).
    - variance: mean |std(pred) - std(target)| over hidden tokens; MSE alone favours blurry, flat patches.
    - range_penalty: mean squared excursion of hidden predictions outside the sample's target [min, max].
    Returns {part: scalar, ..., "loss": weighted sum}; every entry is differentiable with respect to pred.
    """

    def __init__(
        self,
        groups: int,
        bands_per_token: int,
        mse_weight: float = 1.0,
        sam_weight: float = 0.1,
        variance_weight: float = 0.01,
        range_penalty_weight: float = 0.001,
    ):
        super().__init__()
        self.groups, self.bands_per_token = groups, bands_per_token
        self.weights = {
            "mse": mse_weight,
            "sam": sam_weight,
            "variance": variance_weight,
            "range_penalty": range_penalty_weight,
        }

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if pred.dtype in (torch.float16, torch.bfloat16):  # AMP: reduce in float32 (float64 stays float64)
            pred = pred.float()
        values = _FusedSpectralLoss.apply(
            pred,
            target.to(pred.dtype),
            mask.to(pred.dtype),
            self.groups,
            self.bands_per_token,
            tuple(self.weights[name] for name in PARTS),
        )  # (5,)
        *parts, total = values.unbind()
        return {**dict(zip(PARTS, parts, strict=True)), "loss": total}


class _FusedSpectralLoss(torch.autograd.Function):
    """The four parts and their weighted sum, forward and backward in few passes over the prediction.

    pred and target are the largest tensors of the training step ((B, L, t*p*p): 15M values each for two
    500x500x30 cubes), and autograd over the plain formulation (tests keep it as the oracle) made about 35
    element-wise passes over them, 14% of a mae_base step. Here the forward reduces each token and each
    (token, pixel) once, and the gradient, a per-token / per-pixel combination of pred and target,
        d/dpred = A * pred - C * target - E      (A, C: (B, G, S, 1, P); E: (B, G, S, 1, 1)),
    is written in two passes. Derivation, per hidden token l and pixel q (V values per token, H hidden tokens):
      mse:      2 (pred - target) / (V H)
      variance: sign(std_p - std_t) (pred - mean_p) / (V H std_p)
      sam:      dtheta/dcos * (target / n - dot * |t| * x / (|x| n^2)), n = |x| |t| + eps, x the mixed spectrum
      range:    2 (pred - clamp(pred, lo, hi)) / (V H), only computed when some prediction is out of range.
    """

    @staticmethod
    def forward(ctx, pred, target, mask, groups: int, bands: int, weights: tuple[float, ...]):
        with torch.autocast(pred.device.type, enabled=False):
            b, length, dim = pred.shape
            g, t = groups, bands
            s, pixels = length // g, dim // t
            hidden = mask.sum()
            (sse, var_p, mean_p, var_t), sums = _token_stats(pred, target, t)  # (B, L) each, (B, L, P) each
            mse = (sse * mask).sum() / (dim * hidden)

            std_p = var_p.sqrt()
            gap = std_p - var_t.sqrt()
            variance = (gap.abs() * mask).sum() / hidden

            lo = target.amin(dim=(1, 2), keepdim=True)  # (B, 1, 1): per sample, so DDP shards agree
            hi = target.amax(dim=(1, 2), keepdim=True)
            # Whole-sample extremes: two flat reductions are ~3x faster on CPU than aminmax per token.
            below, above = pred.amin(dim=(1, 2), keepdim=True) < lo, pred.amax(dim=(1, 2), keepdim=True) > hi
            excess = None
            if (below | above).any():
                excess = pred - pred.clamp(lo, hi)  # (B, L, V): 0 inside [lo, hi]
                range_penalty = (_mean_square(excess) * mask).sum() / hidden
            else:
                range_penalty = pred.new_zeros(())

            # Spectral angle per pixel without materialising pixel spectra: reduce each token over its t bands,
            # then pick prediction (hidden) or target (visible) per token and sum over the G groups.
            hid = mask.view(b, g, s, 1).bool()
            pt, pp, tt = (x.view(b, g, s, pixels) for x in sums)  # (B, G, S, P): sums over a token's bands
            dot = torch.where(hid, pt, tt).sum(1)  # (B, S, P): <x, target> per pixel
            norm_x = torch.where(hid, pp, tt).sum(1).sqrt()  # |x|, x the mixed (reconstructed) spectrum
            norm_t = tt.sum(1).sqrt()
            denom = norm_x * norm_t + NORM_EPS
            cos = dot / denom
            angles = torch.acos(cos.clamp(-ANGLE_CLAMP, ANGLE_CLAMP))
            counted = mask.view(b, g, s).amax(1).unsqueeze(-1)  # (B, S, 1): pixel has a hidden group
            per_sample = (counted.sum((1, 2)) * pixels).clamp_min(1)  # (B,)
            # Mean per sample, then over the batch, so that per-rank means average to the global mean in DDP.
            sam = ((angles * counted).sum((1, 2)) / per_sample).mean()

            parts = torch.stack([mse, sam, variance, range_penalty])
            values = torch.cat([parts, (parts * parts.new_tensor(weights)).sum().unsqueeze(0)])
        ctx.save_for_backward(
            pred,
            target,
            mask,
            std_p,
            gap,
            mean_p,
            dot,
            norm_x,
            norm_t,
            denom,
            cos,
            counted,
            per_sample,
            hidden,
            excess if excess is not None else pred.new_empty(0),
        )
        ctx.shape, ctx.weights = (b, g, s, t, pixels), weights
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values):
        (
            pred,
            target,
            mask,
            std_p,
            gap,
            mean_p,
            dot,
            norm_x,
            norm_t,
            denom,
            cos,
            counted,
            per_sample,
            hidden,
            excess,
        ) = ctx.saved_tensors
        b, g, s, t, pixels = ctx.shape
        dim = t * pixels
        # d(output)/d(part): the part's own gradient plus its weight in the total.
        w_mse, w_sam, w_var, w_range = (
            grad_values[i] + grad_values[4] * w for i, w in enumerate(ctx.weights)
        )
        with torch.autocast(pred.device.type, enabled=False):
            alpha = (w_mse * 2 / (dim * hidden)) * mask  # (B, L): coefficient of (pred - target)
            safe_std = torch.where(std_p > 0, std_p, torch.ones_like(std_p))
            beta = torch.where(std_p > 0, w_var * torch.sign(gap) / (hidden * dim * safe_std), 0.0) * mask
            inside = (cos >= -ANGLE_CLAMP) & (cos <= ANGLE_CLAMP)  # the clamp passes the gradient here only
            dtheta = torch.where(inside, -torch.rsqrt((1 - cos.square()).clamp_min(1e-12)), 0.0)  # (B, S, P)
            kappa = w_sam * dtheta * counted / (b * per_sample.view(b, 1, 1))
            gamma = kappa / denom  # coefficient of target
            safe_norm = torch.where(norm_x > 0, norm_x, torch.ones_like(norm_x))
            delta = torch.where(norm_x > 0, -kappa * dot * norm_t / (safe_norm * denom.square()), 0.0)  # of x

            h = mask.view(b, g, s, 1, 1)
            coef_pred = (alpha + beta).view(b, g, s, 1, 1) + h * delta.view(
                b, 1, s, 1, pixels
            )  # (B, G, S, 1, P)
            coef_target = alpha.view(b, g, s, 1, 1) - h * gamma.view(b, 1, s, 1, pixels)
            offset = (beta * mean_p).view(b, g, s, 1, 1)
            range_terms = (excess, (w_range * 2 / (dim * hidden)) * mask) if excess.numel() else ()
            grad = _gradient(pred, target, t, coef_pred, coef_target, offset, *range_terms)  # (B, L, V)
        return grad, None, None, None, None, None
