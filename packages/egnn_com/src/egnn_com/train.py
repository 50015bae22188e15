"""`python -m egnn_com.train`: train the GCN baseline or the EGNN on a folder of graph files.

    python -m egnn_com.train --fast_dev_run 10 --debug
    python -m egnn_com.train --precision 16-mixed --use_wandb --max_epochs 200
    python -m egnn_com.train --data_dir data/my_dataset --checkpoint_dir experiments/run_1 --batch_size 32 \\
        --hidden_dim 256 --wandb_name large_model_experiment
    python -m egnn_com.train --demo
    python -m egnn_com.train --resume last --output_dir runs/x          # exact resume (or a run folder / file)
    torchrun --nproc_per_node 2 -m egnn_com.train --output_dir runs/ddp  # data-parallel (DDP), see README

Training runs on the shared loop (`common.loop`); SIGINT / SIGTERM finish the step, save `last-step.ckpt`,
print the resume command and exit 130 / 143. Torch and PyG are imported inside `main` (timed: library import
time is reported apart from the eight startup phases), so `--help` and bad-option errors answer at once.
"""

from __future__ import annotations

import time

import click

from common.cli import (
    config_option,
    console_script,
    data_dir_option,
    device_option,
    multirun_option,
    output_dir_option,
    overwrite_option,
    precision_option,
    resume_option,
    run_cli,
    seed_option,
    typed_options,
)
from common.config import bundled_configs, dump_config, load_config
from common.distributed import get_world_size, is_main_process
from common.errors import ConfigError
from common.fast_dev_run import summary_line
from common.resume import find_checkpoint, read_training_checkpoint, saved_config
from egnn_com.cliopts import option
from egnn_com.config import EgnnComConfig, config_from_dict

