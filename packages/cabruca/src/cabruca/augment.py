"""Geometric and colour augmentation applied consistently to a tile and all of its labels.

Geometry (flips, 90-degree rotations) moves the image, the semantic mask, the instance id map and the tree
centres together; colour jitter touches the image only. Everything is drawn from the per-sample generator
`common.seeding.sample_rng(seed, epoch, index)`, so a tile is augmented the same way on any worker count and
after a resume. Centres use pixel-index coordinates (x = column, y = row).
"""

from __future__ import annotations

import numpy as np

from .config import AugmentConfig


def hflip(image, semantic, instances, centres):
    w = image.shape[1]
    c = centres.copy()
    c[:, 0] = w - 1 - c[:, 0]
    return image[:, ::-1], semantic[:, ::-1], instances[:, ::-1], c


def vflip(image, semantic, instances, centres):
    h = image.shape[0]
    c = centres.copy()
    c[:, 1] = h - 1 - c[:, 1]
    return image[::-1], semantic[::-1], instances[::-1], c


def rot90(image, semantic, instances, centres):
    """np.rot90 (counter-clockwise): B[i, j] = A[j, W-1-i], so a point (x, y) moves to (y, W-1-x)."""
    w = image.shape[1]
    c = np.stack([centres[:, 1], w - 1 - centres[:, 0]], axis=1) if len(centres) else centres.copy()
    return np.rot90(image), np.rot90(semantic), np.rot90(instances), c


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """image: float32 (H, W, 3) in [0, 1]. Brightness, contrast, saturation as in torchvision's ColorJitter."""
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    out = image * b
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W) luma
    out = (out - grey.mean()) * c + grey.mean()
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = (out - grey[..., None]) * s + grey[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def augment(image, semantic, instances, centres, rng: np.random.Generator, cfg: AugmentConfig):
    """image (H, W, 3) float32, semantic (H, W), instances (H, W) int, centres (N, 2) float [x, y].

    Returns the same four, transformed together (contiguous copies)."""
    if rng.random() < cfg.hflip:
        image, semantic, instances, centres = hflip(image, semantic, instances, centres)
    if rng.random() < cfg.vflip:
        image, semantic, instances, centres = vflip(image, semantic, instances, centres)
    if cfg.rot90:
        for _ in range(int(rng.integers(0, 4))):
            image, semantic, instances, centres = rot90(image, semantic, instances, centres)
    image = colour_jitter(np.ascontiguousarray(image), rng, cfg)
    return image, np.ascontiguousarray(semantic), np.ascontiguousarray(instances), centres
