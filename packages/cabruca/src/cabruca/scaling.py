"""`python -m cabruca.bench --nproc N`: training tiles/s in one process and as N processes under torchrun.

Both sides time the same training step (model, multi-task loss, the trainer's optimizer step) on the same
batch per process; the N processes wrap the model in DistributedDataParallel as `cabruca.training` does, so
every backward all-reduces the gradients. Global tiles/s counts every process's tiles; the scaling
efficiency is (N-process tiles/s) / (N x 1-process tiles/s). `--precision` (autocast, e.g. bf16-mixed) and `--compile`
(torch.compile of the model) apply to both sides. Each row also carries the training FLOPs per tile (counted
eagerly over one step), so a caller can put the tiles/s against a device's peak; the matmul peak itself is
left out here (the single-process benchmark times it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.benchmarking import measure_scaling, median_seconds, torchrun_part
from common.devices import torch_device

from . import config as config_mod
from .benchmark import _batch
from .losses import MultiTaskLoss
from .model import build_model
from .optim import backward_and_step
from .synthetic import generate


def time_training_step(
    cfg,
    data_dir: Path,
    tile: int,
    batch_size: int,
    device,
    steps: int,
    warmup: int,
    precision: str,
    compile_: bool,
) -> dict:
    """Median seconds of one training step of `batch_size` tiles on this process (DDP when launched as N)."""
    from common.distributed import get_world_size
    from common.torch_support import parse_precision

    world = get_world_size()
    autocast = parse_precision(precision, device).autocast
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_fn = MultiTaskLoss(cfg.loss)
    backward_and_step_ = backward_and_step(model, cfg, device, precision)
    batch = _batch(data_dir, cfg, tile, batch_size, device)
    forward = net

    def train_step() -> None:
        with autocast():
            loss = loss_fn(forward(batch["image"]), batch)["loss"]
        backward_and_step_(loss)

    with FlopCounterMode(display=False) as counter:  # one eager step, counted (an untimed warm-up step too)
        train_step()
    if compile_:  # the next (untimed) steps compile, as a compiled training run's first steps do
        forward = torch.compile(net)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    step_s = median_seconds(train_step, warmup=warmup, repeats=steps, sync=sync)
    return {
        "tile": tile,
        "batch_per_process": batch_size,
        "precision": precision,
        "compiled": compile_,
        "step_s": step_s,
        # the processes step together (the all-reduce waits for all): global tiles per step over its time
        "tiles_per_s": batch_size * world / step_s,
        "train_gflop_per_tile": counter.get_total_flops() / batch_size / 1e9,
    }


def measure_this_process(
    config_source, tile_sizes, batch_size, steps, warmup, device, overrides, json_out, precision, compile_
) -> None:
    """The training steps as one process of a torchrun run (or alone); rank 0 writes them to `json_out`."""
    with torchrun_part(torch_device(device), json_out) as (dev, rows), tempfile.TemporaryDirectory() as tmp:
        for tile in [int(s) for s in tile_sizes.split(",") if s.strip()]:
            data = generate(Path(tmp) / f"scenes_{tile}", num_train=1, num_val=1, image_size=tile, seed=0)
            cfg = config_mod.load(config_mod.resolve_source(config_source), overrides=overrides)
            rows.append(
                time_training_step(cfg, data, tile, batch_size, dev, steps, warmup, precision, compile_)
            )


def bench_scaling(nproc: int, measurement_args: list[str]) -> dict:
    """The training steps alone and as `nproc` torchrun processes; global tiles/s and scaling efficiency."""
    run = measure_scaling(
        "cabruca.bench",
        ["--launched-part", *measurement_args],
        nproc,
        launcher="torchrun",
        json_flag="--json-out",
    )
    rows = []
    for one, many in run.pairs(lambda r: r["tile"]):
        row = run.compare(f"tile {one['tile']}", one["tiles_per_s"], many["tiles_per_s"])
        row |= {
            k: one[k] for k in ("tile", "batch_per_process", "precision", "compiled", "train_gflop_per_tile")
        }
        rows.append(row)
    click.echo(run.table(rows, unit="tiles/s"))
    return run.as_json(rows)
