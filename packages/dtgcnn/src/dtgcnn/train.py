"""`python -m dtgcnn.train`: train DT-GCNN on a mesh dataset (or `--demo` on generated synthetic meshes).

    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --config default_config --verbose
    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/custom --batch-size 64 \\
        --learning-rate 0.0005 --num-epochs 50 --embedding-dim 512
    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --resume last
    python -m dtgcnn.train --demo
    mlx.launch -n 2 -- python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/dp2   # data parallel
Trailing `key=value` arguments override any config key (e.g. `k=10 mining_strategy=semi_hard`).
The run goes through `common.loop.Loop` (see `dtgcnn.trainer`).
"""

from __future__ import annotations

from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx; keep first)
from common.cli import (
    config_option,
    console_script,
    data_dir_option,
    device_option,
    fast_dev_run_option,
    follow_up_command,
    multirun_option,
    option,
    output_dir_option,
    overwrite_option,
    precision_option,
    resume_option,
    run_cli,
    seed_option,
    typed_options,
)
from common.config import bundled_configs, dump_config, load_config
from common.distributed import get_rank, get_world_size
from common.errors import ConfigError, DeviceError
from common.fast_dev_run import FastDevRun, scratch_folder
from common.logs import setup_logging
from common.resume import find_checkpoint, read_training_checkpoint, run_folder_of, saved_config
from common.runs import RunFolder
from dtgcnn.config import TrainConfig
from dtgcnn.config import config_source as resolve_source

# click parameter -> config key, applied only when the user typed the option.
OPTION_KEYS = {
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "num_epochs": "num_epochs",
    "embedding_dim": "embedding_dim",
    "cache_data": "cache_data",
    "device": "device",
    "seed": "seed",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "jit_compile": "jit_compile",
    "precision": "precision",
}
DEMO_DATA = dict(num_subjects=8, per_subject=(8, 4, 4), num_vertices=256)


def demo_data(data_dir: Path) -> Path:
    """Generate the demo's synthetic dataset once (reused when already there)."""
    from dtgcnn.synthetic import SyntheticSpec, generate

    if not (data_dir / "test_data.h5").exists():
        generate(data_dir, SyntheticSpec(**DEMO_DATA))
    return data_dir


