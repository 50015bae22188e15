"""`python -m common.demo`: common's self-demo and the smallest complete Trainyard trainer.

It fits a noisy linear regression with plain NumPy minibatch SGD, but goes through every piece a real
package uses: a config schema with overrides, a run folder with logs, the shared training loop with a
`Task`, a per-step LR schedule, gradient accumulation, early stopping, atomic checkpoints with retention,
exact resume (`--resume last`), the JSON history and a curves plot. Read it as the template for a new
package's train.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from common.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TrackerLogger,
    build_callbacks,
)
from common.cli import (
    config_option,
    console_script,
    fast_dev_run_option,
    multirun_option,
    output_dir_option,
    overwrite_option,
    resume_option,
    run_cli,
    seed_option,
    typed_options,
)
from common.config import config_to_dict, dump_config, load_config, save_config
from common.fast_dev_run import FastDevRun
from common.logs import setup_logging
from common.loop import FitResult, Loop, Plan, Task
from common.plots import plot_history
from common.resume import find_checkpoint, read_training_checkpoint, saved_config
from common.runs import RunFolder
from common.sampler import ResumableSampler
from common.schedules import ScheduleConfig, build_schedule
from common.seeding import seed_everything
from common.trackers import build_trackers

COMMAND = "python -m common.demo"  # how a run starts: the resume hint a stopped run logs begins with it


@dataclass
class DemoConfig:
    seed: int = 0  # seeds data generation, data order and initialisation
    output_dir: str = "outputs/common_demo"  # run folder
    samples: int = 512  # synthetic training samples (validation gets a quarter as many)
    features: int = 8  # input dimension
    noise: float = 0.1  # standard deviation of the label noise
    epochs: int = 20  # passes over the training data
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit)
    batch_size: int = 32  # samples per micro-batch
    accumulate: int = 1  # micro-batches per SGD step
    dropout: float = 0.0  # probability of zeroing an input feature in training (draws from numpy's RNG)
    lr: float = 0.1  # peak learning rate
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=16, min_lr=1e-3, interval="step")
    )
    patience: int = 5  # early-stopping patience in epochs (val/loss)
    save_every_steps: int = 8  # mid-epoch checkpoint period, for crash recovery
    log_every_n_steps: int = 1  # train/<metric>_step rows every N optimizer steps
    mlflow_uri: str = ""  # also log to this MLflow tracking server (e.g. http://127.0.0.1:5000)
    callbacks: list[Any] = field(
        default_factory=list
    )  # extra callbacks: class paths or {class_path, init_args}


def make_data(cfg: DemoConfig) -> tuple[np.ndarray, ...]:
    """y = X w* + noise, from its own generator so the data never depends on the run's RNG state."""
    rng = np.random.default_rng(cfg.seed)
    true_w = rng.normal(size=cfg.features)
    x = rng.normal(size=(cfg.samples + cfg.samples // 4, cfg.features))
    y = x @ true_w + cfg.noise * rng.normal(size=len(x))
    return x[: cfg.samples], y[: cfg.samples], x[cfg.samples :], y[cfg.samples :]


def mse(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w - y) ** 2))


