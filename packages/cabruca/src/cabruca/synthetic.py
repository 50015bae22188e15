"""Deterministic synthetic cabruca scenes in the package's data format.

    python -m cabruca.synthetic OUT_DIR [--num-train 12] [--num-val 4] [--image-size 256] [--seed 0]

Each scene is a textured ground (grass, bare-soil patches, a pond) under three layers of tree crowns:
small dark round cacao crowns, dead/other trees (grey-brown, spiky), and large lobed light-green shade trees
on top that overlap the others and cast shadows. Labels are the *visible* (modal) parts, so instance masks
never overlap and every semantic canopy pixel belongs to exactly one tree. Output per split:
`images/<name>.png` (RGB), `masks/<name>.png` (class ids) and `annotations.json` (COCO: RLE masks, boxes,
one "centre" keypoint per tree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from .config import INSTANCE_CLASSES

# (semantic id, instance category id, base RGB, radius range px, lobes, lobe depth)
_TREE_KINDS = {
    "cacao": (1, 1, (40, 95, 35), (5, 9), 5, 0.08),
    "other": (3, 3, (125, 110, 95), (5, 9), 9, 0.30),
    "shade": (2, 2, (120, 175, 60), (12, 20), 7, 0.15),
}
_DRAW_ORDER = ("cacao", "other", "shade")  # bottom to top: shade trees overlap everything


@dataclass
class Tree:
    kind: str
    cx: float
    cy: float
    radius: float
    phase: np.ndarray  # lobe phases, shape (3,)


def _smooth_noise(rng, shape, sigma):
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (np.abs(n).max() + 1e-8)


def _place_trees(rng, size):
    """Rejection-sample tree centres so no two are closer than half their radii sum (crowns may overlap,
    centres stay distinct) and never closer than 8 px (the default peak-picking window)."""
    area = (size / 256) ** 2  # counts scale with the scene area; at least one tree of each kind
    counts = {
        "cacao": max(1, int(rng.integers(10, 16) * area)),
        "shade": max(1, int(rng.integers(2, 5) * area)),
        "other": max(1, int(rng.integers(1, 4) * area)),
    }
    trees: list[Tree] = []
    for kind in ("shade", "cacao", "other"):
        lo, hi = _TREE_KINDS[kind][3]
        for _ in range(counts[kind]):
            for _attempt in range(50):
                r = rng.uniform(lo, hi)
                cx, cy = rng.uniform(2, size - 3, size=2)
                if all(np.hypot(cx - t.cx, cy - t.cy) >= max(8.0, 0.5 * (r + t.radius)) for t in trees):
                    trees.append(Tree(kind, float(cx), float(cy), float(r), rng.uniform(0, 2 * np.pi, 3)))
                    break
    return trees


def _crown_mask(tree, yy, xx):
    _, _, _, _, lobes, depth = _TREE_KINDS[tree.kind]
    theta = np.arctan2(yy - tree.cy, xx - tree.cx)
    wobble = (np.sin(lobes * theta + tree.phase[0]) + 0.5 * np.sin((lobes + 3) * theta + tree.phase[1])) / 1.5
    radius = tree.radius * (1 + depth * wobble)
    dist = np.hypot(yy - tree.cy, xx - tree.cx)
    return dist <= radius, dist / np.maximum(radius, 1e-6)


def render_scene(seed: int, size: int = 256):
    """One scene: (rgb uint8 (S,S,3), semantic uint8 (S,S), instance id map int32 (S,S), trees kept)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Ground: grass texture, bare-soil blobs (4) and one smooth pond (5).
    semantic = np.zeros((size, size), np.uint8)
    soil = _smooth_noise(rng, (size, size), size / 16) > 0.45
    semantic[soil] = 4
    pcx, pcy = rng.uniform(0.2, 0.8, 2) * size
    pond = np.hypot((xx - pcx) / rng.uniform(0.06, 0.12), (yy - pcy) / rng.uniform(0.06, 0.12)) < size
    pond &= _smooth_noise(rng, (size, size), size / 20) > -0.3
    semantic[pond] = 5
    texture = _smooth_noise(rng, (size, size), 1.5)[..., None]
    rgb = np.empty((size, size, 3), np.float32)
    rgb[:] = (95, 130, 70)
    rgb[semantic == 4] = (150, 120, 85)
    rgb[semantic == 5] = (50, 80, 125)
    rgb += 18 * texture

    trees = _place_trees(rng, size)
    # Paint crowns bottom-to-top; drop trees whose visible part is tiny and paint again so labels stay exact.
    while True:
        ids = np.zeros((size, size), np.int32)
        for kind in _DRAW_ORDER:
            for i, t in enumerate(trees):
                if t.kind == kind:
                    inside, _ = _crown_mask(t, yy, xx)
                    ids[inside] = i + 1
        visible = np.bincount(ids.ravel(), minlength=len(trees) + 1)[1:]
        keep = [t for t, v in zip(trees, visible, strict=True) if v >= 12]
        if len(keep) == len(trees):
            break
        trees = keep

    shadow = np.zeros((size, size), np.float32)
    for t in trees:
        if t.kind == "shade":  # shadow falls south-east of the crown, under and around it
            inside, _ = _crown_mask(
                Tree(t.kind, t.cx + 0.4 * t.radius, t.cy + 0.4 * t.radius, t.radius, t.phase), yy, xx
            )
            shadow = np.maximum(shadow, inside * 0.35)
    for kind in _DRAW_ORDER:
        sem_id, _, colour, _, _, _ = _TREE_KINDS[kind]
        if kind == "shade":  # shadows darken ground and lower crowns, not the shade crowns casting them
            rgb *= (1 - shadow)[..., None]
        for i, t in enumerate(trees):
            if t.kind != kind:
                continue
            inside, rel = _crown_mask(t, yy, xx)
            shade = 1.15 - 0.35 * rel  # brighter crown top, darker rim
            jitter = rng.uniform(0.9, 1.1, 3)
            rgb[inside] = (np.array(colour) * jitter)[None] * shade[inside, None] + 25 * texture[inside]
            semantic[inside & (ids == i + 1)] = sem_id
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    ids_final = np.zeros_like(ids)
    for new_id, old in enumerate(sorted(set(np.unique(ids)) - {0}), start=1):
        ids_final[ids == old] = new_id
    kept = [trees[old - 1] for old in sorted(set(np.unique(ids)) - {0})]
    return rgb, semantic, ids_final, kept


