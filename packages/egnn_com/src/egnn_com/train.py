"""`python -m egnn_com.train`: train the GCN baseline or the EGNN on a folder of graph files.

    python -m egnn_com.train --fast_dev_run 10 --debug
    python -m egnn_com.train --precision 16-mixed --use_wandb --max_epochs 200
    python -m egnn_com.train --data_dir data/my_dataset --checkpoint_dir experiments/run_1 --batch_size 32 \\
        --hidden_dim 256 --wandb_name large_model_experiment
    python -m egnn_com.train --demo
    python -m egnn_com.train --ckpt_path runs/x/checkpoints/last.ckpt      # exact resume

Torch and PyG are imported inside `main` (timed: the seed reports library import time apart from the
eight startup phases), so `--help` and bad-option errors answer at once.
"""

from __future__ import annotations

import time

import click

from common.cli import run_cli, typed_options
from common.config import bundled_configs, dump_config, load_config
from common.errors import ConfigError
from egnn_com.cliopts import option
from egnn_com.config import EgnnComConfig, config_from_dict

# click parameter -> dotted config key
OPTION_KEYS = {
    "data_dir": "data.data_dir",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "worker_type": "data.worker_type",
    "val_fraction": "data.val_fraction",
    "model": "model.name",
    "hidden_dim": "model.hidden_dim",
    "num_layers": "model.num_layers",
    "dropout": "model.dropout",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "optimizer": "optim.optimizer",
    "gradient_clip_val": "optim.gradient_clip_val",
    "max_epochs": "train.max_epochs",
    "precision": "train.precision",
    "device": "train.device",
    "num_threads": "train.num_threads",
    "seed": "train.seed",
    "output_dir": "train.output_dir",
    "checkpoint_dir": "train.checkpoint_dir",
    "save_every_n_steps": "train.save_every_n_steps",
    "fast_dev_run": "train.fast_dev_run",
    "use_compile": "train.use_compile",
    "debug": "train.debug",
    "use_wandb": "logging.use_wandb",
    "wandb_project": "logging.wandb_project",
    "wandb_name": "logging.wandb_name",
    "wandb_tags": "logging.wandb_tags",
}


def resolve_config(
    ctx: click.Context, config: str | None, overrides: tuple[str, ...], resume_config: dict | None = None
) -> EgnnComConfig:
    """Schema defaults < YAML (or the resumed checkpoint's config) < typed options < key=value overrides."""
    cli = typed_options(ctx, OPTION_KEYS)
    if resume_config is not None and config is None:
        return config_from_dict(resume_config, cli=cli, overrides=overrides)
    return load_config(EgnnComConfig, config, package="egnn_com", cli=cli, overrides=overrides)


