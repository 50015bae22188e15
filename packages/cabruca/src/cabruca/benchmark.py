"""The measurements behind `python -m cabruca.bench` (the command line is `cabruca.bench`).

Per tile size (default 256 and 512): training tiles/s, forward ms per batch, peak memory, FLOPs per tile
(torch.utils.flop_counter over one real step), achieved GFLOP/s and its share of the float32 matmul peak
timed in the same run. Then the trainer's overhead: the same steps through the shared training loop
(`common.loop.Loop` over cabruca's task) and through a hand-written loop over a second task's loader, device
transfers, model, optimizer, loss and clipping, the two alternating step by step; the overhead is the median
over step pairs of (trainer time / bare time) - 1.
Timings are medians after warm-up; on a shared machine they are noisy.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.allocator import tune_malloc
from common.benchmarking import Comparison, Timing, median_seconds, torch_matmul_peak_gflops
from common.callbacks import Callback
from common.devices import describe_device, peak_memory_mb, torch_device
from common.loop import Loop, Plan

from . import config as config_mod
from .data import CabrucaTiles, collate, load_split
from .engine import CabrucaTask
from .losses import MultiTaskLoss
from .model import build_model
from .optim import backward_and_step, build_lr_schedule
from .peers.side_by_side import PeerRun, check_tiles, compare_with_peer, peer_name, peer_table
from .synthetic import generate


def _median_time(fn, device, steps: int, warmup: int) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return median_seconds(fn, warmup=warmup, repeats=steps, sync=sync)


def _batch(data_dir: Path, cfg, tile: int, batch_size: int, device) -> dict:
    dcfg = cfg.data
    dcfg.tile_size, dcfg.tile_overlap = tile, 0
    ds = CabrucaTiles(load_split(data_dir / "train", dcfg), dcfg, seed=0, train=True)
    b = collate([ds[(i % len(ds), 0)] for i in range(batch_size)])
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}


def bench_tile(cfg, data_dir: Path, tile: int, batch_size: int, device, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    loss_fn = MultiTaskLoss(cfg.loss)
    backward_and_step_ = backward_and_step(model, cfg, device)
    batch = _batch(data_dir, cfg, tile, batch_size, device)
    x = batch["image"]

    def train_step():
        backward_and_step_(loss_fn(model(x), batch)["loss"])

    with FlopCounterMode(display=False) as fc:
        loss_fn(model(x), batch)["loss"].backward()
    train_flops = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    with torch.no_grad(), FlopCounterMode(display=False) as fc_fwd:
        model(x)
    step_s = _median_time(train_step, device, steps, warmup)
    model.eval()
    with torch.no_grad():
        fwd_s = _median_time(lambda: model(x), device, steps, warmup)
    model.train()
    mem = peak_memory_mb(device)
    return {
        "tile": tile,
        "batch": batch_size,
        "train_tiles_per_s": batch_size / step_s,
        "train_step_ms": 1000 * step_s,
        "forward_ms_per_batch": 1000 * fwd_s,
        "train_gflop_per_tile": train_flops / batch_size / 1e9,
        "forward_gflop_per_tile": fc_fwd.get_total_flops() / batch_size / 1e9,
        "train_gflops_achieved": train_flops / step_s / 1e9,
        **{f"peak_{k}": v for k, v in mem.items()},
    }


class InterleavedBareLoop(Callback):
    """Times the shared loop's optimizer steps and, between them, one step of a hand-written loop each.

    After every trainer step (measured from the previous step's end, so its data loading and the loop's
    bookkeeping count) the callback takes one bare step and times it the same way; the trainer's clock then
    restarts. So the two alternate step by step, A, B, A, B, under the same load."""

    def __init__(self, bare_steps: Iterator[bool], warmup: int) -> None:
        self.bare_steps, self.warmup = bare_steps, warmup
        self.trainer: list[float] = []
        self.bare: list[float] = []
        self._last = 0.0

    def on_fit_start(self, loop) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, loop, outputs) -> None:
        trainer_s = time.perf_counter() - self._last
        start = time.perf_counter()
        took_step = next(self.bare_steps, None) is not None
        bare_s = time.perf_counter() - start
        if took_step and loop.pos.step > self.warmup:
            self.trainer.append(trainer_s)
            self.bare.append(bare_s)
        self._last = time.perf_counter()


def bare_loop(task: CabrucaTask) -> Iterator[bool]:
    """The loop a user would write by hand, one optimizer step per `next()`, doing the trainer's work exactly:
    a second task's loader, device transfers, model (same init and train/eval modes), optimizer and loss."""
    clip = task.config.training.gradient_clip
    for batch in task.batches(0, 0):  # the same loader and transfers as the trainer's
        losses = task.loss_fn(task.model(batch["image"]), batch)
        losses["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), clip)
        task.optimizer.step()
        task.optimizer.zero_grad(set_to_none=True)
        {k: float(v.detach()) for k, v in losses.items()}  # a hand-written loop also reads its losses
        yield True


def train_interleaved(cfg, device, warmup: int) -> tuple[InterleavedBareLoop, CabrucaTask, CabrucaTask]:
    """One epoch of `cfg` through the shared loop, a bare-loop step after each of its steps; returns the
    step times and both tasks (their models end with the same weights: the two loops do the same work)."""
    bare_task = CabrucaTask(cfg, device)  # built first: the trainer's task seeds itself the same way again
    task = CabrucaTask(cfg, device)
    timer = InterleavedBareLoop(bare_loop(bare_task), warmup)
    schedule, _ = build_lr_schedule(cfg, [g["lr"] for g in task.optimizer.param_groups], task.steps_per_epoch)
    plan = Plan(max_epochs=1, log_every_n_steps=cfg.training.log_every_n_steps)
    Loop(task, plan, callbacks=[timer], schedule=schedule).fit()
    return timer, task, bare_task


def overhead_config(cfg, data_dir: Path, tile: int, batch_size: int, steps: int, warmup: int):
    """`cfg` set for the overhead run: one epoch of `steps + warmup` steps, float32, no schedule, no
    checkpoints, no TensorBoard, no loader workers, so that the bare loop has nothing the trainer skips."""
    c = cfg
    c.data.data_dir, c.data.tile_size, c.data.tile_overlap, c.data.batch_size = (
        str(data_dir),
        tile,
        0,
        batch_size,
    )
    c.data.num_workers, c.training.num_epochs = 0, 1
    c.training.max_steps_per_epoch, c.training.gradient_accumulation_steps = steps + warmup, 1
    c.training.save_every_n_steps, c.training.log_every_n_steps, c.training.compile = 0, 10, False
    c.training.precision, c.training.mixed_precision = "32", False  # the bare loop has no autocast
    c.tracking.tensorboard = False
    c.scheduler.type = "none"
    return c


def bench_overhead(cfg, data_dir: Path, tile: int, batch_size: int, device, steps: int, warmup: int) -> dict:
    """Step times through the shared loop vs a bare loop over the same model init, data order and math,
    alternating step by step; the overhead is the median over step pairs of (trainer / bare) - 1."""
    c = overhead_config(cfg, data_dir, tile, batch_size, steps, warmup)
    timer, _, _ = train_interleaved(c, device, warmup)
    pairs = Comparison(a=Timing(timer.bare), b=Timing(timer.trainer))
    return {
        "tile": tile,
        "steps": len(timer.trainer),
        "trainer_step_ms": 1000 * pairs.b.median,
        "bare_step_ms": 1000 * pairs.a.median,
        "overhead_ratio": pairs.speedup - 1.0,  # median of trainer / bare over pairs, minus 1
        "trainer_timing": pairs.b.summary(),
        "bare_timing": pairs.a.summary(),
    }


def run_benchmark(
    config_source: str,
    tile_sizes: str,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    threads: int | None,
    overhead_tile: int,
    json_out: str | None,
    overrides: tuple[str, ...],
    *,
    peer: PeerRun | None = None,
) -> dict:
    """Every figure `python -m cabruca.bench` prints, measured in one run; written to `json_out` if given.

    `peer`: also train the peer FPN side by side with cabruca's model at each tile size (None: not)."""
    if threads:
        torch.set_num_threads(threads)
    malloc = tune_malloc()  # as the trainer runs: large buffers recycled from the heap (every side alike)
    dev = torch_device(device)
    sizes = [int(s) for s in tile_sizes.split(",") if s.strip()]
    if peer:
        check_tiles(sizes)
    cfg = config_mod.load(config_mod.resolve_source(config_source), overrides=overrides)
    click.echo(
        f"device: {describe_device(dev)}; model {cfg.model.backbone} fpn {cfg.model.fpn_channels} "
        f"heads {cfg.model.head_channels}; batch {batch_size}; medians of {steps} steps after {warmup}; "
        f"{malloc}"
    )
    peak = torch_matmul_peak_gflops(dev)
    click.echo(f"float32 matmul peak (best 2048^2 matmul, same run): {peak:.1f} GFLOP/s")
    results = {"device": describe_device(dev), "matmul_peak_gflops": peak, "tiles": [], "overhead": None}
    if peer:  # shares of a peak timed by the same clock as the side-by-side steps
        peer_peak = torch_matmul_peak_gflops(dev, clock=peer.clock) if peer.cpu_time else peak
        if peer.cpu_time:
            click.echo(
                f"float32 matmul peak by process CPU time (for the side by side): {peer_peak:.1f} GFLOP/s"
            )
        results["peer"] = {
            "model": peer_name(cfg.model.backbone),
            "matmul_peak_gflops": peer_peak,
            "tiles": [],
        }
    with tempfile.TemporaryDirectory() as tmp:
        for tile in sizes:
            data = generate(Path(tmp) / f"scenes_{tile}", num_train=1, num_val=1, image_size=tile, seed=0)
            r = bench_tile(
                config_mod.load(config_mod.resolve_source(config_source), overrides=overrides),
                data,
                tile,
                batch_size,
                dev,
                steps,
                warmup,
            )
            r["share_of_matmul_peak"] = r["train_gflops_achieved"] / peak
            results["tiles"].append(r)
            mem = ", ".join(f"{k[5:]} {v:.0f} MB" for k, v in r.items() if k.startswith("peak_"))
            click.echo(
                f"tile {tile}: train {r['train_tiles_per_s']:.2f} tiles/s ({r['train_step_ms']:.0f} ms/step), "
                f"forward {r['forward_ms_per_batch']:.0f} ms/batch, {r['train_gflop_per_tile']:.1f} GFLOP/tile "
                f"(train step), {r['train_gflops_achieved']:.1f} GFLOP/s = "
                f"{100 * r['share_of_matmul_peak']:.0f}% of matmul peak; peak memory: {mem}"
            )
            if peer:
                side = config_mod.load(config_mod.resolve_source(config_source), overrides=overrides)
                batch = _batch(data, side, tile, batch_size, dev)
                results["peer"]["tiles"].append(
                    compare_with_peer(side, batch, device=dev, peak=peer_peak, run=peer, warmup=warmup)
                )
        if peer:
            click.echo(peer_table(results["peer"]["tiles"], cfg.model.backbone))
        # Many cheap steps: the loop's bookkeeping per step is what is measured, against step-time noise
        # (15 pairs read +2.1% on the idle machine where two runs of 30 read +0.1% and -0.3%).
        o_steps = max(6 * steps, 30)
        scenes = -(-(o_steps + warmup) * batch_size // 4)  # 2x2 tiles per scene
        data = generate(
            Path(tmp) / "overhead", num_train=scenes, num_val=1, image_size=2 * overhead_tile, seed=0
        )
        o = bench_overhead(
            config_mod.load(config_mod.resolve_source(config_source), overrides=overrides),
            data,
            overhead_tile,
            batch_size,
            dev,
            o_steps,
            warmup,
        )
        results["overhead"] = o
        click.echo(
            f"trainer overhead at tile {overhead_tile}: {o['trainer_step_ms']:.1f} ms/step in the training loop vs "
            f"{o['bare_step_ms']:.1f} ms/step in a bare loop: {100 * o['overhead_ratio']:+.2f}% per step "
            f"(median over {o['steps']} step pairs, alternating step by step)\n"
            f"  trainer: {o['trainer_timing']}\n  bare:    {o['bare_timing']}"
        )
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))

    return results
