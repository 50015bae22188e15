"""Dense training targets from a tile's instance id map (Panoptic-DeepLab-style centre + offset encoding).

Every tree k (instance id k, class labels[k-1], centre centres[k-1] = (x, y)) contributes
- a Gaussian peak of value 1 at its (rounded) centre in heatmap channel labels[k-1],
- at each of its pixels, the offset (dy, dx) from the pixel to that centre,
- its crown boundary (pixels with a 4-neighbour outside the crown),
- a density kernel summing to `density_scale`, so the density map sums to density_scale * tree count.
`cabruca.postprocess.decode_instances` inverts this exactly on ground-truth targets.
"""

from __future__ import annotations

import numpy as np


def rounded_centres(centres: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) float [x, y] -> (N, 2) int [x, y] on the pixel grid, inside the tile."""
    return np.clip(np.rint(centres), 0, size - 1).astype(np.int64).reshape(-1, 2)


def crown_boundaries(instances: np.ndarray) -> np.ndarray:
    """instances (H, W) int -> (H, W) float32, 1 on tree pixels whose 4-neighbour has another id.
    Edge pixels are compared with a replicated border, so the tile edge is not a crown boundary."""
    p = np.pad(instances, 1, mode="edge")
    c = p[1:-1, 1:-1]
    differs = (p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)
    return ((c > 0) & differs).astype(np.float32)


def _gaussian_window(cx: int, cy: int, sigma: float, h: int, w: int):
    r = int(np.ceil(3 * sigma))
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), g


def make_targets(
    instances: np.ndarray,
    labels: np.ndarray,
    centres: np.ndarray,
    num_classes: int,
    *,
    centre_sigma: float = 3.0,
    density_sigma: float = 4.0,
    density_scale: float = 100.0,
) -> dict:
    """instances (H, W) ids 1..N, labels (N,) class index, centres (N, 2) [x, y] -> dict of float32 arrays:
    heatmap (C, H, W), offsets (2, H, W) as (dy, dx), offset_weight (H, W), crown (H, W), density (H, W),
    count () = N."""
    h, w = instances.shape
    heatmap = np.zeros((num_classes, h, w), np.float32)
    density = np.zeros((h, w), np.float32)
    c = rounded_centres(centres, max(h, w))
    for (cx, cy), label in zip(c, labels, strict=True):
        win, g = _gaussian_window(int(cx), int(cy), centre_sigma, h, w)
        np.maximum(heatmap[(int(label), *win)], g, out=heatmap[(int(label), *win)])
        win, g = _gaussian_window(int(cx), int(cy), density_sigma, h, w)
        density[win] += density_scale * g / g.sum()  # renormalised after clipping: each tree adds exactly one
    # Per-id lookup tables (index 0 = no tree) turn the offset computation into two gathers.
    cy_of = np.concatenate([[0], c[:, 1]]).astype(np.float32)
    cx_of = np.concatenate([[0], c[:, 0]]).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tree = instances > 0
    offsets = np.stack([np.where(tree, cy_of[instances] - yy, 0), np.where(tree, cx_of[instances] - xx, 0)])
    return {
        "heatmap": heatmap,
        "offsets": offsets.astype(np.float32),
        "offset_weight": tree.astype(np.float32),
        "crown": crown_boundaries(instances),
        "density": density,
        "count": np.float32(len(labels)),
    }
