"""Model: patchify round trip, masking fraction and order, variants' parameter counts vs the seed's table."""

from __future__ import annotations

import pytest
import torch

from spectral_mae.model import TABLE_PARAMS, VARIANTS, build_model, count_parameters


def small_model(**kw):
    args = dict(img_size=20, patch_size=(5, 5), in_chans=10, embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75)
    return build_model(**{**args, **kw})


def test_patchify_unpatchify_round_trip_and_layout():
    model = small_model()
    imgs = torch.randn(3, 10, 20, 20)
    tokens = model.patchify(imgs)
    assert tokens.shape == (3, 2 * 4 * 4, 5 * 5 * 5)
    assert torch.equal(model.unpatchify(tokens), imgs)
    # Token (group 1, row 2, col 3) holds bands 5..9 of pixels [10:15, 15:20], values ordered (band, y, x).
    token = tokens[:, 1 * 16 + 2 * 4 + 3]
    assert torch.equal(token, imgs[:, 5:10, 10:15, 15:20].reshape(3, -1))


def test_seed_geometry_gives_2400_tokens():
    with torch.device("meta"):
        model = build_model("mae_tiny")
    assert model.num_patches == 2400 and model.patch_dim == 25 * 25 * 5


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.8])
def test_random_masking_keeps_exact_fraction_and_restores_order(ratio):
    model = small_model()
    x = torch.arange(2 * 32, dtype=torch.float32).reshape(2, 32, 1).expand(-1, -1, 4).contiguous()
    kept, mask, ids_restore, ids_keep = model.random_masking(x, ratio, torch.rand(2, 32))
    keep = int(32 * (1 - ratio))
    assert kept.shape == (2, keep, 4)
    assert torch.equal(mask.sum(1), torch.full((2,), 32.0 - keep))
    # The kept tokens are exactly the unmasked ones, and ids_restore undoes the shuffle.
    for b in range(2):
        assert torch.equal(kept[b, :, 0].sort().values, x[b, mask[b] == 0, 0].sort().values)
        shuffled = torch.cat([kept[b], torch.full((32 - keep, 4), -1.0)])
        restored = shuffled[ids_restore[b]]
        assert torch.equal(restored[mask[b] == 0], x[b, mask[b] == 0])


def test_mask_follows_noise_and_forward_shapes():
    model = small_model()
    imgs = torch.randn(2, 10, 20, 20)
    noise = torch.rand(2, 32)
    pred, mask = model(imgs, noise)
    pred2, mask2 = model(imgs, noise)
    assert pred.shape == (2, 32, 125) and torch.equal(mask, mask2) and torch.allclose(pred, pred2)
    # The smallest-noise tokens are the visible ones.
    visible = noise.argsort(1)[:, : int(32 * 0.25)]
    assert (mask.gather(1, visible) == 0).all()
    recon = model.reconstruct(imgs, pred, mask)
    voxel = model.mask_to_cube(mask)
    assert torch.equal(recon[voxel == 0], imgs[voxel == 0])


def test_encoder_sees_only_visible_tokens():
    model = small_model()
    latent, mask, _ = model.forward_encoder(torch.randn(2, 10, 20, 20), 0.75)
    assert latent.shape == (2, 8, 32)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_parameter_count_matches_table_order_of_magnitude(name):
    with torch.device("meta"):  # no memory for the 600M-parameter variant
        model = build_model(name)
    ratio = count_parameters(model) / TABLE_PARAMS[name]
    assert 0.5 < ratio < 2.0, f"{name}: {count_parameters(model):,} parameters vs table {TABLE_PARAMS[name]:,.0f}"
    arch = VARIANTS[name]
    assert len(model.blocks) == arch.encoder_depth and model.blocks[0].attn.num_heads == arch.encoder_num_heads
    assert len(model.decoder_blocks) == arch.decoder_depth
