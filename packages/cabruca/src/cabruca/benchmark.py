"""The measurements behind `python -m cabruca.bench` (the command line is `cabruca.bench`).

Per tile size (default 256 and 512): training tiles/s, forward ms per batch, peak memory, FLOPs per tile
(torch.utils.flop_counter over one real step), achieved GFLOP/s and its share of the float32 matmul peak
timed in the same run. Then the trainer's overhead: the same steps through the shared training loop
(`common.loop.Loop` over cabruca's task) and through a bare loop (same model init, data, optimizer, loss, clipping), compared as a ratio of median step times.
Timings are medians after warm-up; on a shared machine they are noisy.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.benchmarking import median_seconds, torch_matmul_peak_gflops
from common.callbacks import Callback
from common.devices import describe_device, peak_memory_mb, torch_device
from common.loop import Loop, Plan
from common.sampler import ResumableSampler

from . import config as config_mod
from .data import CabrucaTiles, collate, load_split, make_loader
from .engine import CabrucaTask
from .losses import MultiTaskLoss
from .model import build_model
from .optim import build_lr_schedule
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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _batch(data_dir, cfg, tile, batch_size, device)
    x = batch["image"]

    def train_step():
        loss = loss_fn(model(x), batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        loss_fn(model(x), batch)["loss"].backward()
    train_flops = fc.get_total_flops()
    opt.zero_grad(set_to_none=True)
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


class StepTimes(Callback):
    """Wall seconds between consecutive optimizer-step ends (the first measured from the fit's start)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_fit_start(self, loop) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, loop, outputs) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def _trainer_steps(c, data_dir: Path, device, warmup: int) -> list[float]:
    """One epoch through the shared loop with cabruca's task (step metrics, accumulation bookkeeping, log
    cadence), without checkpoints or trackers; validation runs after the timed steps."""
    task = CabrucaTask(c, device)
    schedule, _ = build_lr_schedule(c, [g["lr"] for g in task.optimizer.param_groups], task.steps_per_epoch)
    timer = StepTimes()
    plan = Plan(max_epochs=1, log_every_n_steps=c.training.log_every_n_steps)
    Loop(task, plan, callbacks=[timer], schedule=schedule).fit()
    return timer.times[warmup:]


def _bare_steps(c, data_dir: Path, device, num_batches: int, warmup: int) -> list[float]:
    """The loop a user would write by hand, fed by the same loader, model init and math."""
    torch.manual_seed(c.seed)
    model = build_model(c.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.optimizer.lr, weight_decay=c.optimizer.weight_decay)
    loss_fn = MultiTaskLoss(c.loss)
    ds = CabrucaTiles(load_split(data_dir / "train", c.data), c.data, seed=c.seed, train=True)
    sampler = ResumableSampler(len(ds), c.data.batch_size, seed=c.seed, max_batches=num_batches)
    times, last = [], time.perf_counter()
    for batch in make_loader(ds, c.data, sampler):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        loss = loss_fn(model(batch["image"]), batch)["loss"]
        loss.backward()
        if c.training.gradient_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.training.gradient_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # a hand-written loop also looks at its loss
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[warmup:]


def bench_overhead(
    cfg, data_dir: Path, tile: int, batch_size: int, device, steps: int, warmup: int, rounds: int = 2
) -> dict:
    """Median step time through the shared loop vs a bare loop over the same model init, data order and math.
    The two alternate `rounds` times so that load from other processes hits both alike."""
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
    c.tracking.tensorboard = False
    c.scheduler.type = "none"
    loop_times, bare_times = [], []
    for _ in range(rounds):
        loop_times += _trainer_steps(c, data_dir, device, warmup)
        bare_times += _bare_steps(c, data_dir, device, steps + warmup, warmup)
    t_loop, t_bare = statistics.median(loop_times), statistics.median(bare_times)
    return {
        "tile": tile,
        "steps": len(loop_times),
        "trainer_step_ms": 1000 * t_loop,
        "bare_step_ms": 1000 * t_bare,
        "overhead_ratio": t_loop / t_bare - 1.0,
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
) -> dict:
    """Every figure `python -m cabruca.bench` prints, measured in one run; written to `json_out` if given."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch_device(device)
    sizes = [int(s) for s in tile_sizes.split(",") if s.strip()]
    cfg = config_mod.load(config_mod.resolve_source(config_source), overrides=overrides)
    click.echo(
        f"device: {describe_device(dev)}; model {cfg.model.backbone} fpn {cfg.model.fpn_channels} "
        f"heads {cfg.model.head_channels}; batch {batch_size}; medians of {steps} steps after {warmup}"
    )
    peak = torch_matmul_peak_gflops(dev)
    click.echo(f"float32 matmul peak (best 2048^2 matmul, same run): {peak:.1f} GFLOP/s")
    results = {"device": describe_device(dev), "matmul_peak_gflops": peak, "tiles": [], "overhead": None}
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
        # Many cheap steps: the loop's bookkeeping per step is what is measured, against step-time noise.
        o_steps = max(3 * steps, 15)
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
            f"(medians of {o['steps']} steps each, alternating)"
        )
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))

    return results
