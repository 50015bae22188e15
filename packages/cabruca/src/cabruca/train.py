"""`python -m cabruca.train`: the command line of cabruca's training (the run itself: `cabruca.training`).

python -m cabruca.train --config configs/training_config.yaml [--device cpu|cuda|mps] [--resume last|RUN|CKPT]
    [--use-mlflow] [--use-wandb] [--lr 1e-3] [--batch-size 8] [--epochs 50] [--grad-accum 4]
    [--experiment-name NAME] [--mixed-precision] [--compile] [key.sub=value ...]
python -m cabruca.train --demo [--epochs 2 ...]
torchrun --nproc_per_node N -m cabruca.train [same options]       # data parallel, see README "Scale out"

This module stays light: torch, timm and torchvision are imported inside the command, so `--help` and bad
options answer at once. The names the training code defines (`train`, `resume_plan`, ...) are still
importable from here: they are forwarded to `cabruca.training` on first use.
"""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import (
    config_option,
    console_script,
    data_dir_option,
    device_option,
    fast_dev_run_option,
    forward_to,
    multirun_option,
    output_dir_option,
    precision_option,
    resume_option,
    run_dir_option,
    seed_option,
    typed_options,
)
from common.config import dump_config
from common.distributed import is_main_process
from common.errors import ConfigError

from . import config as config_mod

OPTION_KEYS = {
    "lr": "optimizer.lr",
    "batch_size": "data.batch_size",
    "epochs": "training.num_epochs",
    "grad_accum": "training.gradient_accumulation_steps",
    "experiment_name": "experiment_name",
    "mixed_precision": "training.mixed_precision",
    "precision": "training.precision",
    "compile": "training.compile",
    "device": "device",
    "data_dir": "data.data_dir",
    "output_dir": "output_dir",
    "seed": "seed",
    "tile_size": "data.tile_size",
    "use_mlflow": "tracking.mlflow",
    "use_wandb": "tracking.wandb",
    "num_workers": "data.num_workers",
}


# `from cabruca.train import train` (and the other names of `cabruca.training`) keeps working: the heavy
# module is imported on first use of one of its names, not when the command line starts.
__getattr__ = forward_to("cabruca.training", __name__)


def names_experiment(cli: dict, overrides: tuple[str, ...]) -> bool:
    """True when the user typed the experiment name (--experiment-name or experiment_name=...): it is then
    the run folder's name rather than the prefix of a timestamped one."""
    typed = [o.split("=", 1)[0].strip() for o in overrides if "=" in o]
    return "experiment_name" in cli or "experiment_name" in typed


