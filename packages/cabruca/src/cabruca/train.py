"""`python -m cabruca.train`: train the multi-task cabruca model (the seed's train.py command line).

python -m cabruca.train --config configs/training_config.yaml [--device cpu|cuda|mps] [--resume CKPT]
    [--use-mlflow] [--use-wandb] [--lr 1e-3] [--batch-size 8] [--epochs 50] [--grad-accum 4]
    [--experiment-name NAME] [--mixed-precision] [--compile] [key.sub=value ...]
python -m cabruca.train --demo
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from common.checkpoint import load_checkpoint
from common.cli import run_cli, typed_options
from common.config import config_to_dict, dump_config, save_config
from common.devices import describe_device, torch_device
from common.errors import CheckpointError, DeviceError
from common.logs import setup_logging
from common.runs import RunFolder
from common.trackers import build_trackers

from . import config as config_mod
from .config import CabrucaConfig
from .engine import HISTORY_FILE, FitResult, Trainer

OPTION_KEYS = {
    "lr": "optimizer.lr",
    "batch_size": "data.batch_size",
    "epochs": "training.num_epochs",
    "grad_accum": "training.gradient_accumulation_steps",
    "experiment_name": "experiment_name",
    "mixed_precision": "training.mixed_precision",
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
# Changing any of these between a checkpoint and a new run makes `--resume` a warm start (weights only).
_WARM_START_KEYS = ("experiment_name", "data.tile_size", "optimizer")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def resume_plan(state: dict, cfg: CabrucaConfig) -> tuple[str, str]:
    """('continue' | 'weights', why). continue = the exact same run goes on; weights = a new run (new folder,
    fresh optimizer, schedule and epochs) starting from the checkpoint's weights, as in progressive training."""
    mode = cfg.training.resume_mode
    if mode != "auto":
        return mode, f"training.resume_mode is {mode}"
    old, new = state.get("config", {}), config_to_dict(cfg)
    changed = [k for k in _WARM_START_KEYS if _get(old, k) != _get(new, k)] if old else ["config missing"]
    if changed:
        return "weights", f"{', '.join(changed)} differ from the checkpoint's run"
    return "continue", "same experiment, tile size and optimizer as the checkpoint's run"


def train(
    cfg: CabrucaConfig,
    *,
    resume: str | None = None,
    stop_after_steps: int | None = None,
    logger: logging.Logger | None = None,
) -> FitResult:
    """Run folder, logging, trackers, Trainer; also the library entry point the tests use."""
    device = torch_device(cfg.device)
    if cfg.training.mixed_precision and device.type != "cuda":
        raise DeviceError(
            f"--mixed-precision (float16 autocast with a GradScaler) needs a CUDA device; this run is on "
            f"{device.type}. Drop the option, or train with --device cuda on a machine with a GPU."
        )
    state, mode, why = None, None, ""
    if resume:
        state = load_checkpoint(resume)
        if "model" not in state:
            raise CheckpointError(f"{resume} is not a cabruca training checkpoint (no model state).")
        mode, why = resume_plan(state, cfg)
    if mode == "continue":
        run = RunFolder(Path(resume).resolve().parent.parent)  # <run>/checkpoints/<file>
    else:
        run = RunFolder.timestamped(cfg.output_dir, cfg.experiment_name)
    log = setup_logging(run.logs, level="INFO")
    if resume:
        log.info(
            "resuming from %s: %s (%s)",
            resume,
            "exact continuation" if mode == "continue" else "new run from its weights",
            why,
        )
    log.info("run folder %s; device %s", run.root, describe_device(device))
    save_config(cfg, run.path("config.yaml"))
    t = cfg.tracking
    trackers = build_trackers(
        run,
        history_file=HISTORY_FILE,
        tensorboard=t.tensorboard,
        mlflow={"experiment": t.project, "run_name": run.root.name, "tags": {k: "" for k in t.tags}}
        if t.mlflow
        else None,
        wandb={
            "project": t.project,
            "name": run.root.name,
            "tags": tuple(t.tags),
            "config": config_to_dict(cfg),
        }
        if t.wandb
        else None,
        resume_step=int(state["global_step"]) if mode == "continue" else None,
        logger=log,
    )
    trainer = Trainer(
        cfg,
        run,
        device,
        trackers=trackers,
        logger=log,
        resume_state=state if mode == "continue" else None,
        init_weights=state["model"] if mode == "weights" else None,
    )
    result = trainer.fit(stop_after_steps=stop_after_steps)
    log.info("finished at epoch %d, step %d; outputs in %s", result.epochs_done, result.global_step, run.root)
    return result


