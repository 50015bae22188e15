"""`python -m spectral_mae.train [OPTIONS] [group=name ...] [a.b=value ...]`: train the spectral MAE.

python -m spectral_mae.train --demo                       # synthetic data, mae_tiny, ~2 minutes on CPU
python -m spectral_mae.train model=mae_large hparams.batch_size=2
python -m spectral_mae.train --cfg job                    # print the resolved config and exit
python -m spectral_mae.train --resume last                # the newest checkpoint under --output-dir
python -m spectral_mae.train --resume working_env/spectral_mae_20260101_120000
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import click

from common.cli import (
    config_option,
    console_script,
    data_dir_option,
    device_option,
    fast_dev_run_option,
    follow_up_command,
    multirun_option,
    output_dir_option,
    overwrite_option,
    precision_option,
    resume_option,
    run_cli,
    run_dir_option,
    seed_option,
    typed_options,
)
from common.config import bundled_configs, dump_config
from common.devices import torch_device
from common.distributed import is_main_process
from common.errors import ConfigError
from common.fast_dev_run import scratch_folder
from common.logs import log_file_path, setup_logging
from common.loop import FitResult
from common.resume import find_checkpoint, read_training_checkpoint, run_folder_of, saved_config
from common.runs import RunFolder
from spectral_mae import config as config_module

DEMO_CONFIG = "demo"
OPTION_KEYS = {
    "output_dir": "general.output_dir",
    "run_dir": "general.run_dir",
    "device": "general.device",
    "seed": "general.seed",
    "overwrite": "general.overwrite",
    "precision": "general.precision",
}


def find_resume_checkpoint(spec: str, cfg: config_module.SpectralMAEConfig) -> Path:
    """The checkpoint meant by `--resume last | RUN_FOLDER | CHECKPOINT`: "last" continues
    `general.run_dir` when set, else the newest run under `general.output_dir` (--output-dir)."""
    if spec in ("last", "auto"):
        return find_checkpoint(spec, cfg.general.run_dir or cfg.general.output_dir)
    return find_checkpoint(spec)


def load_run_config(ctx, config, data_dir, resume, demo, overrides):
    """(config, checkpoint, checkpoint state) for the options.

    A resumed run builds its config from the one saved in the checkpoint unless --config is given; options
    and overrides typed beside --resume still apply on top. So the resume command a run prints works as is.
    """
    cli = typed_options(ctx, OPTION_KEYS)
    if data_dir:
        cli["dataset.csv_file"] = str(Path(data_dir) / "dataset.csv")
    if demo and not data_dir:
        output_dir = cli.get("general.output_dir", "working_env")
        cli["dataset.csv_file"] = str(Path(str(output_dir)) / "demo_data" / "dataset.csv")
    default = DEMO_CONFIG if demo else config_module.DEFAULT_CONFIG
    source = config
    checkpoint = state = None
    if resume:
        if resume in ("last", "auto"):  # where to look comes from the options, before any checkpoint is read
            where = config_module.load(config or default, cli=cli, overrides=overrides)
            checkpoint = find_resume_checkpoint(resume, where)
        else:
            checkpoint = find_checkpoint(resume)
        state = read_training_checkpoint(checkpoint)
        if source is None:
            source = config_module.upgrade_saved_config(
                dict(saved_config(state, config_module.SpectralMAEConfig))
            )
    cfg = config_module.load(source or default, cli=cli, overrides=overrides)
    return cfg, checkpoint, state


def prepare_run(cfg, checkpoint: Path | None) -> RunFolder:
    if checkpoint is not None:
        return RunFolder(run_folder_of(checkpoint), resume=True)
    if cfg.general.run_dir:
        return RunFolder(cfg.general.run_dir, overwrite=cfg.general.overwrite)
    return RunFolder.timestamped(cfg.general.output_dir, cfg.general.experiment_name)


def make_demo_data(csv_file: str, logger: logging.Logger) -> None:
    """Generate the demo's synthetic 60x60x30 dataset once (reused by later demos)."""
    from spectral_mae.synthetic import SyntheticSpec, write_dataset

    if Path(csv_file).is_file():
        return
    logger.info("writing synthetic demo data to %s", Path(csv_file).parent)
    write_dataset(Path(csv_file).parent, SyntheticSpec(num_images=16, size=60, bands=30, val_fraction=0.25))


def report(result: FitResult, cfg, logger: logging.Logger, command: str | None = None) -> None:
    from spectral_mae.trainer import COMMAND

    command = follow_up_command(command or COMMAND)
    root = result.run_dir
    lines = [
        f"run folder: {root}",
        f"  config: {root / 'config.yaml'}",
        f"  checkpoints: {root / 'checkpoints'} (best: {result.best_checkpoint})",
        f"  metrics: {root / 'metrics_history.json'}, plots: {root / 'plots'}",
    ]
    if result.interrupted:
        lines.append(
            f"  stopped by {result.interrupted} at step {result.global_step}; continue with: "
            f"{command} --resume {shlex.quote(str(result.checkpoint or root))}"
        )
    val = result.metrics
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
        from common.trackers.mlflow import tracking_store

        uri, _ = tracking_store(cfg.mlflow.tracking_uri)
        lines.append(f"  MLflow: mlflow ui --backend-store-uri {uri} (then open http://localhost:5000)")
    click.echo("\n".join(lines))