HELP = """Train DT-GCNN on a mesh dataset (or --demo on generated synthetic meshes), or with --mode triplets
on text triplets / labelled sentences.

\b
Examples:
  python -m dtgcnn.train --demo
  python -m dtgcnn.train --mode triplets --data data/triplets.json --encoder hashing
  python -m dtgcnn.train --mode triplets --demo
  python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --config default_config --verbose
  python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --resume last
  mlx.launch -n 2 -- python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/dp2

Data parallel: start the same command under mlx.launch (-n N processes on this machine, --hosts h1,h2 or
--hostfile for several machines); each process trains on its P x K group of every global batch.

Trailing KEY=VALUE arguments override any config key (e.g. k=10 mining_strategy=semi_hard). A resumed run
uses the config saved in its checkpoint (unless --config is given); options and overrides typed beside
--resume still apply. Exit status: 0 when the run ends, 130 / 143 when SIGINT / SIGTERM stopped it after
saving checkpoints/last_step.npz (the log names the command that resumes it), 2 for bad input.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=HELP)
@data_dir_option(
    type=click.Path(file_okay=False),
    help="Dataset folder ({split}_metadata.json + {split}_data.h5); a resumed run defaults to its own.",
)
@output_dir_option(
    run_folder=True,
    type=click.Path(file_okay=False),
    help="Run folder (default ./experiments/run_<timestamp>; a resumed run: the checkpoint's run folder).",
)
@config_option(
    "dtgcnn",
    help=f"YAML path or bundled config name ({', '.join(bundled_configs('dtgcnn'))}); a resumed run uses "
    "its saved config unless this is given.",
)
@resume_option()
@overwrite_option()
@click.option(
    "--mode",
    type=click.Choice(["meshes", "triplets"]),
    default="meshes",
    show_default=True,
    help="meshes: 3D-mesh identities (--data-dir); triplets: text triplets or labelled sentences (--data).",
)
@click.option(
    "--data", type=click.Path(dir_okay=False), help="triplets mode: a .json/.csv triplet or text,label file."
)
@click.option("--encoder", help="triplets mode: hashing | hashing:DIM | minilm | precomputed:PATH.")
@option("--batch-size", type=int)
@option("--learning-rate", type=float)
@option("--num-epochs", type=int)
@option("--embedding-dim", type=int)
@option("--gradient-accumulation-steps", type=int, help="Micro-batches per optimizer step.")
@option("--cache-data", is_flag=True, help="Keep meshes in memory after the first read.")
@device_option("auto | cpu | gpu")
@seed_option()
@precision_option(
    help="32 | bf16-mixed | 16-mixed (also float32, bfloat16, float16): the compute dtype; weights stay float32."
)
@option("--jit-compile/--no-jit-compile", default=None, help="mx.compile the training step.")
@click.option(
    "--demo",
    is_flag=True,
    help="Generate synthetic meshes and run a short training (~2 min on CPU); --output-dir is then the "
    "demo's folder (data/ and run/ inside it). Options and key=value arguments beside it apply.",
)
@fast_dev_run_option()
@multirun_option()
@option(
    "--stop-after-steps",
    type=int,
    help="Stop after N optimizer steps, writing a resumable checkpoint (the loop's max_steps).",
)
@click.option(
    "--distributed",
    is_flag=True,
    help="Data parallel over the processes mlx.launch started (implied under mlx.launch; refused without).",
)
@option(
    "--num-gpus",
    type=int,
    default=1,
    show_default=True,
    help="Processes expected (start them with mlx.launch).",
)
@option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (startup phases, per-step details).")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(
    ctx,
    data_dir,
    output_dir,
    config,
    resume,
    mode,
    data,
    encoder,
    demo,
    fast_dev_run,
    stop_after_steps,
    distributed,
    num_gpus,
    print_config,
    verbose,
    overrides,
    **_options,
):
    if mode == "triplets":
        from dtgcnn.text_cli import train_triplets_command

        def run(output_dir, resume):
            return train_triplets_command(
                ctx, data, output_dir, config, resume, encoder, demo, stop_after_steps, print_config, verbose,
                overrides, fast_dev_run=fast_dev_run,
            )  # fmt: skip
    else:

        def run(output_dir, resume):
            return train_meshes(
                ctx, data_dir, output_dir, config, resume, demo, fast_dev_run, stop_after_steps, distributed,
                num_gpus, print_config, verbose, overrides,
            )  # fmt: skip

    if not fast_dev_run or print_config:
        return run(output_dir, resume)
    if resume:
        raise ConfigError("--fast-dev-run starts a throwaway run; it cannot --resume one.")
    with scratch_folder("dtgcnn") as scratch:  # the run (and a demo's data) go here, then vanish
        return run(str(scratch / "out"), None)


def train_meshes(
    ctx,
    data_dir,
    output_dir,
    config,
    resume,
    demo,
    fast_dev_run,
    stop_after_steps,
    distributed,
    num_gpus,
    print_config,
    verbose,
    overrides,
):
    """The meshes mode of `main` (`--fast-dev-run` hands it a scratch `output_dir`)."""
    world = join_processes(distributed, num_gpus)
    main_process = get_rank() == 0
    if demo:
        root = Path(output_dir or "dtgcnn_demo")
        data_dir = data_dir or str(root / "data")
        output_dir = str(root / "run")
    checkpoint = state = None
    if resume:
        checkpoint = find_checkpoint(resume, output_dir)
        state = read_training_checkpoint(checkpoint)
        output_dir = output_dir or str(run_folder_of(Path(checkpoint).resolve()))
        data_dir = data_dir or state.get("data_dir")
    if config:
        source = resolve_source(config)
    elif state is not None:
        source = saved_config(state, TrainConfig)
    else:
        source = "demo_config" if demo else "default_config"
    cfg = load_config(
        TrainConfig, source, package="dtgcnn", cli=typed_options(ctx, OPTION_KEYS), overrides=overrides
    )
    if print_config:
        click.echo(dump_config(cfg))
        return 0
    if not data_dir:
        raise ConfigError("--data-dir is required (or use --demo to train on generated synthetic meshes).")
    if output_dir is None:
        output_dir = f"experiments/run_{shared_timestamp()}"
    if main_process:
        # Claimed before the log file goes in: a new run never writes into another run's folder.
        # A demo replaces the previous demo's run (its folder is fixed); any other run needs --overwrite.
        overwrite = bool(ctx.params["overwrite"]) or (demo and checkpoint is None)
        RunFolder(Path(output_dir).resolve(), resume=checkpoint is not None, overwrite=overwrite)
        setup_logging(
            Path(output_dir) / "logs",
            filename="training_{timestamp}.log",
            level="DEBUG" if verbose else "INFO",
        )
    else:  # the other processes write no files; their console shows warnings and errors only
        setup_logging(None, level="WARNING")
    from dtgcnn.trainer import distributed_command, resume_command, train

    if demo:
        if main_process:
            demo_data(Path(data_dir))
        if world > 1:  # the others wait until rank 0 has written the demo data (an all-reduce as barrier)
            from common import mlx_support

            mlx_support.all_reduce_mean({"ready": 1.0})
    if fast_dev_run:  # N steps, one validation, its summary line; the final test is skipped (max_steps)
        result = train(
            cfg, data_dir, output_dir, callbacks=[FastDevRun(fast_dev_run)], max_steps=fast_dev_run
        )
        return result.exit_code
    result = train(
        cfg, data_dir, output_dir, resume=checkpoint, resume_state=state, max_steps=stop_after_steps
    )
    if not main_process:
        return result.exit_code
    out = result.run_dir
    click.echo(f"\noutputs in {out}:")
    for rel in (
        "metrics_history.json",
        "checkpoints/best_model.npz",
        "plots",
        "logs",
        "config.yaml",
        "test_metrics.json",
    ):
        if (out / rel).exists():
            click.echo(f"  {out / rel}")
    v = result.metrics
    if "val/accuracy" in v:
        click.echo(
            f"last validation: accuracy {v['val/accuracy']:.3f}, recall@1 {v['val/recall_at_1']:.3f}, "
            f"ROC-AUC {v['val/roc_auc']:.3f}"
        )
    if result.test:
        click.echo(
            f"test (best checkpoint): accuracy {result.test['accuracy']:.3f}, "
            f"recall@1 {result.test['recall_at_1']:.3f}"
        )
    if result.test is None and result.checkpoint is not None and (result.interrupted or stop_after_steps):
        why = f"interrupted by {result.interrupted}" if result.interrupted else result.stop_reason
        command = follow_up_command(resume_command(data_dir, distributed_command(world)))
        click.echo(f"{why}: resume with {command} --resume {result.checkpoint}")
    return result.exit_code


def join_processes(distributed: bool, num_gpus: int) -> int:
    """Join the mx.distributed group when mlx.launch started this process; the number of processes.

    `--distributed` / `--num-gpus N` are implied under mlx.launch (N, when given, must match) and refused
    without it, naming the command to use."""
    from common import mlx_support

    group = mlx_support.init_distributed()
    world = 1 if group is None else group.size()
    if world == 1 and (distributed or num_gpus > 1):
        n = max(num_gpus, 2)
        raise DeviceError(
            "Data-parallel training runs one process per device, started by MLX's launcher: "
            f"mlx.launch -n {n} -- python -m dtgcnn.train ... (one machine; several: --hosts h1,h2 or "
            "--hostfile hosts.json). Without mlx.launch, drop --distributed / --num-gpus."
        )
    if world > 1 and num_gpus > 1 and num_gpus != world:
        raise DeviceError(f"--num-gpus {num_gpus} but mlx.launch started {world} processes.")
    return world


def shared_timestamp() -> str:
    """`common.runs.timestamp()`, the same on every process of a data-parallel run (rank 0's clock)."""
    import time

    from common import mlx_support

    now = time.time() if get_rank() == 0 else 0.0
    now = mlx_support.all_reduce_mean({"t": now})["t"] * get_world_size()
    return time.strftime("%Y%m%d_%H%M%S", time.localtime(now))


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
