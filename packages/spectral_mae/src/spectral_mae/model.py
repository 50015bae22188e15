"""Masked-autoencoder ViT over spatial-spectral 3D patches, after facebookresearch/mae's models_mae.py.

A cube (B, C, H, W) is cut into tokens of p x p pixels x t bands: L = (C / t) * (H / p) * (W / p) tokens
(500x500x30 with p=25, t=5: 6 * 20 * 20 = 2400), ordered (spectral group, row, column). A random
`mask_ratio` of them is hidden; the encoder (timm `Block`s, fused scaled-dot-product attention) sees only the
visible tokens; a lighter decoder gets the encoded tokens plus a shared mask token in every hidden slot and
predicts every token's t*p*p values. The loss (losses.MAESpectralLoss) is taken on the hidden tokens.
The decoder's blocks attend either jointly over all L tokens (MAE) or divided: across the spectral groups of
each location, then across the locations of each group (blocks.py, `decoder_attention`).

Position embeddings are the sum of a fixed 2D sin-cos table over (row, column) (as in MAE) and a learned
embedding per spectral group: spectral groups are few and not translation-like, so they get their own vector.
There is no class token: the model is trained for reconstruction, and no head reads one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from spectral_mae.blocks import DividedSpatialSpectralBlock

# Decoder attention patterns: "divided" = spectral then spatial attention per block (blocks.py), "joint" =
# MAE's plain decoder attending over all tokens at once.
DECODER_ATTENTION = ("divided", "joint")


@dataclass(frozen=True)
class MAEArch:
    """Architecture of one variant (the VARIANTS table)."""

    embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int


# The variant table: encoder layers/heads/width and decoder layers/heads. The reference table the parameter
# counts below come from gives no decoder widths; they follow MAE's "lightweight decoder" rule (narrower than the encoder) and are divisible by the head count.
VARIANTS: dict[str, MAEArch] = {
    "mae_tiny": MAEArch(192, 12, 3, 96, 8, 3),
    "mae_small": MAEArch(384, 12, 6, 192, 8, 6),
    "mae_base": MAEArch(768, 12, 12, 384, 8, 12),
    "mae_medium": MAEArch(512, 16, 16, 256, 8, 8),  # configs/model/mae_medium.yaml: decoder 256 wide, 8 heads
    "mae_large": MAEArch(1024, 24, 16, 512, 8, 16),
    "mae_huge": MAEArch(1280, 32, 16, 512, 8, 16),
}
# Reference parameter counts of the variants (order of magnitude; tested).
TABLE_PARAMS = {
    "mae_tiny": 5e6,
    "mae_small": 22e6,
    "mae_base": 75e6,
    "mae_medium": 86e6,
    "mae_large": 307e6,
    "mae_huge": 632e6,
}


class MaskedAutoencoderSpectral(nn.Module):
    def __init__(
        self,
        img_size: int = 500,
        patch_size: tuple[int, int] = (25, 5),
        in_chans: int = 30,
        embed_dim: int = 512,
        encoder_depth: int = 16,
        encoder_num_heads: int = 16,
        decoder_embed_dim: int = 256,
        decoder_depth: int = 8,
        decoder_num_heads: int = 8,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.8,
        decoder_attention: str = "divided",
    ):
        super().__init__()
        spatial, spectral = patch_size
        if img_size % spatial or in_chans % spectral:
            raise ValueError(f"img_size {img_size} / in_chans {in_chans} not divisible by patch {patch_size}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if decoder_attention not in DECODER_ATTENTION:
            raise ValueError(
                f"decoder_attention must be one of {DECODER_ATTENTION}, got {decoder_attention!r}"
            )
        self.decoder_attention = decoder_attention
        self.img_size, self.in_chans, self.mask_ratio = img_size, in_chans, mask_ratio
        self.p, self.t = spatial, spectral
        self.grid = img_size // spatial  # patches per side
        self.groups = in_chans // spectral  # spectral groups
        self.num_patches = self.groups * self.grid * self.grid  # L
        self.patch_dim = spectral * spatial * spatial  # values per token, t*p*p

        # Encoder. The patch embedding is a Linear on patchified tokens (equal to MAE's strided Conv3d),
        # applied after masking so that only the visible ~20% of tokens pay for it.
        self.patch_embed = nn.Linear(self.patch_dim, embed_dim)
        self.register_buffer("pos_spatial", self._sincos(embed_dim), persistent=False)  # (1, 1, g*g, D)
        self.pos_spectral = nn.Parameter(torch.zeros(1, self.groups, 1, embed_dim))
        self.blocks = nn.ModuleList(
            [Block(embed_dim, encoder_num_heads, mlp_ratio, qkv_bias=True) for _ in range(encoder_depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)

        # Decoder.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_spatial", self._sincos(decoder_embed_dim), persistent=False)
        self.decoder_pos_spectral = nn.Parameter(torch.zeros(1, self.groups, 1, decoder_embed_dim))
        if decoder_attention == "joint":  # MAE's decoder: every block attends over all L tokens
            blocks = [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True)
                for _ in range(decoder_depth)
            ]
        else:  # spectral groups of a location, then locations of a group (blocks.py)
            blocks = [
                DividedSpatialSpectralBlock(
                    decoder_embed_dim, decoder_num_heads, self.groups, self.grid * self.grid, mlp_ratio
                )
                for _ in range(decoder_depth)
            ]
        self.decoder_blocks = nn.ModuleList(blocks)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_dim)
        self.initialize_weights()

    def _sincos(self, dim: int) -> torch.Tensor:
        return build_sincos2d_pos_embed([self.grid, self.grid], dim).reshape(1, 1, self.grid * self.grid, dim)

    def initialize_weights(self) -> None:
        # As MAE: xavier-uniform linears, zero biases, unit LayerNorms, small normal tokens/embeddings.
        for tensor in (self.pos_spectral, self.decoder_pos_spectral, self.mask_token):
            nn.init.normal_(tensor, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def pos_embed(self, decoder: bool = False) -> torch.Tensor:
        """(1, L, D): spatial sin-cos + spectral embedding, broadcast over (group, row, column) order."""
        spatial = self.decoder_pos_spatial if decoder else self.pos_spatial  # (1, 1, g*g, D)
        spectral = self.decoder_pos_spectral if decoder else self.pos_spectral  # (1, G, 1, D)
        return (spatial + spectral).flatten(1, 2)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, t*p*p); token order (group, row, col), values order (band, y, x)."""
        b, g, n, p, t = imgs.shape[0], self.groups, self.grid, self.p, self.t
        x = imgs.reshape(b, g, t, n, p, n, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, G, n, n, t, p, p)
        return x.reshape(b, g * n * n, t * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, t*p*p) -> (B, C, H, W); inverse of patchify."""
        b, g, n, p, t = x.shape[0], self.groups, self.grid, self.p, self.t
        x = x.reshape(b, g, n, n, t, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, G, t, n, p, n, p)
        return x.reshape(b, g * t, n * p, n * p)

    def mask_to_cube(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token mask -> (B, C, H, W) voxel mask (1 = hidden)."""
        return self.unpatchify(mask.unsqueeze(-1).expand(-1, -1, self.patch_dim))

    def masking_indices(
        self, b: int, length: int, mask_ratio: float, noise: torch.Tensor | None, device: torch.device
    ):
        """Which of `length` tokens to keep, by sorting per-sample noise (MAE's argsort trick).

        noise: (B, L) in [0, 1) or None (drawn from torch's RNG); the smallest `keep` are kept.
        Returns mask (B, L) with 0 = kept / 1 = hidden, ids_restore (B, L) and ids_keep (B, K),
        K = int(L * (1 - mask_ratio)).
        """
        keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, length, device=device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest `keep` are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, length, device=device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to token order
        return mask, ids_restore, ids_shuffle[:, :keep]

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random (1 - mask_ratio) of the tokens x (B, L, D), chosen by masking_indices.

        Returns x_kept (B, K, D), mask (B, L) with 0 = kept / 1 = hidden, ids_restore (B, L), ids_keep (B, K).
        """
        b, length, dim = x.shape
        mask, ids_restore, ids_keep = self.masking_indices(b, length, mask_ratio, noise, x.device)
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        return x_kept, mask, ids_restore, ids_keep

    def patchify_tokens(self, imgs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), token indices (B, K) -> (B, K, t*p*p): the rows `ids` of patchify(imgs).

        Indexes the cube through a patch-grid view, so the encoder copies only its visible ~20% of the voxels,
        once, instead of rearranging the whole cube into tokens and then gathering from that copy.
        """
        b, n = imgs.shape[0], self.grid
        grid = imgs.reshape(b, self.groups, self.t, n, self.p, n, self.p).permute(0, 1, 3, 5, 2, 4, 6)
        group, site = ids.div(n * n, rounding_mode="floor"), ids.remainder(n * n)  # (B, K) each
        sample = torch.arange(b, device=ids.device).unsqueeze(1)  # (B, 1)
        tokens = grid[sample, group, site.div(n, rounding_mode="floor"), site.remainder(n)]  # (B, K, t, p, p)
        return tokens.reshape(b, ids.shape[1], self.patch_dim)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """imgs (B, C, H, W) -> latent (B, K, D), mask (B, L), ids_restore (B, L)."""
        b = imgs.shape[0]
        mask, ids_restore, ids_keep = self.masking_indices(
            b, self.num_patches, mask_ratio, noise, imgs.device
        )
        kept = self.patchify_tokens(imgs, ids_keep)  # (B, K, t*p*p)
        pos = self.pos_embed().expand(b, -1, -1)  # (B, L, D)
        pos = torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))  # (B, K, D)
        x = self.patch_embed(kept) + pos  # (B, K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Every token encoded, none hidden: imgs (B, C, H, W) -> (B, L, D) in token order (group, row, col).

        The embeddings `spectral_mae.embed` writes. Increasing noise makes random_masking keep every token in
        its own order, so this is exactly the trained encoder's path.
        """
        b, length = imgs.shape[0], self.num_patches
        in_order = torch.arange(length, device=imgs.device, dtype=torch.float32).expand(b, length)
        latent, _, _ = self.forward_encoder(imgs, 0.0, in_order)
        return latent

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, K, D) -> prediction (B, L, t*p*p) for every token."""
        x = self.decoder_embed(latent)  # (B, K, Dd)
        b, kept, dim = x.shape
        mask_tokens = self.mask_token.expand(b, ids_restore.shape[1] - kept, -1)  # (B, L-K, Dd)
        x = torch.cat([x, mask_tokens], dim=1)  # (B, L, Dd) in shuffled order
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle to token order
        x = x + self.pos_embed(decoder=True)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))  # (B, L, t*p*p)

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None):
        """imgs (B, C, H, W) -> pred (B, L, t*p*p), mask (B, L). The loss lives in losses.MAESpectralLoss."""
        latent, mask, ids_restore = self.forward_encoder(
            imgs, self.mask_ratio if mask_ratio is None else mask_ratio, noise
        )
        return self.forward_decoder(latent, ids_restore), mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visible tokens from the input, hidden ones from the prediction: (B, C, H, W)."""
        voxel_mask = self.mask_to_cube(mask)  # (B, C, H, W)
        return imgs * (1 - voxel_mask) + self.unpatchify(pred) * voxel_mask


def build_model(variant: str | None = None, **overrides) -> MaskedAutoencoderSpectral:
    """A named variant (VARIANTS) with any constructor argument overridden, or a fully explicit model."""
    arch = dict(VARIANTS[variant].__dict__) if variant else {}
    arch.update(overrides)
    return MaskedAutoencoderSpectral(**arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
