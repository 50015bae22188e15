"""`python -m cabruca.bench`: training and inference speed of the configured model (the README's figures).

Per tile size (default 256 and 512): training tiles/s, forward ms per batch, peak memory, FLOPs per tile
(torch.utils.flop_counter over one real step), achieved GFLOP/s and its share of the float32 matmul peak
timed in the same run. Then the trainer's overhead: the same steps through the shared training loop
(`common.loop.Loop` over cabruca's task) and through a bare loop (same model init, data, optimizer, loss, clipping), compared as a ratio of median step times.
Timings are medians after warm-up; on a shared machine they are noisy.

This module holds the command line only and stays light (torch is imported when the command runs, so
`--help` answers at once); the measurements are `cabruca.benchmark`.
"""

from __future__ import annotations

import click

from common.cli import console_script, run_cli


@click.command()
@click.option(
    "--config",
    "config_source",
    default="training_config",
    show_default=True,
    help="Config whose model is measured.",
)
@click.option("--tile-sizes", default="256,512", show_default=True, help="Comma-separated tile sizes.")
@click.option("--batch-size", default=2, show_default=True, help="Tiles per step.")
@click.option("--steps", default=5, show_default=True, help="Timed steps per measurement (median).")
@click.option("--warmup", default=2, show_default=True, help="Untimed warm-up steps.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | mps.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option(
    "--overhead-tile", default=128, show_default=True, help="Tile size of the trainer-overhead run."
)
@click.option(
    "--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the figures as JSON."
)
@click.argument("overrides", nargs=-1)
def main(
    config_source, tile_sizes, batch_size, steps, warmup, device, threads, overhead_tile, json_out, overrides
):
    """Benchmark cabruca's model: speed, FLOPs, memory, matmul-peak share, trainer overhead."""
    from .benchmark import run_benchmark

    run_benchmark(
        config_source,
        tile_sizes,
        batch_size,
        steps,
        warmup,
        device,
        threads,
        overhead_tile,
        json_out,
        overrides,
    )


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
