"""CabrucaNet: timm backbone (features_only) -> FPN -> fused stride-4 feature -> five heads.

Heads (all upsampled to the input size): semantic logits (S), centre heatmaps (K), offsets (2, as dy, dx in
pixels), crown boundary logit (1), density (1). The FPN is torchvision's FeaturePyramidNetwork; the
stride-4 fusion is Panoptic FPN's semantic branch (each level: conv-GN-ReLU, upsample x2 until stride 4,
then sum), hand-written because neither timm nor torchvision ships it as a module.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from common.errors import ConfigError

from .config import ModelConfig
from .pretrained import PretrainedReport, load_pretrained

HEADS = ("semantic", "heatmap", "offsets", "crown", "density")
# ImageNet statistics: timm backbones (and any pretrained weights) expect them.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(32, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


class FusedFPNDecoder(nn.Module):
    def __init__(self, in_channels: list[int], reductions: list[int], fpn_channels: int, out_channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels)
        # Level with reduction r needs log2(r/4) stages of (conv-GN-ReLU, upsample x2) to reach stride 4.
        self.branches = nn.ModuleList()
        for r in reductions:
            ups = max(int(round(math.log2(r / 4))), 0)
            layers: list[nn.Module] = []
            for i in range(max(ups, 1)):
                layers.append(_conv_gn_relu(fpn_channels if i == 0 else out_channels, out_channels))
                if ups:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*layers))

    def forward(self, feats: list[torch.Tensor], size4: tuple[int, int]) -> torch.Tensor:
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))  # each (B, fpn, H/r, W/r)
        out = None
        for branch, level in zip(self.branches, pyramid.values(), strict=True):
            y = branch(level)
            if y.shape[-2:] != size4:  # odd input sizes: align to the stride-4 grid
                y = F.interpolate(y, size=size4, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return out  # (B, out_channels, H/4, W/4)


def _head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv_gn_relu(cin, cin), nn.Conv2d(cin, cout, 1))


class CabrucaNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        try:
            self.backbone = timm.create_model(
                cfg.backbone,
                features_only=True,
                pretrained=cfg.pretrained,
                out_indices=tuple(cfg.out_indices),
            )
        except (RuntimeError, ValueError) as exc:  # unknown model name / stage index
            raise ConfigError(
                f"model.backbone {cfg.backbone!r} with out_indices {cfg.out_indices} cannot be built "
                f"by timm as a feature extractor: {exc}"
            ) from None
        info = self.backbone.feature_info
        self.decoder = FusedFPNDecoder(info.channels(), info.reduction(), cfg.fpn_channels, cfg.head_channels)
        hc = cfg.head_channels
        self.heads = nn.ModuleDict(
            {
                "semantic": _head(hc, cfg.num_semantic_classes),
                "heatmap": _head(hc, cfg.num_instance_classes),
                "offsets": _head(hc, 2),
                "crown": _head(hc, 1),
                "density": _head(hc, 1),
            }
        )
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> semantic (B, S, H, W), heatmap (B, K, H, W), offsets (B, 2, H, W),
        crown (B, H, W) logits, density (B, H, W)."""
        h, w = image.shape[-2:]
        feats = self.backbone((image - self.mean) / self.std)
        fused = self.decoder(feats, (-(-h // 4), -(-w // 4)))
        out = {}
        for name, head in self.heads.items():
            y = F.interpolate(head(fused), size=(h, w), mode="bilinear", align_corners=False)
            out[name] = y[:, 0] if name in ("crown", "density") else y
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for per-part learning rates."""
        return {
            "backbone": list(self.backbone.parameters()),
            "decoder": list(self.decoder.parameters()),
            "heads": list(self.heads.parameters()),
        }


def build_model(cfg: ModelConfig) -> CabrucaNet:
    """A new model, with `cfg.pretrained_checkpoint`'s weights where they fit (see `cabruca.pretrained`)."""
    return build_model_with_report(cfg)[0]


def build_model_with_report(cfg: ModelConfig) -> tuple[CabrucaNet, PretrainedReport | None]:
    """The model and the report of what its pretrained checkpoint filled (None without one)."""
    model = CabrucaNet(cfg)
    report = load_pretrained(model, cfg) if cfg.pretrained_checkpoint else None
    return model, report