def options(fn):
    """The options train and train_ddp share."""
    for decorator in reversed(
        [
            click.argument("overrides", nargs=-1),
            config_option(
                config_module.PACKAGE,
                default=None,
                help=f"YAML file or bundled config ({', '.join(bundled_configs(config_module.PACKAGE))}); "
                "default: config (or the checkpoint's saved config with --resume).",
            ),
            data_dir_option(default=None, help="Folder holding dataset.csv."),
            output_dir_option(
                default=None,
                help="Parent folder of run folders: each run is a new <experiment_name>_<timestamp> folder "
                "in it (general.output_dir).",
            ),
            run_dir_option(default=None, help="The run folder itself (general.run_dir)."),
            resume_option(
                default=None,
                help="Continue a run exactly: 'last' (the newest checkpoint of the runs under --output-dir, "
                "or of general.run_dir), a run folder, or a checkpoint file. The checkpoint's saved config "
                "is used; options and overrides typed beside it apply on top.",
            ),
            device_option(default=None),
            seed_option(default=None, help="Random seed (general.seed)."),
            overwrite_option(help="Replace the run already in general.run_dir (general.overwrite)."),
            precision_option(
                default=None, help="32 | bf16-mixed | 16-mixed | 16-true | bf16-true (general.precision)."
            ),
            click.option(
                "--cfg",
                "print_cfg",
                type=click.Choice(["job"]),
                default=None,
                help="`--cfg job`: print the resolved config and exit.",
            ),
            click.option(
                "--demo",
                is_flag=True,
                help="Synthetic data + mae_tiny, a short run (about 2 min on CPU). Options and overrides beside "
                "it apply (hparams.epochs=1, model=mae_small, --output-dir).",
            ),
            fast_dev_run_option(),
            multirun_option(),
        ]
    ):
        fn = decorator(fn)
    return fn


@click.command()
@options
@click.pass_context
def main(ctx, **options):
    """Train the spectral masked autoencoder.

    OVERRIDES: `group=name` picks a bundled config group (model=mae_large, optimizer=sgd, scheduler=constant,
    loss=mse, augmentation=flips, metric=fast, accuracy=spectral_angle, show_prediction=none, ...); `a.b=value`
    sets any key (hparams.batch_size=4, general.use_amp=true, mlflow.tags.version="v1.0",
    callbacks=[LearningRateMonitor]).

    Exit status: 0 when the run finished, 130 after SIGINT and 143 after SIGTERM (the run stopped after the
    current step, saved checkpoints/last_step.ckpt and printed the command that continues it).
    """
    return run_training(ctx, **options)


def run_training(
    ctx,
    overrides,
    config,
    data_dir,
    output_dir,
    resume,
    device,
    seed,
    overwrite,
    precision,
    print_cfg,
    demo,
    fast_dev_run=None,
    run_dir=None,
):
    """The body of `train` (and of `train_model_medium`, which adds its model choice to `overrides`)."""
    if fast_dev_run and not print_cfg:
        if resume:
            raise ConfigError("--fast-dev-run starts a throwaway run; it cannot --resume one.")
        with scratch_folder("spectral_mae") as scratch:  # the run (and a demo's data) go here, then vanish
            throwaway = [f"general.run_dir={scratch / 'run'}", "mlflow.enabled=false", "hparams.epochs=1"]
            if demo and not data_dir:
                throwaway.append(f"dataset.csv_file={scratch / 'demo_data' / 'dataset.csv'}")
            return _run(ctx, (*overrides, *throwaway), config, data_dir, None, demo, False, fast_dev_run)
    return _run(ctx, overrides, config, data_dir, resume, demo, print_cfg, None)


def _run(ctx, overrides, config, data_dir, resume, demo, print_cfg, fast_dev_run):
    cfg, checkpoint, state = load_run_config(ctx, config, data_dir, resume, demo, overrides)
    if print_cfg:
        click.echo(dump_config(cfg), nl=False)
        return 0
    if not demo:
        from spectral_mae.cubes import read_index

        read_index(cfg.dataset.csv_file)  # a missing index fails before a run folder is created
    run = prepare_run(cfg, checkpoint)
    logger = setup_logging(run.logs, level="DEBUG" if cfg.general.debug else "INFO")
    if demo:
        make_demo_data(cfg.dataset.csv_file, logger)
    # imported here, after the options are read: torch + timm take seconds, --help should not wait
    from spectral_mae.trainer import train

    if fast_dev_run:  # N steps, one validation, its summary line (common.fast_dev_run)
        from common.fast_dev_run import FastDevRun

        device = torch_device(cfg.general.device)
        return train(cfg, run, device=device, logger=logger, callbacks=[FastDevRun(fast_dev_run)]).exit_code
    result = train(
        cfg,
        run,
        device=torch_device(cfg.general.device),
        logger=logger,
        resume=state,
        resume_path=checkpoint,
    )
    if demo and result.best_checkpoint and not result.interrupted:
        from spectral_mae.evaluate import main as evaluate_main

        evaluate_main.main(
            [str(result.best_checkpoint), "--device", cfg.general.device], standalone_mode=False
        )
    if is_main_process():
        report(result, cfg, logger)
    return result.exit_code


cli = console_script(main)  # the installed command


if __name__ == "__main__":
    run_cli(main)
