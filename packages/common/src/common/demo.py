"""`python -m common.demo`: common's self-demo and the smallest complete Trainyard trainer.

It fits a noisy linear regression with plain NumPy minibatch SGD, but goes through every piece a real
package uses: a config schema with overrides, a run folder with logs, a per-step LR schedule, early
stopping, atomic checkpoints with retention, exact resume, the JSON history and a curves plot. Read it as
the template for a new package's train.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from common.checkpoint import CheckpointManager, load_checkpoint
from common.cli import run_cli, typed_options
from common.config import config_to_dict, dump_config, load_config, save_config
from common.early_stopping import EarlyStopping
from common.logs import setup_logging
from common.plots import plot_history
from common.runs import RunFolder
from common.schedules import ScheduleConfig, build_schedule
from common.seeding import capture_rng_state, epoch_permutation, restore_rng_state, seed_everything
from common.signals import GracefulStop
from common.trackers import build_trackers


@dataclass
class DemoConfig:
    seed: int = 0  # seeds data generation, data order and initialisation
    output_dir: str = "outputs/common_demo"  # run folder
    samples: int = 512  # synthetic training samples (validation gets a quarter as many)
    features: int = 8  # input dimension
    noise: float = 0.1  # standard deviation of the label noise
    epochs: int = 20  # passes over the training data
    batch_size: int = 32  # samples per SGD step
    lr: float = 0.1  # peak learning rate
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=16, min_lr=1e-3, interval="step")
    )
    patience: int = 5  # early-stopping patience in epochs (val_loss)
    save_every_steps: int = 8  # mid-epoch checkpoint period, for crash recovery


def make_data(cfg: DemoConfig) -> tuple[np.ndarray, ...]:
    """y = X w* + noise, from its own generator so the data never depends on the run's RNG state."""
    rng = np.random.default_rng(cfg.seed)
    true_w = rng.normal(size=cfg.features)
    x = rng.normal(size=(cfg.samples + cfg.samples // 4, cfg.features))
    y = x @ true_w + cfg.noise * rng.normal(size=len(x))
    return x[: cfg.samples], y[: cfg.samples], x[cfg.samples :], y[cfg.samples :]


def mse(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w - y) ** 2))


def train(cfg: DemoConfig, resume: str | None = None) -> dict[str, float]:
    run = RunFolder(cfg.output_dir)
    log = setup_logging(run.logs)
    save_config(cfg, run.path("config.yaml"))
    seed_everything(cfg.seed)
    x_train, y_train, x_val, y_val = make_data(cfg)
    steps_per_epoch = len(x_train) // cfg.batch_size

    w = np.random.normal(scale=0.01, size=cfg.features)
    schedule = build_schedule(cfg.schedule, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience)
    manager = CheckpointManager(
        run.checkpoints,
        last="last.npz",
        best="best-{epoch:02d}-{val_loss:.4f}.npz",
        monitor="val_loss",
        mode="min",
        step_file="last_step.npz",
    )
    epoch, batch_in_epoch, global_step = 0, 0, 0
    if resume:
        state = load_checkpoint(resume)
        w = state["w"]
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stopping"])
        manager.load_state_dict(state["manager"])
        restore_rng_state(state["rng"])
        epoch, batch_in_epoch, global_step = state["epoch"], state["batch_in_epoch"], state["global_step"]
        log.info("resumed from %s at epoch %d, batch %d", resume, epoch, batch_in_epoch)
    trackers = build_trackers(run, resume_step=global_step if resume else None, logger=log)
    trackers.log_params(config_to_dict(cfg))

    def state(next_epoch: int, next_batch: int) -> dict:
        return {
            "w": w,
            "schedule": schedule.state_dict(),
            "early_stopping": stopper.state_dict(),
            "manager": manager.state_dict(),
            "rng": capture_rng_state(),
            "epoch": next_epoch,
            "batch_in_epoch": next_batch,
            "global_step": global_step,
            "config": config_to_dict(cfg),
        }

    with GracefulStop() as stop:
        while epoch < cfg.epochs and not stopper.should_stop:
            order = epoch_permutation(len(x_train), cfg.seed, epoch)  # data order = f(seed, epoch)
            for batch in range(batch_in_epoch, steps_per_epoch):
                idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
                xb, yb = x_train[idx], y_train[idx]  # [B, F], [B]
                grad = 2 * xb.T @ (xb @ w - yb) / len(idx)  # d/dw of the batch MSE, [F]
                w = w - schedule.lr * grad
                global_step += 1
                trackers.log_metrics({"train/step_loss": mse(w, xb, yb), "lr": schedule.lr}, step=global_step)
                schedule.step()
                if stop.requested or global_step % cfg.save_every_steps == 0:
                    manager.save_step(state(epoch, batch + 1), epoch=epoch, step=global_step)
                if stop.requested:
                    log.info(
                        "stopped by %s; resume with: python -m common.demo --resume %s",
                        stop.signal_name,
                        manager.latest(),
                    )
                    trackers.close()
                    return {}
            batch_in_epoch = 0
            metrics = {"val_loss": mse(w, x_val, y_val), "train_loss": mse(w, x_train, y_train)}
            trackers.log_metrics(
                {"train/loss": metrics["train_loss"], "val/loss": metrics["val_loss"]}, step=global_step
            )
            stopper.update(metrics)
            epoch += 1
            manager.save(state(epoch, 0), epoch=epoch, metrics=metrics)
            log.info(
                "epoch %d  train_loss %.4f  val_loss %.4f  lr %.4f",
                epoch,
                metrics["train_loss"],
                metrics["val_loss"],
                schedule.lr,
            )
    trackers.close()
    plot_history(run.path("metrics_history.json"), run.plots / "training_curves.png")
    log.info("done: best val_loss %.4f in %s; outputs in %s", manager.best_value, manager.best_path, run.root)
    return {"val_loss": mse(w, x_val, y_val), "best_val_loss": manager.best_value}


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", help="YAML file with DemoConfig keys.")
@click.option("--output-dir", help="Run folder (default outputs/common_demo).")
@click.option("--epochs", type=int, help="Number of epochs.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), help="Checkpoint to continue from.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(ctx: click.Context, config_path, output_dir, epochs, lr, seed, resume, print_config, overrides):
    """Train common's self-demo (NumPy linear regression) through every Trainyard piece.

    Trailing KEY=VALUE arguments override config keys, e.g. `schedule.name=step batch_size=64`.
    """
    cli = typed_options(ctx, {"output_dir": "output_dir", "epochs": "epochs", "lr": "lr", "seed": "seed"})
    cfg = load_config(DemoConfig, config_path, cli=cli, overrides=overrides)
    if print_config:
        click.echo(dump_config(cfg))
        return
    result = train(cfg, resume)
    if result:
        click.echo(f"val_loss {result['val_loss']:.4f}; outputs in {Path(cfg.output_dir).resolve()}")


if __name__ == "__main__":
    run_cli(main)
