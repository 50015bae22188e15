"""`python -m cabruca.train --demo`: synthetic scenes, the light config, a short run, evaluation, and where
everything is. Options and key=value arguments typed beside --demo override the demo's own settings."""

from __future__ import annotations

from pathlib import Path

import click

from common.config import dump_config
from common.distributed import get_world_size
from common.errors import ConfigError

from . import config as config_mod

DEMO_CONFIG = "training_config_light"
# The demo's own settings: a short run that still shows learning on two CPU cores.
DEMO_SETTINGS = {
    "experiment_name": "demo",
    "training.num_epochs": 6,
    "training.max_steps_per_epoch": 8,
    "training.checkpoint_every_n_epochs": 3,
    "scheduler.type": "onecycle",
    "optimizer.lr": 0.003,
    # mAP stays near 0 in two minutes; the best checkpoint (evaluated below) follows the validation loss.
    "training.monitor_metric": "val/loss",
    "training.minimize_metric": True,
}


def demo_config(cli: dict, overrides: tuple[str, ...], config: str | None = None):
    """The demo's config: `config` (default the light config) < the demo's settings < the typed options
    (`cli`, dotted keys) < key=value `overrides`. The data lives in <output_dir>/demo_data unless
    --data-dir names another folder."""
    output_dir = cli.get("output_dir", "outputs")
    settings = {
        **DEMO_SETTINGS,
        "output_dir": output_dir,
        "data.data_dir": str(Path(output_dir) / "demo_data"),
        **cli,
    }
    source = config_mod.resolve_source(config) if config else DEMO_CONFIG
    return config_mod.load(source, cli=settings, overrides=overrides)


def ensure_demo_data(data_dir: str | Path) -> None:
    """Generate the demo's synthetic scenes in `data_dir` unless they are already there."""
    from .synthetic import generate

    data_dir = Path(data_dir)
    if not (data_dir / "val" / "annotations.json").exists():
        click.echo(f"generating synthetic scenes in {data_dir} ...")
        generate(data_dir, num_train=6, num_val=2, image_size=256, seed=0)


def run_demo(
    cli: dict,
    overrides: tuple[str, ...] = (),
    *,
    config: str | None = None,
    print_config: bool = False,
    named_folder: bool = False,
) -> int:
    """Generate the scenes (once), train, evaluate the best checkpoint and print where the outputs are.
    `named_folder`: the user typed the experiment name, so it is the run folder's name (as in training)."""
    if get_world_size() > 1:
        raise ConfigError("--demo runs in one process; start it with python -m cabruca.train, not torchrun.")
    cfg = demo_config(cli, overrides, config)
    if print_config:
        click.echo(dump_config(cfg))
        return 0
    from .engine import HISTORY_FILE
    from .evaluate import evaluate_checkpoint
    from .training import COMMAND, train

    ensure_demo_data(cfg.data.data_dir)
    result = train(cfg, named_folder=named_folder)
    if result.interrupted:
        return result.exit_code
    checkpoints = result.run_dir / "checkpoints"
    best = checkpoints / "checkpoint_best.pth"
    report = evaluate_checkpoint(
        best if best.exists() else checkpoints / "checkpoint_latest.pth",
        Path(cfg.data.data_dir),
        split="val",
        out_dir=result.run_dir / "evaluation",
        device=cfg.device,
    )
    hist = result.run_dir / HISTORY_FILE
    click.echo(
        "\n".join(
            [
                "",
                f"demo finished: {result.epochs_done} epochs, {result.global_step} steps",
                f"  run folder:      {result.run_dir}",
                f"  history:         {hist}",
                f"  curves:          {result.run_dir / 'plots' / 'training_curves.png'}",
                f"  evaluation:      {report}",
                f"  TensorBoard:     tensorboard --logdir {result.run_dir / 'tensorboard'}",
                f"  dashboard:       uv run trainyard-dashboard --runs-root {cfg.output_dir}",
                f"  continue:        {COMMAND} --resume {result.run_dir} --epochs {2 * cfg.training.num_epochs}",
            ]
        )
    )
    return 0
