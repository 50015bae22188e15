"""The peer the bench trains beside cabruca's model: smp's FPN at its default widths, with the parameter count
its layer list gives, smp's multiclass Dice loss, and the interleaved comparison's figures (checked for sense
at a tiny size, never for speed)."""

from __future__ import annotations

import math

import pytest
import torch

from cabruca.bench import main
from cabruca.benchmark import _batch
from cabruca.peers.side_by_side import PeerRun, compare_with_peer
from cabruca.peers.smp_fpn import FPN, dice_loss
from common.benchmarking import torch_matmul_peak_gflops
from common.cli import run_cli

from .conftest import make_cfg


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def norm(c: int) -> int:  # BatchNorm or GroupNorm: a weight and a bias per channel
    return 2 * c


def resnet34_features() -> int:
    """resnet34 without its classifier: stem, then stages of 3, 4, 6, 3 basic blocks at 64..512 channels."""
    total = conv(3, 64, 7, bias=False) + norm(64)
    cin = 64
    for cout, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            c = cin if b == 0 else cout
            total += conv(c, cout, 3, bias=False) + norm(cout) + conv(cout, cout, 3, bias=False) + norm(cout)
            if b == 0 and cin != cout:  # 1x1 stride-2 projection of the shortcut
                total += conv(cin, cout, 1, bias=False) + norm(cout)
        cin = cout
    return total


def fpn_decoder_and_head(classes: int) -> int:
    """smp's FPN decoder (pyramid 256, segmentation 128) on resnet34's 64/128/256/512 features, and its head."""
    lateral = conv(512, 256, 1) + conv(256, 256, 1) + conv(128, 256, 1) + conv(64, 256, 1)  # p5, p4, p3, p2
    first = conv(256, 128, 3, bias=False) + norm(128)  # each level's first Conv3x3GNReLU
    more = conv(128, 128, 3, bias=False) + norm(128)  # the upsampling blocks after it: 2 + 1 + 0 + 0
    return lateral + 4 * first + 3 * more + conv(128, classes, 1)


def test_peer_fpn_has_smp_widths_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = FPN("resnet34", num_classes=6)
    assert sum(p.numel() for p in model.encoder.parameters()) == resnet34_features() == 21_284_672
    expected = resnet34_features() + fpn_decoder_and_head(6)
    assert sum(p.numel() for p in model.parameters()) == expected == 23_156_038
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in model.modules()) == 7
    names = set(model.state_dict())  # smp's own keys: its checkpoints would load
    assert {"encoder.model.conv1.weight", "decoder.p4.skip_conv.bias", "segmentation_head.0.weight"} <= names
    assert "decoder.seg_blocks.0.block.2.block.1.weight" in names  # level 5's third block, its GroupNorm
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.encoder(x)
        assert [f.shape[1] for f in features] == [3, 64, 64, 128, 256, 512]
        assert model.decoder(features).shape == (2, 128, 8, 8)  # stride 4, segmentation channels
        assert model(x).shape == (2, 6, 32, 32)  # the head's x4 upsampling back to the input


def test_dice_loss_is_one_minus_dice_per_present_class_averaged():
    target = torch.tensor([[[0, 0], [1, 255]]])  # class 2 absent, one pixel ignored
    prob = torch.tensor([[[0.7, 0.2], [0.1, 0.5]], [[0.2, 0.5], [0.6, 0.3]], [[0.1, 0.3], [0.3, 0.2]]])
    logits = prob.log().unsqueeze(0)  # softmax gives `prob` back
    kept = [(0, 0), (0, 1), (1, 0)]
    losses = []
    for c in range(3):
        p = [float(prob[c, i, j]) for i, j in kept]
        t = [float(target[0, i, j] == c) for i, j in kept]
        dice = 2 * sum(a * b for a, b in zip(p, t, strict=True)) / (sum(p) + sum(t))
        losses.append(1 - dice if sum(t) else 0.0)
    torch.testing.assert_close(dice_loss(logits, target, ignore_index=255), torch.tensor(sum(losses) / 3))
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 3).permute(0, 3, 1, 2) * 50.0
    assert float(dice_loss(perfect, torch.tensor([[[0, 1], [1, 0]]]))) == pytest.approx(0, abs=1e-6)


def test_quick_side_by_side_gives_finite_positive_figures(tiny_data, tmp_path):
    cfg = make_cfg(tiny_data, tmp_path / "out")
    device = torch.device("cpu")
    batch = _batch(tiny_data, cfg, 32, 2, device)
    peak = torch_matmul_peak_gflops(device, n=256, repeats=2)
    r = compare_with_peer(cfg, batch, device=device, peak=peak, run=PeerRun(2, 0.0), warmup=0)
    assert (r["tile"], r["batch"], r["clock"]) == (32, 2, "wall time")
    assert math.isfinite(r["speedup"]) and r["speedup"] > 0
    for name in ("cabruca", "peer"):
        side = r[name]
        assert side["steps"] == 2 and 0 < side["step_ms_min"] <= side["step_ms_median"] <= side["step_ms_max"]
        assert side["tiles_per_s"] == pytest.approx(2 / (side["step_ms_median"] / 1e3))
        for key in ("gflop_per_tile", "share_of_matmul_peak"):
            assert math.isfinite(side[key]) and side[key] > 0, (name, key)
    # smp's decoder at pyramid 256 outweighs cabruca's FPN 32 on the tiny test backbone
    assert r["peer"]["parameters"] > r["cabruca"]["parameters"]
    assert r["peer"]["gflop_per_tile"] > r["cabruca"]["gflop_per_tile"]


def test_tiles_the_peer_cannot_take_are_refused_before_measuring(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--tile-sizes", "256,100", "--device", "cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "multiple of 32" in err and "100" in err and "--no-peer" in err
