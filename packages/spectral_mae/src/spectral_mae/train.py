"""`python -m spectral_mae.train [OPTIONS] [group=name ...] [a.b=value ...]` (the seed's train_model.py).

python -m spectral_mae.train --demo                       # synthetic data, mae_tiny, ~2 minutes on CPU
python -m spectral_mae.train model=mae_large hparams.batch_size=2
python -m spectral_mae.train --cfg job                    # print the resolved config and exit
python -m spectral_mae.train --resume working_env/spectral_mae_20260101_120000
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
import yaml

from common.checkpoint import CheckpointManager
from common.cli import run_cli, typed_options
from common.config import bundled_configs, dump_config
from common.devices import torch_device
from common.distributed import is_main_process
from common.errors import CheckpointError
from common.logs import log_file_path, setup_logging
from common.runs import RunFolder
from spectral_mae import config as config_module
from spectral_mae.data import read_index
from spectral_mae.trainer import LAST, STEP, TrainResult, train

DEMO_CONFIG = "demo"
OPTION_KEYS = {"output_dir": "general.output_dir", "device": "general.device", "seed": "general.seed"}


def resolve_resume(path: str) -> tuple[Path, Path]:
    """(checkpoint file, run folder) for --resume given a checkpoint file or a run folder."""
    target = Path(path)
    if target.is_dir():
        folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
        latest = CheckpointManager(folder, last=LAST, step_file=STEP).latest()
        if latest is None:
            raise CheckpointError(f"--resume {path}: no {LAST} or {STEP} in {folder}.")
        return latest, folder.parent if folder.name == "checkpoints" else folder
    if not target.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file or run folder.")
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
    return target, run_dir


def load_run_config(ctx, config, data_dir, resume, demo, overrides):
    """Resolved config for the options; a resumed run defaults to its own config.yaml."""
    cli = typed_options(ctx, OPTION_KEYS)
    if data_dir:
        cli["dataset.csv_file"] = str(Path(data_dir) / "dataset.csv")
    source = config
    if source is None:
        saved = resolve_resume(resume)[1] / "config.yaml" if resume else None
        if saved is not None and saved.is_file():
            source = config_module.upgrade_saved_config(yaml.safe_load(saved.read_text()) or {})
        else:
            source = DEMO_CONFIG if demo else config_module.DEFAULT_CONFIG
    if demo and not data_dir:
        output_dir = cli.get("general.output_dir", "working_env")
        cli["dataset.csv_file"] = str(Path(str(output_dir)) / "demo_data" / "dataset.csv")
    return config_module.load(source, cli=cli, overrides=overrides)


def prepare_run(cfg, resume: str | None) -> tuple[RunFolder, Path | None]:
    if resume:
        checkpoint, run_dir = resolve_resume(resume)
        return RunFolder(run_dir), checkpoint
    if cfg.general.run_dir:
        return RunFolder(cfg.general.run_dir), None
    return RunFolder.timestamped(cfg.general.output_dir, cfg.general.experiment_name), None


def make_demo_data(csv_file: str, logger: logging.Logger) -> None:
    """Generate the demo's synthetic 60x60x30 dataset once (reused by later demos)."""
    from spectral_mae.synthetic import SyntheticSpec, write_dataset

    if Path(csv_file).is_file():
        return
    logger.info("writing synthetic demo data to %s", Path(csv_file).parent)
    write_dataset(Path(csv_file).parent, SyntheticSpec(num_images=16, size=60, bands=30, val_fraction=0.25))


def report(result: TrainResult, cfg, logger: logging.Logger) -> None:
    root = result.run_dir
    lines = [
        f"run folder: {root}",
        f"  config: {root / 'config.yaml'}",
        f"  checkpoints: {root / 'checkpoints'} (best: {result.best_checkpoint})",
        f"  metrics: {root / 'metrics_history.json'}, plots: {root / 'plots'}",
    ]
    val = result.last_val
    if "val/mse" in val and "val/mean_baseline_mse" in val:
        # The yardstick beside the result: a model that learned only the per-band mean scores the baseline.
        lines.append(
            f"  last validation: masked-token MSE {val['val/mse']:.3f} (normalised units) vs "
            f"{val['val/mean_baseline_mse']:.3f} for predicting the per-band mean"
        )
    log_file = log_file_path(logger)
    if log_file:
        lines.append(f"  log: {log_file}")
    if cfg.mlflow.enabled:
        lines.append(
            f"  MLflow: mlflow ui --backend-store-uri sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"
            " (then open http://localhost:5000)"
        )
    click.echo("\n".join(lines))


def options(fn):
    """The options train and train_ddp share."""
    for decorator in reversed(
        [
            click.argument("overrides", nargs=-1),
            click.option(
                "--config",
                default=None,
                help=f"YAML file or bundled config ({', '.join(bundled_configs('spectral_mae'))}); "
                "default: config (or the run's config.yaml with --resume).",
            ),
            click.option("--data-dir", "--data_dir", default=None, help="Folder holding dataset.csv."),
            click.option("--output-dir", "--output_dir", default=None, help="Parent folder of run folders."),
            click.option("--resume", default=None, help="Checkpoint file or run folder to continue."),
            click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps"),
            click.option("--seed", type=int, default=None, help="Random seed (general.seed)."),
            click.option(
                "--cfg",
                "print_cfg",
                type=click.Choice(["job"]),
                default=None,
                help="`--cfg job`: print the resolved config and exit.",
            ),
            click.option(
                "--demo", is_flag=True, help="Synthetic data + mae_tiny, a short run (about 2 min on CPU)."
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


@click.command()
@options
@click.pass_context
def main(ctx, overrides, config, data_dir, output_dir, resume, device, seed, print_cfg, demo):
    """Train the spectral masked autoencoder (the seed's train_model.py).

    OVERRIDES: `group=name` picks a bundled config group (model=mae_large, scheduler=constant,
    show_prediction=none, ...); `a.b=value` sets any key (hparams.batch_size=4, general.use_amp=true,
    mlflow.tags.version="v1.0").
    """
    cfg = load_run_config(ctx, config, data_dir, resume, demo, overrides)
    if print_cfg:
        click.echo(dump_config(cfg), nl=False)
        return
    if not demo:
        read_index(cfg.dataset.csv_file)  # a missing index fails before a run folder is created
    run, checkpoint = prepare_run(cfg, resume)
    logger = setup_logging(run.logs, level="DEBUG" if cfg.general.debug else "INFO")
    if demo:
        make_demo_data(cfg.dataset.csv_file, logger)
    result = train(cfg, run, device=torch_device(cfg.general.device), logger=logger, resume=checkpoint)
    if demo and result.best_checkpoint and not result.interrupted:
        from spectral_mae.evaluate import main as evaluate_main

        evaluate_main.main(
            [str(result.best_checkpoint), "--device", cfg.general.device], standalone_mode=False
        )
    if is_main_process():
        report(result, cfg, logger)


def cli() -> None:
    """Console-script entry point (`spectral-mae-train`): errors as one paragraph, like `python -m`."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
