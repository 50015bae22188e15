"""cabruca's model and the peer FPN trained side by side: the same tiles, interleaved steps, one process.

Both take a training step on the same pre-built batch, alternately (cabruca, peer, cabruca, peer, ...), so
each pair of steps runs under the same machine load; their speed ratio is the median over pairs of (peer
time / cabruca time). cabruca's step is the trainer's (five heads, the multi-task loss, the config's
optimizer with its gradient clipping); the peer's is the recipe its users train semantic segmentation with
(Dice loss over cabruca's semantic classes, Adam).
The data path is left out of both: the batch is built before timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.benchmarking import Timing, count_flops, time_interleaved, torch_sync
from common.errors import ConfigError

from ..box_labels import IGNORE
from ..losses import MultiTaskLoss
from ..model import build_model
from ..optim import backward_and_step
from .smp_fpn import FPN, OUTPUT_STRIDE, PEER, PEER_LR, dice_loss


@dataclass(frozen=True)
class PeerRun:
    """How long the side-by-side comparison runs, and by which clock."""

    min_steps: int = 10  # at least this many interleaved step pairs ...
    min_seconds: float = 20.0  # ... and this many seconds of steps
    cpu_time: bool = False  # time by this process's CPU time (one torch thread only)

    @property
    def clock(self) -> Callable[[], float]:
        return time.process_time if self.cpu_time else time.perf_counter


def peer_name(backbone: str) -> str:
    return f"{PEER} (tu-{backbone} encoder, pyramid 256, segmentation 128; Dice loss, Adam)"


def check_tiles(sizes: list[int]) -> None:
    """Refuse, before anything is measured, tile sizes the peer cannot take."""
    odd = [t for t in sizes if t % OUTPUT_STRIDE]
    if odd:
        raise ConfigError(
            f"the peer FPN takes tiles whose side is a multiple of {OUTPUT_STRIDE}; --tile-sizes has "
            f"{', '.join(map(str, odd))}: choose multiples of {OUTPUT_STRIDE} or run the bench with --no-peer"
        )


def cabruca_loss(model, loss_fn) -> Callable[[dict], torch.Tensor]:
    return lambda batch: loss_fn(model(batch["image"]), batch)["loss"]


def peer_loss(model) -> Callable[[dict], torch.Tensor]:
    # The peer's users normalise in their data pipeline; here that is done once, before timing.
    return lambda batch: dice_loss(model(batch["peer_image"]), batch["semantic"], ignore_index=IGNORE)


def adam_step(model) -> Callable[[torch.Tensor], None]:
    """The peer's optimizer step as its users write it: backward, Adam, zero the gradients."""
    optimizer = torch.optim.Adam(model.parameters(), lr=PEER_LR)

    def step(loss: torch.Tensor) -> None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_step(
    loss: Callable[[dict], torch.Tensor], backward_and_step: Callable[[torch.Tensor], None], batch: dict
) -> Callable[[], None]:
    return lambda: backward_and_step(loss(batch))


def compare_with_peer(
    cfg,
    batch: dict,
    *,
    device,
    peak: float,
    run: PeerRun = PeerRun(),
    warmup: int = 2,
) -> dict:
    """Train cabruca's model (`cfg.model`) and the peer FPN (same timm backbone, cabruca's semantic classes)
    interleaved on `batch` (cabruca's collated tiles, on `device`); `peak`: GFLOP/s timed by `run.clock`."""
    image = batch["image"]  # (B, 3, T, T) in [0, 1]
    tiles = image.shape[0]
    torch.manual_seed(0)
    ours = build_model(cfg.model).to(device).train()
    peer = FPN(cfg.model.backbone, cfg.model.num_semantic_classes).to(device).train()
    batch = {**batch, "peer_image": (image - ours.mean) / ours.std}  # ImageNet statistics, as cabruca's
    losses = {"cabruca": cabruca_loss(ours, MultiTaskLoss(cfg.loss)), "peer": peer_loss(peer)}
    steps = {"cabruca": backward_and_step(ours, cfg, device), "peer": adam_step(peer)}  # ours: the trainer's
    flops = {}
    for (name, loss), model in zip(losses.items(), (ours, peer), strict=True):
        flops[name] = count_flops(lambda loss=loss: loss(batch).backward())
        model.zero_grad(set_to_none=True)
    comparison = time_interleaved(
        *(training_step(losses[n], steps[n], batch) for n in ("cabruca", "peer")),
        warmup=warmup,
        min_steps=run.min_steps,
        min_seconds=run.min_seconds,
        sync=lambda: torch_sync(device),
        clock=run.clock,
    )
    result = {
        "tile": image.shape[-1],
        "batch": tiles,
        "speedup": comparison.speedup,  # median over pairs of peer time / cabruca time
        "pair_ratio_spread": comparison.pair_ratios.spread,
        "ratio_timing": comparison.pair_ratios.summary(unit="x", scale=1),
        "clock": "process CPU time" if run.cpu_time else "wall time",
    }
    for (name, model), timing in zip(
        {"cabruca": ours, "peer": peer}.items(), (comparison.a, comparison.b), strict=True
    ):
        result[name] = _figures(timing, flops[name], tiles, peak, model)
    return result


def _figures(timing: Timing, flops: float, tiles: int, peak: float, model) -> dict:
    tiles_per_s = timing.per_s(tiles)
    return {
        "tiles_per_s": tiles_per_s,
        "step_ms_min": 1e3 * timing.min,
        "step_ms_median": 1e3 * timing.median,
        "step_ms_max": 1e3 * timing.max,
        "spread": timing.spread,
        "steps": len(timing.times),
        "gflop_per_tile": flops / tiles / 1e9,
        "share_of_matmul_peak": flops / tiles * tiles_per_s / 1e9 / peak,
        "parameters": sum(p.numel() for p in model.parameters()),
        "timing": timing.summary(),
    }


def peer_table(rows: list[dict], backbone: str) -> str:
    """The side-by-side rows as the bench prints them, with each side's min / median / max step time."""
    clock = rows[0]["clock"] if rows else "wall time"
    lines = [
        f"side by side with the peer, {peer_name(backbone)}: training steps interleaved on the same tiles, "
        f"timed by {clock}, ratio = median over step pairs of peer time / cabruca time",
        f"{'tile':<6}{'cabruca tiles/s':>16}{'peer tiles/s':>14}{'ratio':>7}{'GFLOP/tile cabruca':>20}"
        f"{'peer':>8}{'% peak cabruca':>16}{'peer':>7}",
    ]
    for r in rows:
        ours, peer = r["cabruca"], r["peer"]
        lines.append(
            f"{r['tile']:<6}{ours['tiles_per_s']:16.2f}{peer['tiles_per_s']:14.2f}{r['speedup']:6.2f}x"
            f"{ours['gflop_per_tile']:20.3g}{peer['gflop_per_tile']:8.3g}"
            f"{100 * ours['share_of_matmul_peak']:15.0f}%{100 * peer['share_of_matmul_peak']:6.0f}%"
        )
        lines.append(f"  {'cabruca':<8}{ours['timing']}")
        lines.append(f"  {'peer':<8}{peer['timing']}")
        lines.append(f"  {'ratio':<8}{r['ratio_timing']}")
    return "\n".join(lines)
