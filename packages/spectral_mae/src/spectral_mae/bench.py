"""Training-step benchmark: samples/s, tokens/s, FLOPs per sample, achieved GFLOP/s as a share of the
machine's matmul peak (timed in the same run), forward ms per batch, peak memory.

    python -m spectral_mae.bench                       # mae_tiny and mae_base at 500x500x30 with both decoders,
                                                       # + the MAE yardstick
    python -m spectral_mae.bench --models mae_base --decoders divided --steps 3

FLOPs are counted by torch.utils.flop_counter over one real forward+backward (matmuls and the fused
scaled-dot-product attention kernels included); timings are medians over `--steps` steps after `--warmup`.
The yardstick is the original MAE ViT-Base/16 (224x224x3, 16x16 patches, mask 0.75, decoder 512x8), built
from the same code with 16x16x3 tokens, so both are measured by the same step on the same machine. Each model
(at the first decoder pattern) is then timed again beside it, eager, the two steps alternating until both have
`--pairs` steps and `--pair-seconds` of steps, for the ratio of their shares of the peak under the same load.

    python -m spectral_mae.bench --nproc 2             # scale-out: 1 process vs 2 under torchrun

`--nproc N` times the same steps once in one process and once as N processes under `torchrun --standalone
--nproc_per_node N` (DistributedDataParallel, as `spectral_mae.train_ddp` trains), both with cores // N
threads per process and the same batch per process, and reports global samples/s and the scaling efficiency.
"""

from __future__ import annotations

import click

from common.cli import console_script, forward_to, run_cli

# `from spectral_mae.bench import bench_model` (and the other names of `spectral_mae.benchmark`) keeps
# working; the module, with torch and timm, is imported on first use, not when the command line starts.
__getattr__ = forward_to("spectral_mae.benchmark", __name__)


@click.command()
@click.option("--models", default="mae_tiny,mae_base", show_default=True, help="Comma-separated variants.")
@click.option(
    "--decoders",
    default="divided,joint",
    show_default=True,
    help="Comma-separated decoder attention patterns (model.decoder_attention) to time for each model.",
)
@click.option(
    "--img-size", default=500, show_default=True, help="Cube height/width (the default config's 500)."
)
@click.option("--batch-size", default=2, show_default=True, help="Samples per step.")
@click.option("--steps", default=3, show_default=True, help="Timed steps (median reported).")
@click.option("--warmup", default=1, show_default=True, help="Untimed steps first (the first counts FLOPs).")
@click.option(
    "--yardstick/--no-yardstick",
    default=True,
    show_default=True,
    help="Also time the original MAE ViT-B/16 (224x224, mask 0.75, batch 8) in the same run.",
)
@click.option(
    "--pairs", default=5, show_default=True, help="Beside the yardstick: at least this many step pairs..."
)
@click.option("--pair-seconds", default=30.0, show_default=True, help="... and this many seconds of steps.")
@click.option(
    "--quick",
    is_flag=True,
    help="Check the machinery, not the speed: 1 warm-up and 1 timed step, 2 step pairs beside the yardstick.",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--amp", is_flag=True, help="bf16 autocast.")
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the spectral models' training forward (general.compile); the yardstick stays "
    "the original eager MAE.",
)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write results here."
)
@click.option(
    "--nproc",
    type=int,
    default=0,
    help="Measure scale-out instead: the models' steps in 1 process and in N processes under torchrun "
    "(cores // N threads each), with the scaling efficiency. 0 = the single-process benchmark.",
)
@click.option("--launched-part", is_flag=True, hidden=True, help="One process of the --nproc measurement.")
@click.option(
    "--scaling",
    is_flag=True,
    help="Measure the scaling table instead: time per epoch and peak memory as the images per epoch, the "
    "batch and the depth double (3 points each, 2 with --quick), mae_tiny at 100x100 from a small base "
    "(--batch-size and --img-size change it).",
)
def main(scaling, **options):
    if scaling:
        return _scaling_table(options)
    from spectral_mae.benchmark import run

    return run(**options)


def _scaling_table(options: dict) -> None:
    """`--scaling`: the base is the table's own small one, with the batch and image size the user typed."""
    import json
    from pathlib import Path

    from common.cli import typed_options
    from spectral_mae import bench_growth

    base = dict(bench_growth.BASE)
    typed = typed_options(click.get_current_context(), {"batch_size": "batch_size", "img_size": "img_size"})
    if "batch_size" in typed:  # the same batches per epoch as the default base
        base["images"] = base["images"] // base["batch_size"] * typed["batch_size"]
    base |= typed | {"epochs": 1 if options["quick"] else base["epochs"]}
    tables = bench_growth.growth(
        base, points=2 if options["quick"] else 3, threads=options["threads"], device=options["device"]
    )
    click.echo(bench_growth.report(tables, base))
    if options["json_path"]:
        Path(options["json_path"]).write_text(json.dumps({"scaling_table": tables, "base": base}, indent=2))


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
