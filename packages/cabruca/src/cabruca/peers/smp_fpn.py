"""The segmentation model a user would otherwise train, re-implemented faithfully for the benchmark.

Peer: github.com/qubvel-org/segmentation_models.pytorch (version 0.5.1.dev0, commit
5006616357631a48c7c8e11977cf5abb00803590), `FPN` from `decoders/fpn/model.py` and `decoders/fpn/decoder.py`
with its defaults: encoder `tu-<backbone>` (`encoders/timm_universal.py`: timm's features at strides 2..32,
the input prepended as the stride-1 "feature"), pyramid channels 256, segmentation channels 128, merge policy
"add", Dropout2d 0.2, nearest top-down upsampling, and `SegmentationHead` (1x1 conv, bilinear x4 upsampling,
no activation); initialised as its `base/initialization.py` does. smp itself is not a dependency of
trainyard, so the layers are written out here with the peer's class names and parameter names (its
state_dict keys), so the two read side by side.

`dice_loss` is the peer's `DiceLoss(mode="multiclass", from_logits=True)` (`losses/dice.py`), the loss its
multiclass example trains with (Adam, lr 2e-4).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F  # noqa: N812 - the peer's spelling
from torch import nn

from common.errors import ConfigError

PEER = "qubvel-org/segmentation_models.pytorch FPN"
PEER_LR = 2e-4  # Adam, as the peer's multiclass example trains
OUTPUT_STRIDE = 32  # the peer refuses inputs whose sides are not multiples of this


class Conv3x3GNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.GroupNorm(32, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class FPNBlock(nn.Module):
    """Top-down step: the coarser level upsampled x2 (nearest) plus a 1x1 projection of the skip."""

    def __init__(self, pyramid_channels: int, skip_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, pyramid_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") + self.skip_conv(skip)


class SegmentationBlock(nn.Module):
    """`n_upsamples` Conv3x3GNReLU blocks each followed by a x2 upsampling (one block, none, when 0)."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int = 0):
        super().__init__()
        blocks = [Conv3x3GNReLU(in_channels, out_channels, upsample=bool(n_upsamples))]
        blocks += [Conv3x3GNReLU(out_channels, out_channels, upsample=True) for _ in range(1, n_upsamples)]
        self.block = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FPNDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels: list[int],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
    ):
        super().__init__()
        c5, c4, c3, c2 = encoder_channels[::-1][:4]
        self.out_channels = segmentation_channels  # merge policy "add"
        self.p5 = nn.Conv2d(c5, pyramid_channels, kernel_size=1)
        self.p4 = FPNBlock(pyramid_channels, c4)
        self.p3 = FPNBlock(pyramid_channels, c3)
        self.p2 = FPNBlock(pyramid_channels, c2)
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n_upsamples=n) for n in (3, 2, 1, 0)
        )
        self.dropout = nn.Dropout2d(p=dropout, inplace=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        c2, c3, c4, c5 = features[-4:]  # strides 4, 8, 16, 32
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        levels = [block(p) for block, p in zip(self.seg_blocks, (p5, p4, p3, p2), strict=True)]
        x = torch.stack(levels).sum(dim=0)  # the peer's MergeBlock("add"): (B, 128, H/4, W/4)
        return self.dropout(x)


class SegmentationHead(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, upsampling: int = 4):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.Upsample(mode="bilinear", scale_factor=upsampling, align_corners=True),
        )


class TimmUniversalEncoder(nn.Module):
    """timm's feature extractor at strides 2, 4, 8, 16, 32, the input prepended as the stride-1 feature."""

    def __init__(self, name: str, in_channels: int = 3):
        super().__init__()
        self.model = timm.create_model(name, features_only=True, out_indices=tuple(range(5)))
        reductions = self.model.feature_info.reduction()
        if reductions != [2, 4, 8, 16, 32]:
            raise ConfigError(
                f"the peer FPN is built here for backbones with features at strides 2, 4, 8, 16, 32 (as "
                f"resnet34); {name!r} has {reductions}: run the bench with --no-peer"
            )
        self.out_channels = [in_channels, *self.model.feature_info.channels()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, *self.model(x)]


class FPN(nn.Module):
    """smp's `FPN(encoder_name="tu-<backbone>", encoder_weights=None, classes=num_classes)`.

    image (B, 3, H, W), normalised as the peer's preprocessing does, H and W multiples of 32
    -> logits (B, num_classes, H, W)."""

    def __init__(self, backbone: str = "resnet34", num_classes: int = 1):
        super().__init__()
        self.encoder = TimmUniversalEncoder(backbone)
        self.decoder = FPNDecoder(self.encoder.out_channels)
        self.segmentation_head = SegmentationHead(self.decoder.out_channels, num_classes)
        self._initialize()

    def _initialize(self) -> None:
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.segmentation_head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
            raise ConfigError(
                f"the peer FPN takes images whose sides are multiples of {OUTPUT_STRIDE}, not {h} x {w}: "
                "choose such --tile-sizes or run the bench with --no-peer"
            )
        return self.segmentation_head(self.decoder(self.encoder(x)))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """The peer's multiclass soft Dice loss: logits (B, C, H, W), class ids (B, H, W) -> scalar.

    1 - Dice per class over the whole batch, a class absent from the target counting 0, averaged over the
    classes; pixels labelled `ignore_index` count in neither the prediction nor the target."""
    bs, num_classes = logits.shape[:2]
    prob = logits.log_softmax(dim=1).exp().reshape(bs, num_classes, -1)  # (B, C, HW)
    target = target.reshape(bs, -1)  # (B, HW)
    if ignore_index is None:
        onehot = F.one_hot(target, num_classes).permute(0, 2, 1)
    else:
        keep = (target != ignore_index).unsqueeze(1)  # (B, 1, HW)
        prob = prob * keep
        onehot = F.one_hot(target * keep[:, 0], num_classes).permute(0, 2, 1) * keep
    onehot = onehot.type_as(prob)  # (B, C, HW)
    dims = (0, 2)
    prob_sum, target_sum = prob.sum(dims), onehot.sum(dims)
    intersection = (prob_sum + target_sum - torch.linalg.vector_norm(prob - onehot, ord=1, dim=dims)) / 2
    false_pos, false_neg = prob_sum - intersection, target_sum - intersection
    score = intersection / (intersection + 0.5 * false_pos + 0.5 * false_neg).clamp_min(1e-7)
    loss = (1.0 - score) * (target_sum > 0)
    return loss.mean()
