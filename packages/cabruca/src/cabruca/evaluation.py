"""Evaluation of a cabruca checkpoint: the work behind `python -m cabruca.evaluate` (its docstring describes
metrics.json and the overlays), imported only when the command runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from common.devices import peak_memory_mb, torch_device
from common.errors import ConfigError
from common.sampler import ResumableSampler

from .config import SWEEP
from .data import CabrucaTiles, load_split, make_loader
from .engine import load_from_checkpoint, update_evaluator
from .image_eval import evaluate_images
from .losses import MultiTaskLoss
from .metrics import Evaluator
from .overlay_plots import write_overlay_figure
from .postprocess import Instance, instances_from_ids
from .targets import crown_boundaries

# background, cacao, shade tree, other tree, bare soil, water (extra classes cycle)
PALETTE = np.array(
    [[0, 0, 0], [20, 140, 40], [170, 240, 60], [200, 90, 200], [210, 160, 90], [40, 90, 230]], np.uint8
)


def overlay(image: np.ndarray, semantic: np.ndarray, instances: list[Instance]) -> np.ndarray:
    """image (H, W, 3) float [0, 1], semantic (H, W) ids -> uint8 (H, W, 3) with classes blended in, crown
    outlines in white and centres as red crosses."""
    rgb = (image * 255).astype(np.float32)
    colour = PALETTE[semantic % len(PALETTE)].astype(np.float32)
    out = np.where((semantic > 0)[..., None], 0.55 * rgb + 0.45 * colour, rgb)
    ids = np.zeros(semantic.shape, np.int32)
    for k, inst in enumerate(instances, start=1):
        ids[inst.mask.cpu().numpy()] = k
    out[crown_boundaries(ids) > 0] = (255, 255, 255)
    for inst in instances:
        x, y = (int(round(v)) for v in inst.centre)
        if x >= 0:
            out[max(y - 2, 0) : y + 3, x] = out[y, max(x - 2, 0) : x + 3] = (255, 30, 30)
    return out.clip(0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint,
    data_dir,
    *,
    split: str = "val",
    out_dir=None,
    device: str = "auto",
    max_overlays: int = 8,
    batch_size: int | None = None,
    score_threshold: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    sweep: tuple[float, ...] = SWEEP,
) -> Path:
    """Both views (see the module docstring). `score_threshold` (the centre peak a tree needs), `tile_size`
    and `overlap` default to the checkpoint's postprocess.centre_threshold, data.tile_size and, for whole
    images, tile_size // 4 (tiles keep data.tile_overlap)."""
    dev = torch_device(device)
    model, cfg = load_from_checkpoint(checkpoint, dev)
    if score_threshold is not None:
        cfg.postprocess.centre_threshold = score_threshold
    if tile_size is not None:
        cfg.data.tile_size = tile_size
    image_overlap = cfg.data.tile_size // 4 if overlap is None else overlap
    if overlap is not None:
        cfg.data.tile_overlap = overlap
    if cfg.data.tile_size < 32 or not 0 <= image_overlap < cfg.data.tile_size:
        raise ConfigError(
            f"--tile-size must be at least 32 and --overlap in [0, tile size); got {cfg.data.tile_size}, "
            f"{image_overlap}."
        )
    if not 0 <= cfg.postprocess.centre_threshold < 1:
        raise ConfigError(f"--score-threshold must be in [0, 1), got {cfg.postprocess.centre_threshold:g}.")
    out_dir = Path(out_dir or Path(checkpoint).resolve().parent.parent / "evaluation")
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    records = load_split(Path(data_dir) / split, cfg.data)
    tiles = CabrucaTiles(records, cfg.data, seed=cfg.seed, train=False)
    sampler = ResumableSampler(len(tiles), batch_size or cfg.data.batch_size, shuffle=False, drop_last=False)
    loss_fn = MultiTaskLoss(cfg.loss)
    ev = Evaluator(cfg.data.semantic_classes, cfg.data.instance_classes, cfg.data.instance_semantic_ids)
    loss_sum, n, written, forward_s = {}, 0, 0, 0.0
    for batch in make_loader(tiles, cfg.data, sampler):
        batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        t0 = time.perf_counter()
        out = model(batch["image"])
        forward_s += time.perf_counter() - t0
        for k, v in loss_fn(out, batch).items():
            loss_sum[k] = loss_sum.get(k, 0.0) + float(v) * batch["image"].shape[0]
        decoded = update_evaluator(ev, out, batch, cfg)
        for i, pred in enumerate(decoded):
            if written >= max_overlays:
                break
            image = batch["image"][i].permute(1, 2, 0).cpu().numpy()
            gt = instances_from_ids(batch["instances"][i], batch["labels"][i])
            pred_img = overlay(image, out["semantic"][i].argmax(0).cpu().numpy(), pred)
            gt_img = overlay(image, batch["semantic"][i].cpu().numpy(), gt)
            write_overlay_figure(
                image,
                pred_img,
                gt_img,
                cfg.data.semantic_classes,
                PALETTE,
                out_dir / "overlays" / f"tile_{n + i:04d}_pred_vs_gt.png",
                title=f"{split} tile {n + i}",
            )
            written += 1
        n += batch["image"].shape[0]
    metrics = {f"loss/{k}": v / max(n, 1) for k, v in loss_sum.items()}
    metrics.update(ev.compute())
    metrics.update(
        {
            "tiles": n,
            "forward_ms_per_tile": 1000 * forward_s / max(n, 1),
            **{f"memory/{k}": v for k, v in peak_memory_mb(dev).items()},
        }
    )
    images = evaluate_images(
        model,
        records,
        cfg,
        tile_size=cfg.data.tile_size,
        overlap=image_overlap,
        score_threshold=cfg.postprocess.centre_threshold,
        sweep=sweep,
        device=dev,
        batch_size=batch_size or cfg.data.batch_size,
    )
    path = out_dir / "metrics.json"
    report = {"checkpoint": str(checkpoint), "data_dir": str(data_dir), "split": split, "metrics": metrics}
    path.write_text(json.dumps({**report, "images": images}, indent=2))
    return path
