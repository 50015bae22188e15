"""Prediction on a whole image of any size: overlapping tiles through the model, stitched back together.

Tiles are placed as in training (`cabruca.data.tile_windows`: stride tile - overlap, the last row/column
flush with the image edge). Stitching keeps centres: along each axis the image is cut into cells at the
middle of each overlap, so every pixel is owned by exactly one tile, the one that sees it farthest from its
edge, and every pixel's class and tree come from that tile alone.
- A tree exists once, where the tile owning its centre peak finds it, so a tree in an overlap is counted once.
- A tree's identity is its centre peak in image coordinates: a crown crossing a cut gets, in the next cell,
  the pixels that the next tile groups to the same peak (matched within nms_kernel // 2 pixels, since peaks
  a tile edge apart may move a pixel). Crowns reaching up to `overlap / 2` past a cut are exact; pixels
  whose peak no owning tile kept stay unassigned.
- A tree left with fewer than `min_area` pixels is dropped, so the id map and the tree list always agree.

`model` is any callable (B, 3, T, T) -> the model's output dict, so stitching is tested with a stub whose
heatmaps are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import PostprocessConfig
from .data import tile_windows
from .imagery import Imagery
from .postprocess import decode_instances


@dataclass
class TreeDetection:
    label: int  # instance class index 0..K-1
    score: float  # centre peak x mean class probability over the crown
    centre: tuple[float, float]  # (x, y) of the centre peak, pixels of the whole image


@dataclass
class StitchedPrediction:
    """One image at one centre threshold."""

    threshold: float
    semantic: np.ndarray  # (H, W) uint8 class ids
    instances: np.ndarray  # (H, W) int32: 0 = no tree, k = trees[k - 1]
    trees: list[TreeDetection] = field(default_factory=list)
    peak_max: float = 0.0  # strongest centre-heatmap value anywhere in the image


def tile_cells(n: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """One axis of length n -> (tile start, owned from, owned to) per tile; the owned ranges partition
    [0, n), cut in the middle of each overlap."""
    starts = [y for y, _ in tile_windows(n, 1, tile, overlap)]
    cuts = [0] + [(a + tile + b) // 2 for a, b in zip(starts, starts[1:], strict=False)] + [n]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


class _Stitcher:
    """Paints one threshold's decoded tiles into the whole-image id map. Tiles come in raster order, so a crown
    part in a cell after its owner's is painted at once; the few parts whose owning tile comes later (crowns
    crossing a cut leftwards or upwards) wait for `finish`."""

    def __init__(self, h: int, w: int, threshold: float, match_radius: int):
        self.threshold, self.radius = threshold, match_radius
        self.ids = np.zeros((h, w), np.int32)  # 0 = no tree, k = trees[k - 1] (before dropping small ones)
        self.trees: list[TreeDetection] = []
        self.owned: dict[tuple[int, int], int] = {}  # centre peak (x, y) -> index in trees
        self.waiting: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []  # (peak, ys, xs)

    def add(self, instances, y0: int, x0: int, cell: tuple[int, int, int, int]) -> None:
        """One tile's instances (tile coordinates at y0, x0); cell (ylo, yhi, xlo, xhi): what the tile owns."""
        ylo, yhi, xlo, xhi = cell
        peaks = [(int(inst.centre[0]) + x0, int(inst.centre[1]) + y0) for inst in instances]
        for inst, peak in zip(instances, peaks, strict=True):
            if ylo <= peak[1] < yhi and xlo <= peak[0] < xhi:  # this tile owns the tree's centre
                self.owned[peak] = len(self.trees)
                self.trees.append(TreeDetection(inst.label, inst.score, (float(peak[0]), float(peak[1]))))
        for inst, peak in zip(instances, peaks, strict=True):
            own = inst.mask[ylo - y0 : yhi - y0, xlo - x0 : xhi - x0].cpu().numpy()
            ys, xs = np.nonzero(own)
            if ys.size:
                self._paint(peak, (ys + ylo).astype(np.int32), (xs + xlo).astype(np.int32), defer=True)

    def _paint(self, peak, ys, xs, *, defer: bool) -> None:
        # cells do not overlap and one tile's crowns neither: no pixel is painted twice
        k = self._match(peak)
        if k is not None:
            self.ids[ys, xs] = k + 1
        elif defer:
            self.waiting.append((peak, ys, xs))

    def _match(self, peak: tuple[int, int]) -> int | None:
        """The kept tree at this peak, or the nearest one within match_radius pixels."""
        if peak in self.owned:
            return self.owned[peak]
        r, (px, py) = self.radius, peak
        near = [(dx * dx + dy * dy, (px + dx, py + dy)) for dx in range(-r, r + 1) for dy in range(-r, r + 1)]
        found = [(d, p) for d, p in near if p in self.owned]
        return self.owned[min(found)[1]] if found else None

    def finish(self, semantic: np.ndarray, peak_max: float, min_area: int) -> StitchedPrediction:
        for peak, ys, xs in self.waiting:
            self._paint(peak, ys, xs, defer=False)  # a part whose peak no tile kept stays unassigned
        area = np.bincount(self.ids.ravel(), minlength=len(self.trees) + 1)
        keep = [k for k in range(1, len(self.trees) + 1) if area[k] >= max(min_area, 1)]
        relabel = np.zeros(len(self.trees) + 1, np.int32)
        relabel[keep] = np.arange(1, len(keep) + 1)
        return StitchedPrediction(
            self.threshold, semantic, relabel[self.ids], [self.trees[k - 1] for k in keep], peak_max
        )


