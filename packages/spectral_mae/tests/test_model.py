"""Model: patchify round trip, masking fraction and order, variants' parameter counts vs the reference table."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

from spectral_mae.blocks import DividedSpatialSpectralBlock, SplitQKVAttention
from spectral_mae.model import DECODER_ATTENTION, TABLE_PARAMS, VARIANTS, build_model, count_parameters


def small_model(**kw):
    args = dict(
        img_size=20,
        patch_size=(5, 5),
        in_chans=10,
        embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mask_ratio=0.75,
    )
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


def test_default_geometry_gives_2400_tokens():
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


@pytest.mark.parametrize("decoder_attention", DECODER_ATTENTION)
def test_mask_follows_noise_and_forward_shapes(decoder_attention):
    model = small_model(decoder_attention=decoder_attention)
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


def encoder_before_direct_gather(model, imgs, mask_ratio, noise):
    """forward_encoder as it was before patchify_tokens: the whole cube patchified, then the kept tokens
    gathered from that copy."""
    kept, mask, ids_restore, ids_keep = model.random_masking(model.patchify(imgs), mask_ratio, noise)
    pos = model.pos_embed().expand(imgs.shape[0], -1, -1)
    x = model.patch_embed(kept) + pos.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
    for block in model.blocks:
        x = block(x)
    return model.norm(x), mask, ids_restore


def test_encoder_gathers_from_the_cube_exactly_as_patchify_then_gather():
    torch.manual_seed(3)
    model = small_model(in_chans=15, patch_size=(5, 3))  # 5 groups of 3 bands, 4 x 4 locations: L = 80
    imgs, noise = torch.randn(2, 15, 20, 20), torch.rand(2, 80)
    ids = torch.randint(0, 80, (2, 7))  # any indices, repeats included
    assert torch.equal(model.patchify_tokens(imgs, ids), model.patchify(imgs)[torch.arange(2)[:, None], ids])

    results = []
    for encoder in (model.forward_encoder, lambda *a: encoder_before_direct_gather(model, *a)):
        cube = imgs.clone().requires_grad_()  # gradients reach the cube through either gather
        latent, mask, ids_restore = encoder(cube, 0.75, noise)
        (latent * torch.linspace(-1, 1, latent.numel()).view_as(latent)).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}  # the encoder's
        results.append((latent.detach(), mask, ids_restore, cube.grad, grads))
        model.zero_grad(set_to_none=True)
    (latent, mask, ids_restore, grad, grads), (latent_ref, mask_ref, restore_ref, grad_ref, grads_ref) = (
        results
    )
    assert torch.equal(latent, latent_ref) and torch.equal(mask, mask_ref)
    assert torch.equal(ids_restore, restore_ref) and torch.equal(grad, grad_ref)
    assert grads.keys() == grads_ref.keys() and "patch_embed.weight" in grads
    assert all(torch.equal(grads[name], grads_ref[name]) for name in grads)


@pytest.mark.parametrize("decoder_attention", DECODER_ATTENTION)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_parameter_count_matches_table_order_of_magnitude(name, decoder_attention):
    with torch.device("meta"):  # no memory for the 600M-parameter variant
        model = build_model(name, decoder_attention=decoder_attention)
    ratio = count_parameters(model) / TABLE_PARAMS[name]
    assert 0.5 < ratio < 2.0, (
        f"{name}: {count_parameters(model):,} parameters vs table {TABLE_PARAMS[name]:,.0f}"
    )
    arch = VARIANTS[name]
    assert (
        len(model.blocks) == arch.encoder_depth and model.blocks[0].attn.num_heads == arch.encoder_num_heads
    )
    assert len(model.decoder_blocks) == arch.decoder_depth


def test_decoder_attention_choice_builds_the_matching_blocks():
    divided, joint = small_model(decoder_attention="divided"), small_model(decoder_attention="joint")
    assert all(isinstance(b, DividedSpatialSpectralBlock) for b in divided.decoder_blocks)
    assert (divided.decoder_blocks[0].groups, divided.decoder_blocks[0].locations) == (2, 16)
    assert not any(isinstance(b, DividedSpatialSpectralBlock) for b in joint.decoder_blocks)
    with pytest.raises(ValueError, match="decoder_attention must be one of"):
        small_model(decoder_attention="axial")


def test_divided_spectral_stage_mixes_groups_only_at_the_same_location():
    torch.manual_seed(0)
    groups, locations, dim = 3, 5, 16
    block = DividedSpatialSpectralBlock(dim, 2, groups, locations).eval()
    x = torch.randn(2, groups * locations, dim)  # (B, L, D) in (group, location) order
    changed = x.clone()
    changed[:, 1 * locations + 2] += torch.randn(dim)  # token (group 1, location 2)
    moved = (
        (block.spectral_stage(changed) - block.spectral_stage(x)).abs().amax(-1).reshape(2, groups, locations)
    )
    assert (moved[:, :, 2] > 1e-4).all()  # every group at location 2 sees the change...
    assert torch.equal(moved[:, :, [0, 1, 3, 4]], torch.zeros(2, groups, 4))  # ...and no other location does
    # The spatial stage then spreads it along each group's locations: the full block moves every token.
    assert ((block(changed) - block(x)).abs().amax(-1) > 0).all()


def test_divided_decoder_sees_visible_tokens_at_their_own_location():
    # A per-token encoder (depth 0) keeps a change local until the decoder's spectral stage, so the stage
    # input/output reveal whether masking + unshuffling put every token back at its (group, location).
    torch.manual_seed(0)
    model = small_model(encoder_depth=0, decoder_attention="divided").eval()  # G = 2, 4 x 4 locations
    imgs, noise = torch.randn(2, 10, 20, 20), torch.rand(2, 32)
    _, mask = model(imgs, noise)
    visible = (mask[0] == 0).nonzero().flatten()
    token = int(visible[0])  # first visible token of sample 0
    group, location = divmod(token, 16)
    row, col = divmod(location, 4)
    changed = imgs.clone()
    changed[0, 5 * group : 5 * group + 5, 5 * row : 5 * row + 5, 5 * col : 5 * col + 5] += torch.randn(
        5, 5, 5
    )  # its voxels

    outputs = []
    hook = model.decoder_blocks[0].attn_spectral.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        model(imgs, noise), model(changed, noise)
    hook.remove()
    moved = (outputs[1] - outputs[0]).abs().amax(-1).reshape(2, 16, 2)  # (B, location, group)
    assert (moved[0, location] > 1e-5).all()  # both groups at the token's location
    others = torch.ones(2, 16, dtype=torch.bool)
    others[0, location] = False
    assert torch.equal(moved[others], torch.zeros_like(moved[others]))  # nothing elsewhere, nor in sample 1


class DividedBlockBeforeSplitQKV(nn.Module):
    """The divided block as it was before SplitQKVAttention: timm's own `Attention` in both stages."""

    def __init__(self, dim, num_heads, groups, locations):
        super().__init__()
        self.groups, self.locations = groups, locations
        self.norm_spectral = nn.LayerNorm(dim)
        self.attn_spectral = Attention(dim, num_heads, qkv_bias=True)
        self.spatial = Block(dim, num_heads, 4.0, qkv_bias=True)

    def forward(self, x):
        b, length, dim = x.shape
        g, s = self.groups, self.locations
        y = x.reshape(b, g, s, dim).transpose(1, 2).reshape(b * s, g, dim)
        y = y + self.attn_spectral(self.norm_spectral(y))
        x = y.reshape(b, s, g, dim).transpose(1, 2).reshape(b, length, dim)
        return self.spatial(x.reshape(b * g, s, dim)).reshape(b, length, dim)


def test_split_qkv_block_matches_timm_attention_in_outputs_gradients_and_names():
    torch.manual_seed(0)
    groups, locations, dim, heads = 3, 8, 16, 2
    block = DividedSpatialSpectralBlock(dim, heads, groups, locations)
    before = DividedBlockBeforeSplitQKV(dim, heads, groups, locations)
    # Same parameter names, so checkpoints written before the change load strictly.
    before.load_state_dict(block.state_dict(), strict=True)
    assert isinstance(block.attn_spectral, SplitQKVAttention)
    assert isinstance(block.spatial.attn, SplitQKVAttention)

    x = torch.randn(2, groups * locations, dim)
    weight = torch.randn(2, groups * locations, dim)  # a loss that weighs every output differently
    results = []
    for model in (block, before):
        inp = x.clone().requires_grad_()
        out = model(inp)
        (out * weight).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((out.detach(), inp.grad, grads))
    (out, grad_in, grads), (out_ref, grad_in_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_in, grad_in_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-5, atol=1e-6, msg=name)
