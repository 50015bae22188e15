"""Decoder block with divided spatial-spectral attention (TimeSformer's divided space-time attention, with the
spectral groups in the role of time frames), built from timm's `Attention` and `Block`.

Tokens come in (group, row, column) order, (B, L, D) with L = G * S (G spectral groups, S = g * g locations).
Each block
  1. spectral attention: every location attends across its G spectral groups (B * S sequences of length G);
  2. spatial attention: every spectral group attends across its S locations (B * G sequences of length S);
  3. the MLP.
Against joint attention over all L tokens this computes G x fewer attention scores per spatial stage (the
spectral stage is tiny), and it gives a hidden token a one-hop path to the visible tokens of the other spectral
groups at its own location, which is where most of a hyperspectral patch's information is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn


class SplitQKVAttention(Attention):
    """timm's `Attention` (same parameters, same names, same arithmetic) with q, k, v cut from the fused qkv
    projection by slicing its last axis instead of timm's permute-then-unbind.

    The forward views are identical; the backward is not. Unbinding a permuted tensor makes autograd stack
    the three gradients into a (3, B, heads, N, head_dim) tensor and then copy that back into the projection's
    (B, N, 3 * dim) layout, two strided copies per attention. Slicing the last axis lets autograd write each
    gradient, which the fused attention kernel already returns token-major, into its third of that layout in
    one contiguous copy. On the divided decoder of mae_base (16 attentions over 2400 tokens per step) this
    was the largest cost outside the matmuls and the attention kernels.
    """

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if not self.fused_attn:  # timm's explicit-softmax path (TIMM_FUSED_ATTN=0): left as timm has it
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = (  # each (B, heads, N, head_dim), a view of the (B, N, 3 * dim) projection
            part.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for part in self.qkv(x).split(self.attn_dim, dim=-1)
        )
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
        )
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class DividedSpatialSpectralBlock(nn.Module):
    """Pre-norm residual block: x += SpectralAttn(LN(x)); then a timm `Block` (spatial attention + MLP) per group."""

    def __init__(self, dim: int, num_heads: int, groups: int, locations: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.groups, self.locations = groups, locations  # G, S
        self.norm_spectral = nn.LayerNorm(dim)
        self.attn_spectral = SplitQKVAttention(dim, num_heads, qkv_bias=True)
        # attention over S, then the MLP
        self.spatial = Block(dim, num_heads, mlp_ratio, qkv_bias=True, attn_layer=SplitQKVAttention)

    def spectral_stage(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D): residual attention across the spectral groups of each location only."""
        b, length, dim = x.shape
        g, s = self.groups, self.locations
        y = (
            x.reshape(b, g, s, dim).transpose(1, 2).reshape(b * s, g, dim)
        )  # (B*S, G, D): one sequence per location
        y = y + self.attn_spectral(self.norm_spectral(y))
        return (
            y.reshape(b, s, g, dim).transpose(1, 2).reshape(b, length, dim)
        )  # back to (group, row, col) order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        if length != self.groups * self.locations:
            raise ValueError(f"expected {self.groups} x {self.locations} tokens, got {length}")
        x = self.spectral_stage(x)  # (B, L, D)
        x = self.spatial(
            x.reshape(b * self.groups, self.locations, dim)
        )  # (B*G, S, D): one sequence per group
        return x.reshape(b, length, dim)