def _option(dashed: str, **kw):
    """A click option spelled with dashes that also accepts underscores (--batch-size, --batch_size)."""
    underscored = "--" + dashed[2:].replace("-", "_")
    names = (dashed, underscored) if underscored != dashed else (dashed,)
    return click.option(*names, **kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": False})
@config_option(
    "cabruca",
    default=None,
    help="YAML path or bundled config name (training_config, training_config_light). Default: "
    "training_config, or the checkpoint's own config with --resume.",
)
@device_option(type=str)
@resume_option(
    help="Continue a run: 'last' (the newest checkpoint under --output-dir), a run folder or a checkpoint "
    "file. It uses the run's saved config; options typed beside it override it. A weights-only file "
    "(checkpoint_best.pth), or a changed experiment name, tile size or optimizer, starts a new run from the "
    "checkpoint's weights instead (progressive training)."
)
@_option(
    "--use-mlflow",
    is_flag=True,
    help="Also log to MLflow (mlruns/ in the run folder or MLFLOW_TRACKING_URI).",
)
@_option("--use-wandb", is_flag=True, help="Also log to Weights & Biases (offline without WANDB_API_KEY).")
@_option("--lr", type=float, help="optimizer.lr.")
@_option("--batch-size", type=int, help="data.batch_size.")
@_option("--epochs", type=int, help="training.num_epochs.")
@_option("--grad-accum", type=int, help="training.gradient_accumulation_steps.")
@_option(
    "--experiment-name",
    type=str,
    help="Run folder name: <output-dir>/<name> (<name>_<timestamp> if that folder holds another run; "
    "without this option <output-dir>/<config's experiment_name>_<timestamp>).",
)
@_option("--mixed-precision", is_flag=True, help="float16 autocast + GradScaler (CUDA only).")
@precision_option(help="32 | bf16-mixed | 16-mixed | 16-true | bf16-true (training.precision).")
@_option("--compile", is_flag=True, help="torch.compile the model.")
@data_dir_option(type=str, help="data.data_dir (holds train/ and val/).")
@output_dir_option(type=str, help="Parent folder of run folders (default outputs).")
@run_dir_option(type=str, help="The run folder itself: --output-dir and --experiment-name in one.")
@_option("--tile-size", type=int, help="data.tile_size.")
@_option("--num-workers", type=int, help="data.num_workers.")
@seed_option(help="Seed for data order, augmentation and initialisation.")
@_option(
    "--demo",
    is_flag=True,
    help="Synthetic data + light config: a two-minute CPU run, then evaluation. Options and key=value "
    "arguments beside it apply (e.g. --epochs 2).",
)
@fast_dev_run_option()
@multirun_option()
@_option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(ctx, config, resume, demo, fast_dev_run, print_config, overrides, **_):
    """Train cabruca's multi-task segmentation model. Trailing key.sub=value arguments override the config.

    Exits 0 when training finished, 130 after SIGINT (Ctrl+C) and 143 after SIGTERM; a stopped run has saved
    its state and logged the command that resumes it."""
    cli = typed_options(ctx, dict(OPTION_KEYS))
    if _["run_dir"]:  # cabruca names a run folder by its parent and the experiment name
        if "output_dir" in cli or "experiment_name" in cli:
            raise ConfigError(
                "--run-dir names the run folder; give it without --output-dir / --experiment-name."
            )
        run_dir = Path(_["run_dir"])
        cli.update(output_dir=str(run_dir.parent), experiment_name=run_dir.name)
    if fast_dev_run and not print_config:
        if resume:
            raise ConfigError("--fast-dev-run starts a throwaway run; it cannot --resume one.")
        return fast_dev_run_command(cli, overrides, config, demo, fast_dev_run)
    if demo:
        if resume:
            raise ConfigError(
                "--demo starts a new run; to continue a demo run use --resume <its run folder> without --demo."
            )
        from . import demo as demo_mod

        return demo_mod.run_demo(
            cli,
            overrides,
            config=config,
            print_config=print_config,
            named_folder=names_experiment(cli, overrides),
        )
    source, state, checkpoint = config_mod.resolve_source(config), None, None
    if resume:
        from common.resume import saved_config

        from .training import read_resume_checkpoint, resume_checkpoint

        output_dir = cli.get("output_dir")
        if output_dir is None:  # --resume last: the output folder the config (with its overrides) names
            output_dir = config_mod.load(source, cli=cli, overrides=overrides).output_dir
        checkpoint = resume_checkpoint(resume, output_dir)  # 'last': the newest run under output_dir
        state = read_resume_checkpoint(checkpoint)
        if config is None and isinstance(state.get("config"), dict):
            source = saved_config(state, config_mod.CabrucaConfig)
    cfg = config_mod.load(source, cli=cli, overrides=overrides)
    if print_config:
        if is_main_process():
            click.echo(dump_config(cfg))
        return 0
    from .training import train

    named = names_experiment(cli, overrides)
    return train(cfg, resume=checkpoint, state=state, named_folder=named).exit_code


def fast_dev_run_command(cli: dict, overrides: tuple[str, ...], config: str | None, demo: bool, batches: int):
    """`--fast-dev-run N` (with or without --demo): N steps and one validation of a run in a scratch folder
    that is removed afterwards (a demo's scenes too), trackers off; prints one summary line."""
    from common.fast_dev_run import FastDevRun, scratch_folder

    with scratch_folder("cabruca") as scratch:
        cli = {**cli, "output_dir": str(scratch)}
        overrides = (*overrides, "tracking.mlflow=false", "tracking.wandb=false")  # they write outside it
        if demo:
            from . import demo as demo_mod

            cfg = demo_mod.demo_config(cli, overrides, config)
            demo_mod.ensure_demo_data(cfg.data.data_dir)
        else:
            cfg = config_mod.load(config_mod.resolve_source(config), cli=cli, overrides=overrides)
        cfg.training.num_epochs = 1
        from .training import train

        return train(cfg, callbacks=[FastDevRun(batches)]).exit_code


cli = console_script(main)  # the installed command


if __name__ == "__main__":
    cli()
