"""`--fast-dev-run [N]` in every train command: N optimizer steps, one validation of at most N batches, a one-line
summary, no files.

A package's train command runs its ordinary training with three changes (`fast_dev_run_overrides` and
`scratch_folder`): the run folder (and a demo's generated data) goes to a temporary folder deleted when the
run ends, the trackers that write outside the run folder are off, and the `FastDevRun` callback stops the run
after N optimizer steps, validates once and prints the summary. So the check exercises the real data, model,
step, validation and checkpoint code of the package, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from common.callbacks import Callback

CALLBACK_PATH = "common.fast_dev_run.FastDevRun"


class FastDevRun(Callback):
    """Stop after `batches` optimizer steps, validate once on at most `batches` batches (the task's own
    `validate`, limited through `Task.val_batch_limit`), print the summary."""

    def __init__(self, batches: int = 1) -> None:
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        self.batches = batches
        self.train_sums: dict[str, float] = {}
        self.steps = 0
        self.val: dict[str, float] = {}

    def on_fit_start(self, loop) -> None:
        loop.task.val_batch_limit = self.batches

    def on_train_batch_end(self, loop, outputs: dict[str, float]) -> None:
        self.steps += 1
        for name, value in outputs.items():
            self.train_sums[name] = self.train_sums.get(name, 0.0) + float(value)
        if self.steps >= self.batches and not loop.should_stop:
            loop.should_stop, loop.stop_reason = True, f"fast-dev-run: {self.batches} step(s)"
            if loop.pos.batch < loop.task.num_batches(loop.pos.epoch):
                self.val = dict(loop.task.validate())  # mid-epoch; at an epoch's end the loop validates

    def on_validation_end(self, loop, metrics: dict[str, float]) -> None:
        self.val = {k.removeprefix("val/"): v for k, v in metrics.items()}

    def on_fit_end(self, loop, result) -> None:
        click.echo(summary_line(self.steps, self.metrics()))

    def metrics(self) -> dict[str, float]:
        train = {f"train/{k}": v / max(self.steps, 1) for k, v in self.train_sums.items() if k != "grad_norm"}
        return {**train, **{f"val/{k}": v for k, v in self.val.items()}}


def summary_line(steps: int, metrics: dict[str, float]) -> str:
    """The one line a `--fast-dev-run` prints: the steps taken and the train/val metrics."""
    # the losses first, then a few validation metrics: one line a person reads at a glance
    names = [n for n in ("train/loss", "val/loss") if n in metrics]
    names += sorted(n for n in metrics if n.startswith("val/") and n != "val/loss")[:4]
    shown = [f"{name} {metrics[name]:.4g}" for name in names]
    return (
        f"fast-dev-run passed: {steps} optimizer step(s); {', '.join(shown) or 'no metrics'}; nothing written"
    )


def callback_spec(batches: int) -> dict:
    """The config entry that adds `FastDevRun(batches)` to a package's `callbacks` list."""
    return {"class_path": CALLBACK_PATH, "init_args": {"batches": int(batches)}}


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for the run's files, removed when the run ends, whatever way it ends."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}_fast_dev_run_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
