"""`python -m cabruca.bench --scaling`: time per epoch and peak memory as the tiles per epoch, the batch and
the FPN width double, over a few points each, to show which costs grow linearly.

An epoch is cabruca's training step (`engine.CabrucaTask`: its loader reading and augmenting the tiles,
forward, the multi-task loss, backward, the clipped AdamW step) over every tile of the epoch once, from
synthetic scenes written before the timing (2 x 2 tiles per scene), in one process (no loader workers),
float32. Doubling the batch doubles the tiles per epoch with it, so an epoch keeps its number of steps. The
width is the FPN's (`model.fpn_channels`); the heads' fused feature keeps the default model's proportion
(`model.head_channels` = half of it), so the last point of the default table is the default model's width.
The backbone does not change with it.

Each point trains in a fresh process (`python -m cabruca.bench_growth`): a process's peak resident memory
only ever grows. Memory is the growth of the peak over the process's memory before the scenes were made
(torch and timm excluded), or the CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import click

from common.errors import ConfigError
from common.growth import (
    growth_report,
    measure_growth,
    memory_baseline_mb,
    peak_rss_growth_mb,
    timed_epochs,
)

TILES_PER_SCENE = 4  # synthetic scenes of 2 x 2 tiles
# the base point: small enough that the whole table takes about a minute and a half on an idle 2-core machine
# (one timed epoch: a step of the default backbone costs more than the other packages' whole epochs)
BASE = {"tiles": 8, "batch_size": 2, "fpn": 32, "tile": 128, "epochs": 1}
# what doubles: the tiles per epoch, the batch (with the tiles, so an epoch keeps its steps), the FPN width
AXES = {"tiles": (), "batch_size": ("tiles",), "fpn": ()}


def check_base(base: dict) -> None:
    """A base whose points can be trained: whole scenes, whole epochs of batches, a head width."""
    tiles, batch = base["tiles"], base["batch_size"]
    if batch < 1:
        raise ConfigError(f"--batch-size {batch}: the scaling table needs at least one tile per batch.")
    if tiles % TILES_PER_SCENE or tiles % batch:
        raise ConfigError(
            f"the scaling table's {tiles} tiles per epoch must be whole scenes of {TILES_PER_SCENE} tiles "
            f"and whole batches of {batch}."
        )
    if base["fpn"] < 2 or base["fpn"] % 2:
        raise ConfigError(f"the scaling table's FPN width {base['fpn']} must be even (the heads take half).")
    if base["tile"] < 32:
        raise ConfigError(f"--tile-sizes {base['tile']}: the scaling table's tiles need at least 32 pixels.")


def point_config(source: str, overrides: tuple[str, ...], data_dir: Path, point: dict):
    """The config `source` with the user's overrides, at the point's sizes, set up as the bench's steps run:
    float32, uncompiled, no loader workers."""
    from cabruca import config as config_mod

    return config_mod.load(
        config_mod.resolve_source(source),
        overrides=[
            *overrides,
            f"data.data_dir={data_dir}",
            f"data.tile_size={point['tile']}",
            "data.tile_overlap=0",
            f"data.batch_size={point['batch_size']}",
            "data.num_workers=0",
            f"model.fpn_channels={point['fpn']}",
            f"model.head_channels={point['fpn'] // 2}",
            "training.precision=32",
            "training.mixed_precision=false",
            "training.compile=false",
        ],
    )


def measure_point(
    tiles: int,
    batch_size: int,
    fpn: int,
    tile: int,
    epochs: int,
    config: str = "training_config",
    overrides: tuple[str, ...] = (),
    device: str = "auto",
) -> dict:
    """One point in this process: the median of `epochs` timed epochs (wall and CPU time) after one
    untimed step, and peak memory in MiB."""
    import torch

    from cabruca.engine import CabrucaTask
    from cabruca.synthetic import generate
    from common.devices import torch_device

    point = dict(tiles=tiles, batch_size=batch_size, fpn=fpn, tile=tile)
    check_base(point)
    dev = torch_device(device)
    before_mb = memory_baseline_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory(prefix="cabruca-growth-") as tmp:
        scenes = tiles // TILES_PER_SCENE
        data = generate(Path(tmp), num_train=scenes, num_val=1, image_size=2 * tile, seed=0)
        task = CabrucaTask(point_config(config, overrides, data, point), dev)

        def train(epoch: int, steps: int | None = None) -> None:
            for i, batch in enumerate(task.batches(epoch, 0)):
                if i == steps:
                    break
                task.micro_step(batch, 1.0)
                task.optimizer_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        train(0, steps=1)  # warm-up: the allocator's first buffers, the kernels' first calls
        epoch = itertools.count(1)  # each timed epoch its own batch order, as training's
        timing = timed_epochs(lambda: train(next(epoch)), epochs)
    peak_mb = (
        torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_growth_mb(before_mb)
    )
    return {
        **timing,
        "peak_mb": peak_mb,
        "steps": task.num_batches(0),
    }


def growth(
    base: dict,
    points: int,
    config: str = "training_config",
    overrides: tuple[str, ...] = (),
    threads: int | None = None,
    device: str = "auto",
    in_process: bool = False,
) -> dict[str, list[dict]]:
    """For each axis, `points` measurements doubling it from `base`, each in a fresh process (`in_process`:
    all in this one, for a test's tiny points)."""
    check_base(base)
    if in_process:

        def measure(point: dict) -> dict:
            return measure_point(**point, config=config, overrides=overrides, device=device)

        return measure_growth("cabruca.bench_growth", base, AXES, points, measure=measure)
    args = [f"--config={config}", f"--device={device}", *(f"--override={o}" for o in overrides)]
    args += [f"--threads={threads}"] if threads else []
    return measure_growth("cabruca.bench_growth", base, AXES, points, args=args)


def report(tables: dict[str, list[dict]], base: dict, backbone: str) -> str:
    title = (
        f"scaling ({backbone} + FPN, tiles of {base['tile']} px; base: {base['tiles']} tiles, batch "
        f"{base['batch_size']}, FPN {base['fpn']} (heads {base['fpn'] // 2}); each point a fresh process; "
        f"doubling the batch doubles the tiles per epoch)"
    )
    return growth_report(title, tables)


@click.command(help="One point of `python -m cabruca.bench --scaling` (run by the bench in a fresh process).")
@click.option("--tiles", type=int, required=True)
@click.option("--batch_size", type=int, required=True)
@click.option("--fpn", type=int, required=True)
@click.option("--tile", type=int, required=True)
@click.option("--epochs", type=int, required=True)
@click.option("--config", default="training_config")
@click.option("--override", "overrides", multiple=True, help="A key=value override of the config.")
@click.option("--device", default="auto")
@click.option("--threads", type=int, default=0)
@click.option("--json", "json_out", required=True)
def main(tiles, batch_size, fpn, tile, epochs, config, overrides, device, threads, json_out):
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    figures = measure_point(tiles, batch_size, fpn, tile, epochs, config, overrides, device)
    Path(json_out).write_text(json.dumps(figures))


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