def split_extras(extras: tuple[str, ...], tags_given: bool) -> tuple[tuple[str, ...], list[str]]:
    """Trailing arguments: `key=value` overrides, and bare words as more W&B tags (`--wandb_tags a b c`)."""
    overrides = tuple(e for e in extras if "=" in e)
    words = [e for e in extras if "=" not in e]
    if words and not tags_given:
        raise ConfigError(
            f"unexpected argument(s) {words}: trailing arguments are `key=value` config overrides "
            f"(e.g. optim.lr=3e-4), or tags after --wandb_tags."
        )
    return overrides, words


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog="Bundled configs: " + ", ".join(bundled_configs("egnn_com")),
)
@click.argument("extras", nargs=-1)
@option("config", help="YAML config path or bundled config name.")
@option(
    "data_dir",
    help="Folder of processed graph files (.pt tensor dicts or .npz).  [default: data/processed_sh]",
)
@option(
    "model", type=click.Choice(["gcn", "egnn"]), help="gcn baseline or E(n)-equivariant egnn.  [default: gcn]"
)
@option("batch_size", type=int, help="Training batch size.  [default: 16]")
@option("hidden_dim", type=int, help="Model hidden dimension.  [default: 128]")
@option("num_layers", type=int, help="Number of GNN layers.  [default: 4]")
@option("dropout", type=float, help="Dropout in the gcn head.  [default: 0.1]")
@option("max_epochs", type=int, help="Maximum training epochs.  [default: 100]")
@option("lr", type=float, help="Learning rate.  [default: 1e-3]")
@option("weight_decay", type=float, help="L2 regularisation.  [default: 1e-5]")
@option("optimizer", type=click.Choice(["adamw", "adam"]), help="Optimizer.  [default: adamw]")
@option("gradient_clip_val", type=float, help="Gradient norm clipping (0 = off).  [default: 1.0]")
@option("precision", help="32 | 16 | bf16 | 16-mixed | bf16-mixed.  [default: 32]")
@option("device", help="auto | cpu | cuda | cuda:N | mps.  [default: auto]")
@option("num_threads", type=int, help="torch CPU threads (0 = one per core).  [default: 0]")
@option("seed", type=int, help="Seed for split, data order and weights.  [default: 42]")
@option("val_fraction", type=float, help="Validation share of the graphs.  [default: 0.2]")
@option("num_workers", type=int, help="Background data loading when > 0 (0 = main process).  [default: 4]")
@option(
    "worker_type",
    type=click.Choice(["thread", "process"]),
    help="thread: one loader thread (packed in-memory graphs); process: worker processes.  [default: thread]",
)
@option("output_dir", help="Run folder.  [default: runs/egnn_com_<timestamp>]")
@option("checkpoint_dir", help="Checkpoint folder.  [default: <output_dir>/checkpoints]")
@option(
    "save_every_n_steps", type=int, help="Mid-epoch last-step.ckpt every N steps (0 = off).  [default: 50]"
)
@option(
    "fast_dev_run",
    type=int,
    is_flag=False,
    flag_value=1,
    help="Run N train and N val batches (bare flag: 1); no checkpoints or trackers.",
)
@option(
    "debug", is_flag=True, default=None, help="Startup phase timings, per-file load report, model details."
)
@option("use_compile", is_flag=True, default=None, help="torch.compile the model.")
@option("use_wandb", is_flag=True, default=None, help="Log to Weights & Biases (offline without an API key).")
@option("wandb_project", help="W&B project.  [default: equivariant-center-of-mass]")
@option("wandb_name", help="W&B run name (auto when not given).")
@option("wandb_tags", multiple=True, help="W&B tags: --wandb_tags a b c (or repeat the option).")
@option(
    "ckpt_path",
    "--resume",
    help="Checkpoint to resume from exactly (last.ckpt, last-step.ckpt or a best "
    "file); 'auto' = newest in --output_dir/--checkpoint_dir.",
)
@option(
    "demo", is_flag=True, help="Generate synthetic data, train gcn and egnn briefly, compare, print outputs."
)
@option("print_config", is_flag=True, help="Print the resolved config and exit.")
@click.pass_context
def main(ctx, extras, config, demo, print_config, ckpt_path, **_typed):
    """Train a centre-of-mass graph regressor (trailing key=value arguments override config keys)."""
    overrides, more_tags = split_extras(extras, bool(_typed["wandb_tags"]))
    if demo:
        from egnn_com.demo import run_demo

        run_demo(output_dir=_typed["output_dir"], num_workers=_typed["num_workers"])
        return
    resume_state = None
    start = time.perf_counter()
    if ckpt_path:
        from egnn_com.resume import load_resume_state

        base = (
            load_config(
                EgnnComConfig,
                config,
                package="egnn_com",
                cli=typed_options(ctx, OPTION_KEYS),
                overrides=overrides,
            )
            if ckpt_path == "auto"
            else None
        )
        resume_state = load_resume_state(ckpt_path, base)
    cfg = resolve_config(ctx, config, overrides, resume_state["config"] if resume_state else None)
    cfg.logging.wandb_tags = list(cfg.logging.wandb_tags) + more_tags
    if print_config:
        click.echo(dump_config(cfg))
        return
    from egnn_com.pipeline import run_training  # imports torch and torch_geometric

    outcome = run_training(cfg, resume_state=resume_state, import_seconds=time.perf_counter() - start)
    if outcome.run_dir is not None:
        click.echo(f"run folder: {outcome.run_dir}\nbest checkpoint: {outcome.best_checkpoint}")


if __name__ == "__main__":
    run_cli(main)