def coco_annotations(names, sizes, id_maps, tree_lists):
    """COCO dict with RLE masks and a single 'centre' keypoint per tree (visible modal masks)."""
    images, anns = [], []
    for img_id, (name, (h, w), ids, trees) in enumerate(
        zip(names, sizes, id_maps, tree_lists, strict=True), start=1
    ):
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
        for k, t in enumerate(trees, start=1):
            m = np.asfortranarray((ids == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": _TREE_KINDS[t.kind][1],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "keypoints": [round(t.cx, 2), round(t.cy, 2), 2],
                    "num_keypoints": 1,
                }
            )
    categories = [
        {"id": i + 1, "name": n, "supercategory": "tree", "keypoints": ["centre"], "skeleton": []}
        for i, n in enumerate(INSTANCE_CLASSES)
    ]
    return {"images": images, "annotations": anns, "categories": categories}


def write_split(out_dir: Path, n: int, size: int, seed: int, split_id: int) -> Path:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    names, sizes, id_maps, tree_lists = [], [], [], []
    for i in range(n):
        # Scene seed is a pure function of (seed, split, index): the same command writes the same bytes.
        rgb, semantic, ids, trees = render_scene(
            int(np.random.SeedSequence([seed, split_id, i]).generate_state(1)[0]), size
        )
        name = f"scene_{i:04d}.png"
        Image.fromarray(rgb).save(out_dir / "images" / name)
        Image.fromarray(semantic).save(out_dir / "masks" / name)
        names.append(name)
        sizes.append((size, size))
        id_maps.append(ids)
        tree_lists.append(trees)
    (out_dir / "annotations.json").write_text(json.dumps(coco_annotations(names, sizes, id_maps, tree_lists)))
    return out_dir


def generate(
    out: str | Path, *, num_train: int = 12, num_val: int = 4, image_size: int = 256, seed: int = 0
) -> Path:
    out = Path(out)
    write_split(out / "train", num_train, image_size, seed, 0)
    write_split(out / "val", num_val, image_size, seed, 1)
    return out


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--num-train", default=12, show_default=True, help="Training scenes.")
@click.option("--num-val", default=4, show_default=True, help="Validation scenes.")
@click.option(
    "--image-size", default=256, show_default=True, help="Scene side in pixels (tiled at training time)."
)
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
def main(out_dir, num_train, num_val, image_size, seed):
    """Write deterministic synthetic cabruca scenes (images, masks, COCO annotations with centres)."""
    if image_size < 32 or num_train < 1 or num_val < 1:
        from common.errors import DataError

        raise DataError("--image-size must be at least 32 and --num-train/--num-val at least 1.")
    out = generate(out_dir, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    click.echo(f"wrote {num_train} training and {num_val} validation scenes of {image_size}px to {out}")


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