# click parameter -> dotted config key
OPTION_KEYS = {
    "data_dir": "data.data_dir",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "worker_type": "data.worker_type",
    "val_fraction": "data.val_fraction",
    "split_by": "data.split_by",
    "model": "model.name",
    "hidden_dim": "model.hidden_dim",
    "num_layers": "model.num_layers",
    "dropout": "model.dropout",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "optimizer": "optim.optimizer",
    "gradient_clip_val": "optim.gradient_clip_val",
    "accumulate_grad_batches": "optim.accumulate_grad_batches",
    "max_epochs": "train.max_epochs",
    "precision": "train.precision",
    "device": "train.device",
    "num_threads": "train.num_threads",
    "seed": "train.seed",
    "output_dir": "train.output_dir",
    "checkpoint_dir": "train.checkpoint_dir",
    "save_every_n_steps": "train.save_every_n_steps",
    "checkpoint_filename": "train.checkpoint_filename",
    "fast_dev_run": "train.fast_dev_run",
    "overwrite": "train.overwrite",
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


def resume_checkpoint(ctx: click.Context, spec: str, config: str | None, overrides: tuple[str, ...]):
    """The checkpoint file `--resume` names: 'last'/'auto' look in the run folder that --checkpoint_dir,
    --output_dir (typed, in --config or as overrides) name; a folder or a file is used as it is."""
    run_dir = None
    if spec in ("last", "auto"):
        base = load_config(
            EgnnComConfig,
            config,
            package="egnn_com",
            cli=typed_options(ctx, OPTION_KEYS),
            overrides=overrides,
        )
        run_dir = base.train.checkpoint_dir or base.train.output_dir
    return find_checkpoint(spec, run_dir)


# Lightning-style multi-device options: the process count comes from torchrun instead
LAUNCHER_OPTIONS = ("num_gpus", "gpus", "devices", "strategy", "num_nodes")


def refuse_launcher_options(given: dict[str, object]) -> None:
    """--num_gpus / --devices / --strategy / --num_nodes: say how torchrun starts the same run instead."""
    typed = [f"--{name}" for name in LAUNCHER_OPTIONS if given.get(name) is not None]
    if typed:
        raise ConfigError(
            f"{', '.join(typed)}: egnn_com trains on several devices by starting one process per device with "
            "torchrun, which sets the process count; e.g. `torchrun --nproc_per_node 4 -m egnn_com.train "
            "...` on one machine (--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:29500 for several "
            "machines). --batch_size is per process; see the README's 'Scale out'."
        )


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
@config_option("egnn_com", help="YAML config path or bundled config name.")
@data_dir_option(
    help="Folder of processed graph files (.pt tensor dicts or .npz).  [default: data/processed_sh]"
)
@option(
    "model", type=click.Choice(["gcn", "egnn"]), help="gcn baseline or E(n)-equivariant egnn.  [default: gcn]"
)
@option("batch_size", type=int, help="Graphs per (micro-)batch.  [default: 16]")
@option("hidden_dim", type=int, help="Model hidden dimension.  [default: 128]")
@option("num_layers", type=int, help="Number of GNN layers.  [default: 4]")
@option("dropout", type=float, help="Dropout in the gcn head.  [default: 0.1]")
@option("max_epochs", type=int, help="Maximum training epochs.  [default: 100]")
@option("lr", type=float, help="Learning rate.  [default: 1e-3]")
@option("weight_decay", type=float, help="L2 regularisation.  [default: 1e-5]")
@option("optimizer", type=click.Choice(["adamw", "adam"]), help="Optimizer.  [default: adamw]")
@option("gradient_clip_val", type=float, help="Gradient norm clipping (0 = off).  [default: 1.0]")
@option(
    "accumulate_grad_batches",
    type=int,
    help="Micro-batches per optimizer step (gradient accumulation).  [default: 1]",
)
# free text, checked by common.torch_support.parse_precision (which also takes 32-true, bf16-true, ...)
@precision_option(help="32 | 16 | bf16 | 16-mixed | bf16-mixed.  [default: 32]")
@device_option(help="auto | cpu | cuda | cuda:N | mps.  [default: auto]")
@option("num_threads", type=int, help="torch CPU threads (0 = one per core).  [default: 0]")
@seed_option(help="Seed for split, data order and weights.  [default: 42]")
@option("val_fraction", type=float, help="Validation share of the graphs.  [default: 0.2]")
@option(
    "split_by",
    type=click.Choice(["graph", "molecule"]),
    help="graph: shuffle graphs; molecule: keep all conformers of a molecule on one side (molecules.csv "
    "from egnn_com.prepare).  [default: graph]",
)
@option("num_workers", type=int, help="Background data loading when > 0 (0 = main process).  [default: 4]")
@option(
    "worker_type",
    type=click.Choice(["thread", "process"]),
    help="thread: one loader thread (packed in-memory graphs); process: worker processes.  [default: thread]",
)
@output_dir_option(run_folder=True, help="Run folder.  [default: runs/egnn_com_<timestamp>]")
@option("checkpoint_dir", help="Checkpoint folder.  [default: <output_dir>/checkpoints]")
@option(
    "save_every_n_steps",
    type=int,
    help="Mid-epoch last-step.ckpt every N optimizer steps (0 = off).  [default: 50]",
)
@option(
    "checkpoint_filename",
    help="Best-checkpoint name template ({epoch}, {step}, {val_loss}, ...; checkpoints/manifest.json names "
    "the best file).  [default: best-model-{epoch:02d}-{val_loss:.4e}.ckpt]",
)
@overwrite_option()
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
@resume_option(
    help="Continue a run exactly: 'last' (or 'auto': the newest checkpoint of --output_dir/--checkpoint_dir), "
    "a run folder, or a checkpoint file. The run's saved config is used; options typed beside it override it."
)
@option("ckpt_path", help="The same as --resume.")
@option(
    "demo", is_flag=True, help="Generate synthetic data, train gcn and egnn briefly, compare, print outputs."
)
@option("print_config", is_flag=True, help="Print the resolved config and exit.")
@multirun_option()
@option("num_gpus", hidden=True)
@option("gpus", hidden=True)
@option("devices", hidden=True)
@option("strategy", hidden=True)
@option("num_nodes", hidden=True)
@click.pass_context
def main(ctx, extras, config, demo, print_config, resume, ckpt_path, **_typed):
    """Train a centre-of-mass graph regressor (trailing key=value arguments override config keys).

    Exits 0 when training finished, 130 / 143 when SIGINT / SIGTERM stopped it (resumable), 2 on bad input.
    """
    refuse_launcher_options({name: _typed.pop(name) for name in LAUNCHER_OPTIONS})
    overrides, more_tags = split_extras(extras, bool(_typed["wandb_tags"]))
    if resume and ckpt_path and resume != ckpt_path:
        raise ConfigError(f"--resume {resume} and --ckpt_path {ckpt_path} disagree; give one of them.")
    spec = resume or ckpt_path
    if demo:
        if get_world_size() > 1:
            raise ConfigError("--demo runs in one process; start it with `python -m egnn_com.train --demo`.")
        if spec:
            raise ConfigError("--demo starts new runs; to continue one, use --resume without --demo.")
        if _typed["fast_dev_run"]:
            return _exit(ctx, demo_fast_dev_run(ctx, config, overrides))
        from egnn_com.demo import run_demo

        # the demo places its data and runs itself: --output_dir is its folder, the other options apply
        cli = {k: v for k, v in typed_options(ctx, OPTION_KEYS).items() if k not in DEMO_PLACED}
        results = run_demo(output_dir=_typed["output_dir"], cli=cli, overrides=overrides)
        return _exit(ctx, max((r.exit_code for r in results.values()), default=0))
    state = path = None
    if spec:
        path = resume_checkpoint(ctx, spec, config, overrides)
        state = read_training_checkpoint(path)
    cfg = resolve_config(ctx, config, overrides, saved_config(state, EgnnComConfig) if state else None)
    cfg.logging.wandb_tags = list(cfg.logging.wandb_tags) + more_tags
    if print_config:
        if is_main_process():
            click.echo(dump_config(cfg))
        return 0
    start = time.perf_counter()
    from egnn_com.pipeline import run_training  # imports torch and torch_geometric

    result = run_training(
        cfg, resume_state=state, resume_path=path, import_seconds=time.perf_counter() - start
    )
    if cfg.train.fast_dev_run and is_main_process():
        click.echo(summary_line(result.global_step, result.metrics))
    elif result.run_dir is not None and not result.interrupted and is_main_process():
        click.echo(f"run folder: {result.run_dir}\nbest checkpoint: {result.best_checkpoint}")
    return _exit(ctx, result.exit_code)


# options the demo sets itself: its data and run folders live under --output_dir
DEMO_PLACED = ("data.data_dir", "train.output_dir", "train.checkpoint_dir")


def demo_fast_dev_run(ctx: click.Context, config: str | None, overrides: tuple[str, ...]) -> int:
    """`--demo --fast_dev_run N`: the demo's synthetic data in a scratch folder removed afterwards, and one
    fast_dev_run of the configured model on it (which writes no run folder of its own)."""
    from common.fast_dev_run import scratch_folder
    from egnn_com.demo import demo_data
    from egnn_com.pipeline import run_training  # imports torch and torch_geometric

    with scratch_folder("egnn_com") as scratch:
        data = demo_data(scratch)
        cfg = resolve_config(ctx, config or "demo", (*overrides, f"data.data_dir={data}"))
        result = run_training(cfg)
        click.echo(summary_line(result.global_step, result.metrics))
        return result.exit_code


def _exit(ctx: click.Context, code: int) -> int:
    """The run's exit status: returned under `run_cli`, and the process status of the console script too."""
    if code:
        ctx.exit(code)
    return code


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