@torch.no_grad()
def predict_image(
    model: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    image: Imagery,
    *,
    tile_size: int,
    overlap: int,
    thresholds: Sequence[float],
    postprocess: PostprocessConfig,
    instance_semantic_ids: list[int],
    device: torch.device | str = "cpu",
    batch_size: int = 4,
) -> list[StitchedPrediction]:
    """The whole image, decoded once per centre threshold (the model runs once per tile)."""
    h, w = image.height, image.width
    cells = [(cy, cx) for cy in tile_cells(h, tile_size, overlap) for cx in tile_cells(w, tile_size, overlap)]
    stitchers = [_Stitcher(h, w, t, postprocess.nms_kernel // 2) for t in thresholds]
    semantic = np.zeros((h, w), np.uint8)
    peak_max = 0.0
    for first in range(0, len(cells), batch_size):
        chunk = cells[first : first + batch_size]
        tiles = [image.read(y0, x0, tile_size, tile_size) for (y0, _, _), (x0, _, _) in chunk]
        batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).to(device)  # (B, 3, T, T)
        out = model(batch)
        probs = out["semantic"].float().softmax(1)  # (B, S, T, T)
        heat, offsets = out["heatmap"].float(), out["offsets"].float()
        for i, ((y0, ylo, yhi), (x0, xlo, xhi)) in enumerate(chunk):
            own_y, own_x = slice(ylo - y0, yhi - y0), slice(xlo - x0, xhi - x0)
            semantic[ylo:yhi, xlo:xhi] = probs[i].argmax(0)[own_y, own_x].cpu().numpy()
            peak_max = max(peak_max, float(heat[i][:, own_y, own_x].max()))
            for stitcher in stitchers:
                found = decode_instances(
                    probs[i],
                    heat[i],
                    offsets[i],
                    instance_semantic_ids,
                    threshold=stitcher.threshold,
                    nms_kernel=postprocess.nms_kernel,
                    top_k=postprocess.top_k,
                    min_area=postprocess.min_area,
                )
                stitcher.add(found, y0, x0, (ylo, yhi, xlo, xhi))
    return [s.finish(semantic, peak_max, postprocess.min_area) for s in stitchers]