class RegressionTask(Task):
    """Linear regression by SGD: the whole of a package's side of the loop."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.x, self.y, self.x_val, self.y_val = make_data(cfg)
        self.sampler = ResumableSampler(len(self.x), cfg.batch_size, seed=cfg.seed)
        self.w = np.random.normal(scale=0.01, size=cfg.features)  # [F]
        self.grad = np.zeros_like(self.w)  # summed scaled gradients of the step in progress
        self.lr = cfg.lr

    def num_batches(self, epoch: int) -> int:
        return self.sampler.batches_per_epoch()

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch, start)
        for idx in self.sampler:
            yield self.x[idx], self.y[idx]  # [B, F], [B]

    def micro_step(self, batch, scale: float) -> dict[str, float]:
        xb, yb = batch
        if self.cfg.dropout:
            keep = np.random.random_sample(xb.shape) >= self.cfg.dropout  # the global RNG: resumed exactly
            xb = xb * keep / (1 - self.cfg.dropout)
        residual = xb @ self.w - yb  # [B]
        self.grad += scale * 2 * xb.T @ residual / len(yb)  # d/dw of the batch MSE, [F]
        return {"loss": float(np.mean(residual**2))}

    def optimizer_step(self) -> float:
        norm = float(np.linalg.norm(self.grad))
        self.w = self.w - self.lr * self.grad
        self.grad = np.zeros_like(self.w)
        return norm

    def set_lrs(self, lrs) -> None:
        self.lr = float(lrs[0])

    def validate(self) -> dict[str, float]:
        return {"loss": mse(self.w, self.x_val, self.y_val)}

    def state_dict(self) -> dict:
        return {"w": self.w.copy(), "config": config_to_dict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        self.w = np.array(state["w"])


def fast_dev_run_demo(cfg: DemoConfig, batches: int = 1, callbacks=()) -> FitResult:
    """`--fast-dev-run N`: N optimizer steps, one validation and the summary line (`common.fast_dev_run`);
    nothing is written: no run folder, checkpoint, log file or tracker."""
    setup_logging(None)
    seed_everything(cfg.seed)
    plan = Plan(max_epochs=1, accumulate=cfg.accumulate, log_every_n_steps=cfg.log_every_n_steps)
    return Loop(RegressionTask(cfg), plan, callbacks=[FastDevRun(batches), *callbacks]).fit()


def train(
    cfg: DemoConfig, resume: str | Path | dict | None = None, callbacks=(), *, overwrite: bool = False
) -> FitResult:
    run = RunFolder(cfg.output_dir, resume=resume is not None, overwrite=overwrite)
    log = setup_logging(run.logs)
    save_config(cfg, run.path("config.yaml"))
    seed_everything(cfg.seed)
    task = RegressionTask(cfg)
    plan = Plan(
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps or None,
        accumulate=cfg.accumulate,
        log_every_n_steps=cfg.log_every_n_steps,
        schedule_interval=cfg.schedule.interval,
    )
    steps_per_epoch = -(-task.num_batches(0) // cfg.accumulate)
    units = cfg.epochs * (steps_per_epoch if cfg.schedule.interval == "step" else 1)
    schedule = build_schedule(cfg.schedule, cfg.lr, total_steps=units)
    step = None
    if isinstance(resume, dict):
        step = int(resume["global_step"])
    elif resume is not None:
        resume = read_training_checkpoint(resume)
        step = int(resume["global_step"])
    mlflow = {"tracking_uri": cfg.mlflow_uri, "experiment": "common_demo"} if cfg.mlflow_uri else None
    trackers = build_trackers(run, resume_step=step, mlflow=mlflow, logger=log)
    trackers.log_params(config_to_dict(cfg))
    checkpoints = ModelCheckpoint(
        run.checkpoints,
        filename="best-{epoch:02d}-{val_loss:.4f}.npz",
        monitor="val/loss",
        save_last="last.npz",
        every_n_steps=cfg.save_every_steps,
        step_file="last_step.npz",
    )
    callbacks = [
        TrackerLogger(trackers),
        LearningRateMonitor(),
        EarlyStopping("val/loss", patience=cfg.patience),
        ProgressBar(),
        *build_callbacks(cfg.callbacks),
        *callbacks,
        checkpoints,
    ]
    loop = Loop(task, plan, callbacks=callbacks, schedule=schedule, resume=resume, command=COMMAND)
    try:
        result = loop.fit()
    finally:
        trackers.close()
    result.run_dir = run.root
    if result.interrupted:
        return result
    plot_history(run.path("metrics_history.json"), run.plots / "training_curves.png")
    log.info(
        "done: best val/loss %.4f in %s; outputs in %s",
        checkpoints.best_model_score,
        result.best_checkpoint,
        run.root,
    )
    return result


@click.command(context_settings={"ignore_unknown_options": True})
@config_option("common", help="YAML file with DemoConfig keys.")
@output_dir_option(run_folder=True, help="Run folder (default outputs/common_demo).")
@click.option("--epochs", type=int, help="Number of epochs.")
@click.option("--lr", type=float, help="Peak learning rate.")
@seed_option()
@resume_option()
@overwrite_option()
@fast_dev_run_option()
@multirun_option()
@click.option(
    "--print-config",
    "--print_config",
    "print_config",
    is_flag=True,
    help="Print the resolved config and exit.",
)
@click.argument("overrides", nargs=-1)
@click.pass_context
def main(
    ctx: click.Context,
    config,
    output_dir,
    epochs,
    lr,
    seed,
    resume,
    overwrite,
    fast_dev_run,
    print_config,
    overrides,
):
    """Train common's self-demo (NumPy linear regression) through every Trainyard piece.

    Trailing KEY=VALUE arguments override config keys, e.g. `schedule.name=step batch_size=64`.
    """
    cli = typed_options(ctx, {"output_dir": "output_dir", "epochs": "epochs", "lr": "lr", "seed": "seed"})
    state = None
    if resume:
        state = read_training_checkpoint(find_checkpoint(resume, output_dir or DemoConfig.output_dir))
    source = config or (saved_config(state, DemoConfig) if state else None)
    cfg = load_config(DemoConfig, source, cli=cli, overrides=overrides)
    if print_config:
        click.echo(dump_config(cfg))
        return 0
    if fast_dev_run:
        fast_dev_run_demo(cfg, fast_dev_run)  # prints its summary line
        return 0
    result = train(cfg, state, overwrite=bool(overwrite))
    if not result.interrupted:
        click.echo(
            f"val/loss {result.metrics.get('val/loss', float('nan')):.4f}; outputs in {Path(cfg.output_dir).resolve()}"
        )
    return result.exit_code


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
