"""`python -m dtgcnn.train`: train DT-GCNN on a mesh dataset (or `--demo` on generated synthetic meshes).

    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --config default_config --verbose
    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/custom --batch-size 64 \\
        --learning-rate 0.0005 --num-epochs 50 --embedding-dim 512
    python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/resumed --config default_config \\
        --resume ./experiments/run1/checkpoints/best_model.npz
    python -m dtgcnn.train --demo
Trailing `key=value` arguments override any config key (e.g. `k=10 mining_strategy=semi_hard`).
"""

from __future__ import annotations

from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx; keep first)
from common.cli import run_cli, typed_options
from common.config import bundled_configs, dump_config, load_config
from common.errors import ConfigError, DeviceError
from common.logs import setup_logging
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


HELP = """Train DT-GCNN on a mesh dataset (or --demo on generated synthetic meshes).

\b
Examples:
  python -m dtgcnn.train --demo
  python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 --config default_config --verbose
  python -m dtgcnn.train --data-dir ./data --output-dir ./experiments/run1 \\
      --resume ./experiments/run1/checkpoints/last_step.npz

Trailing KEY=VALUE arguments override any config key (e.g. k=10 mining_strategy=semi_hard).
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=HELP)
@click.option(
    "--data-dir",
    "--data_dir",
    type=click.Path(file_okay=False),
    help="Dataset folder ({split}_metadata.json + {split}_data.h5).",
)
@click.option(
    "--output-dir",
    "--output_dir",
    type=click.Path(file_okay=False),
    help="Run folder (default ./experiments/run_<timestamp>).",
)
@click.option(
    "--config",
    "config_source",
    default=None,
    help=f"YAML path or bundled config name ({', '.join(bundled_configs('dtgcnn'))}).",
)
@click.option("--resume", type=click.Path(dir_okay=False), help="Checkpoint to continue from exactly.")
@click.option("--batch-size", type=int)
@click.option("--learning-rate", type=float)
@click.option("--num-epochs", type=int)
@click.option("--embedding-dim", type=int)
@click.option("--gradient-accumulation-steps", type=int)
@click.option("--cache-data", is_flag=True, help="Keep meshes in memory after the first read.")
@click.option("--device", help="auto | cpu | gpu")
@click.option("--seed", type=int)
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--jit-compile/--no-jit-compile", default=None, help="mx.compile the training step.")
@click.option(
    "--demo", is_flag=True, help="Generate synthetic meshes and run a short training (~2 min on CPU)."
)
@click.option(
    "--stop-after-steps", type=int, help="Stop like an interrupt after N global steps (writes a checkpoint)."
)
@click.option("--distributed", is_flag=True, help="Multi-device data parallel (not available with MLX yet).")
@click.option("--num-gpus", type=int, default=1, show_default=True)
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging (startup phases, per-step details).")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(
    ctx,
    data_dir,
    output_dir,
    config_source,
    resume,
    demo,
    stop_after_steps,
    distributed,
    num_gpus,
    print_config,
    verbose,
    overrides,
    **_options,
):
    if distributed or num_gpus > 1:
        raise DeviceError(
            "Multi-GPU training (--distributed / --num-gpus > 1) is not supported: MLX has no "
            "multi-device data parallelism on one machine. Train on one device (drop the flag)."
        )
    source = resolve_source(config_source, "demo_config" if demo else "default_config")
    cfg = load_config(
        TrainConfig, source, package="dtgcnn", cli=typed_options(ctx, OPTION_KEYS), overrides=overrides
    )
    if print_config:
        click.echo(dump_config(cfg))
        return
    if demo:
        root = Path(output_dir or "dtgcnn_demo")
        data_dir = data_dir or str(root / "data")
        output_dir = str(root / "run")
    if not data_dir:
        raise ConfigError("--data-dir is required (or use --demo to train on generated synthetic meshes).")
    if output_dir is None:
        from common.runs import timestamp

        output_dir = f"experiments/run_{timestamp()}"
    setup_logging(
        Path(output_dir) / "logs", filename="training_{timestamp}.log", level="DEBUG" if verbose else "INFO"
    )
    from dtgcnn.trainer import train

    if demo:
        demo_data(Path(data_dir))
    result = train(cfg, data_dir, output_dir, resume=resume, stop_after_steps=stop_after_steps)
    out = result.output_dir
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
    if result.final_val:
        v = result.final_val
        click.echo(
            f"final validation: accuracy {v['accuracy']:.3f}, recall@1 {v['recall_at_1']:.3f}, "
            f"ROC-AUC {v['roc_auc']:.3f}"
        )
    if result.test:
        click.echo(
            f"test (best checkpoint): accuracy {result.test['accuracy']:.3f}, "
            f"recall@1 {result.test['recall_at_1']:.3f}"
        )
    if result.interrupted:
        click.echo(f"interrupted: resume with --resume {out / 'checkpoints' / 'last_step.npz'}")


if __name__ == "__main__":
    run_cli(main)