def run_demo(output_dir: str, device: str, extra_overrides: tuple[str, ...]) -> None:
    """Synthetic scenes, light config, a short run, evaluation, and where everything is."""
    from .evaluate import evaluate_checkpoint
    from .synthetic import generate

    data_dir = Path(output_dir) / "demo_data"
    if not (data_dir / "val" / "annotations.json").exists():
        click.echo(f"generating synthetic scenes in {data_dir} ...")
        generate(data_dir, num_train=6, num_val=2, image_size=256, seed=0)
    cfg = config_mod.load(
        "training_config_light",
        cli={
            "experiment_name": "demo",
            "output_dir": output_dir,
            "device": device,
            "data.data_dir": str(data_dir),
            "training.num_epochs": 6,
            "training.max_steps_per_epoch": 8,
            "training.checkpoint_every_n_epochs": 3,
            "scheduler.type": "onecycle",
            "optimizer.lr": 0.003,
            # mAP stays near 0 in two minutes; the best checkpoint (evaluated below) follows the validation loss.
            "training.monitor_metric": "val/loss",
            "training.minimize_metric": True,
        },
        overrides=extra_overrides,
    )
    result = train(cfg)
    best = result.run_dir / "checkpoints" / "checkpoint_best.pth"
    report = evaluate_checkpoint(
        best if best.exists() else result.run_dir / "checkpoints" / "checkpoint_latest.pth",
        data_dir,
        split="val",
        out_dir=result.run_dir / "evaluation",
        device=device,
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
                f"  dashboard:       python -m cabruca.monitor --runs-dir {Path(output_dir)}",
                f"  continue:        python -m cabruca.train --config {result.run_dir / 'config.yaml'} "
                f"--resume {result.run_dir / 'checkpoints' / 'checkpoint_latest.pth'} --epochs 12",
            ]
        )
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": False})
@click.option(
    "--config",
    "config_source",
    default=None,
    help="YAML path or bundled config name (training_config, training_config_light). "
    "Default: training_config.",
)
@click.option("--device", type=str, help="auto | cpu | cuda | cuda:N | mps.")
@click.option(
    "--resume", type=click.Path(dir_okay=False), help="Checkpoint to continue (or warm-start) from."
)
@click.option(
    "--use-mlflow",
    is_flag=True,
    help="Also log to MLflow (mlruns/ in the run folder or MLFLOW_TRACKING_URI).",
)
@click.option(
    "--use-wandb", is_flag=True, help="Also log to Weights & Biases (offline without WANDB_API_KEY)."
)
@click.option("--lr", type=float, help="optimizer.lr.")
@click.option("--batch-size", type=int, help="data.batch_size.")
@click.option("--epochs", type=int, help="training.num_epochs.")
@click.option("--grad-accum", type=int, help="training.gradient_accumulation_steps.")
@click.option("--experiment-name", type=str, help="Run folder prefix: <output-dir>/<name>_<timestamp>.")
@click.option("--mixed-precision", is_flag=True, help="float16 autocast + GradScaler (CUDA only).")
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option("--data-dir", type=str, help="data.data_dir (holds train/ and val/).")
@click.option("--output-dir", type=str, help="Parent folder of run folders (default outputs).")
@click.option("--tile-size", type=int, help="data.tile_size.")
@click.option("--num-workers", type=int, help="data.num_workers.")
@click.option("--seed", type=int, help="Seed for data order, augmentation and initialisation.")
@click.option(
    "--demo", is_flag=True, help="Synthetic data + light config: a two-minute CPU run, then evaluation."
)
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(ctx, config_source, resume, demo, print_config, overrides, **_):
    """Train cabruca's multi-task segmentation model. Trailing key.sub=value arguments override the config."""
    cli = typed_options(ctx, {name: key for name, key in OPTION_KEYS.items()})
    if demo:
        run_demo(cli.pop("output_dir", "outputs"), cli.pop("device", "auto"), overrides)
        return
    cfg = config_mod.load(config_mod.resolve_source(config_source), cli=cli, overrides=overrides)
    if print_config:
        click.echo(dump_config(cfg))
        return
    train(cfg, resume=resume)


def cli() -> None:
    """Console-script entry point: errors as one paragraph, never a traceback."""
    run_cli(main)


if __name__ == "__main__":
    cli()
