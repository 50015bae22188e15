"""`python -m cabruca.bench`: training and inference speed of the configured model (the README's figures).

Per tile size (default 256 and 512): training tiles/s, forward ms per batch, peak memory, FLOPs per tile
(torch.utils.flop_counter over one real step), achieved GFLOP/s and its share of the float32 matmul peak
timed in the same run. Then the trainer's overhead: the same steps through the shared training loop
(`common.loop.Loop` over cabruca's task) and through a bare loop (same model init, data, optimizer, loss, clipping), compared as a ratio of median step times.
Timings are medians after warm-up; on a shared machine they are noisy.

`--nproc N` measures scale-out instead: the training step at each tile size, once in one process and once as
N processes under `torchrun --standalone --nproc_per_node N` (DistributedDataParallel, as `cabruca.train`
trains under torchrun), both with cores // N threads per process and the same batch per process; it reports
global tiles/s for both and the scaling efficiency (`cabruca.scaling`).

`--peer` (on by default) also trains the peer, the FPN a user would otherwise train (`cabruca.peers`), side
by side with cabruca's model at each tile size, steps interleaved, and prints tiles/s, FLOPs per tile and
share of the matmul peak of both and their ratio.

This module holds the command line only and stays light (torch is imported when the command runs, so
`--help` answers at once); the measurements are `cabruca.benchmark`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
@click.option(
    "--nproc",
    type=int,
    default=0,
    show_default=True,
    help="Measure scale-out instead: training tiles/s in 1 process and in N processes under torchrun "
    "(cores // N threads each), with the scaling efficiency. 0 = the single-process benchmark.",
)
@click.option(
    "--precision",
    default="32",
    show_default=True,
    help="With --nproc: autocast precision of the timed steps (32 | bf16-mixed | 16-mixed).",
)
@click.option("--compile", "compile_", is_flag=True, help="With --nproc: torch.compile the model first.")
@click.option("--launched-part", is_flag=True, hidden=True, help="One process of the --nproc measurement.")
@click.option(
    "--peer/--no-peer",
    "peer",
    default=True,
    show_default=True,
    help="Also train the peer FPN side by side with cabruca's model at each tile size, interleaved "
    "(see cabruca.peers).",
)
@click.option(
    "--peer-steps", default=10, show_default=True, help="At least this many interleaved step pairs."
)
@click.option("--peer-seconds", default=20.0, show_default=True, help="... and this many seconds of steps.")
@click.option(
    "--cpu-time",
    is_flag=True,
    help="Time the side-by-side steps (and the peak their shares are of) by this process's CPU time, "
    "steadier than wall time on a machine other jobs load (needs --threads 1).",
)
@click.option(
    "--scaling",
    is_flag=True,
    help="Measure the scaling table instead: time per epoch and peak memory as the tiles per epoch, the batch "
    "and the FPN width double (3 points each), from a small base (tiles of 128 px, batch 2; the first of "
    "--tile-sizes and --batch-size change it).",
)
@click.argument("overrides", nargs=-1)
def main(
    config_source,
    tile_sizes,
    batch_size,
    steps,
    warmup,
    device,
    threads,
    overhead_tile,
    json_out,
    nproc,
    precision,
    compile_,
    launched_part,
    peer,
    peer_steps,
    peer_seconds,
    cpu_time,
    scaling,
    overrides,
):
    """Benchmark cabruca's model: speed, FLOPs, memory, matmul-peak share, trainer overhead."""
    if scaling:
        _scaling_table(config_source, device, threads, json_out, overrides)
        return
    if launched_part or nproc > 0:
        measured = (config_source, tile_sizes, batch_size, steps, warmup, device, overrides)
        _scale_out(measured, precision, compile_, threads, json_out, nproc)
        return
    if cpu_time and threads != 1:
        raise click.UsageError("--cpu-time needs --threads 1: a process's CPU time adds up all its threads'")
    from .benchmark import run_benchmark
    from .peers.side_by_side import PeerRun

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
        peer=PeerRun(peer_steps, peer_seconds, cpu_time) if peer else None,
    )


def _scale_out(measured: tuple, precision: str, compile_: bool, threads, json_out, nproc: int) -> None:
    """`--nproc N` (both measurements, the table) or `--launched-part` (one process of them)."""
    import torch

    from .scaling import bench_scaling, measure_this_process

    if threads:
        torch.set_num_threads(threads)
    if nproc <= 0:  # --launched-part: one process of the measurement
        measure_this_process(*measured, json_out, precision, compile_)
        return
    config_source, tile_sizes, batch_size, steps, warmup, device, overrides = measured
    args = [f"--config={config_source}", f"--tile-sizes={tile_sizes}", f"--batch-size={batch_size}"]
    args += [f"--steps={steps}", f"--warmup={warmup}", f"--device={device}", f"--precision={precision}"]
    args += ["--compile"] * compile_ + list(overrides)
    figures = bench_scaling(nproc, args)
    if json_out:
        Path(json_out).write_text(json.dumps({"scaling": figures}, indent=2))
        click.echo(f"wrote {json_out}")


def _scaling_table(config_source: str, device: str, threads, json_out, overrides: tuple[str, ...]) -> None:
    """`--scaling`: the base is the table's own small one, with the tile size and batch the user typed."""
    from common.cli import typed_options

    from . import bench_growth
    from . import config as config_mod

    backbone = config_mod.load(config_mod.resolve_source(config_source), overrides=overrides).model.backbone
    base = dict(bench_growth.BASE)
    typed = typed_options(click.get_current_context(), {"tile_sizes": "tile", "batch_size": "batch_size"})
    if "tile" in typed:
        first = str(typed["tile"]).split(",")[0].strip()
        if not first.isdigit():
            raise click.BadParameter(
                f"{typed['tile']!r}: expected tile sizes in pixels", param_hint="--tile-sizes"
            )
        base["tile"] = int(first)
    if "batch_size" in typed:  # the same batches per epoch as the default base
        base["tiles"] = base["tiles"] // base["batch_size"] * typed["batch_size"]
        base["batch_size"] = typed["batch_size"]
    tables = bench_growth.growth(base, 3, config_source, overrides, threads, device)
    click.echo(bench_growth.report(tables, base, backbone))
    if json_out:
        Path(json_out).write_text(json.dumps({"scaling_table": tables, "base": base}, indent=2))
        click.echo(f"wrote {json_out}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
