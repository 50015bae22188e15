"""Callbacks of the training loop, with the hook names people know from Lightning and Keras.

Every hook gets the `Loop` first (its `pos`, `plan`, `task`, `schedule`, `should_stop`); a callback ends the
run after the current step by setting `loop.should_stop = True` and `loop.stop_reason`. A callback with
state (`state_dict` / `load_state_dict`) has it saved in every checkpoint under its `state_key`, so early
stopping's patience or a user's counters survive a resume exactly.

Ready callbacks: `EarlyStopping`, `ModelCheckpoint`, `LearningRateMonitor`, `ProgressBar`, `TrackerLogger`.
`ModelCheckpoint`s always run after the other callbacks of a hook, so the state they write already holds
what the others decided (early stopping's counters, a logged row).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import early_stopping
from common.checkpoint import CheckpointManager
from common.distributed import is_main_process
from common.errors import ConfigError
from common.progress import stderr_is_terminal

if TYPE_CHECKING:
    from common.loop import FitResult, Loop
    from common.trackers import Trackers

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ProgressBar",
    "TrackerLogger",
    "build_callbacks",
]

log = logging.getLogger("trainyard.loop")

HOOKS = (
    "on_fit_start",
    "on_train_epoch_start",
    "on_train_batch_end",
    "on_validation_end",
    "on_log",
    "on_train_epoch_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_fit_end",
    "on_exception",
)


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def on_fit_start(self, loop: Loop) -> None: ...
    def on_fit_end(self, loop: Loop, result: FitResult) -> None: ...
    def on_train_epoch_start(self, loop: Loop) -> None: ...
    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        """After an epoch: `metrics` is its logged row (train/<name> means, val/<name> when validated)."""

    def on_train_batch_end(self, loop: Loop, outputs: dict[str, float]) -> None:
        """After every optimizer step: `outputs` are the step's metrics averaged over its micro-batches."""

    def on_validation_end(self, loop: Loop, metrics: dict[str, float]) -> None: ...
    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """A row of metrics logged at optimizer step `loop.pos.step`."""

    def on_save_checkpoint(self, loop: Loop, checkpoint: dict) -> None:
        """The checkpoint state about to be written; a callback may add entries to it."""

    def on_load_checkpoint(self, loop: Loop, checkpoint: dict) -> None: ...
    def on_exception(self, loop: Loop, exception: BaseException) -> None: ...

    @property
    def state_key(self) -> str:
        return type(self).__qualname__

    def state_dict(self) -> dict | None:
        """State to save in checkpoints (None: nothing)."""
        return None

    def load_state_dict(self, state: dict) -> None: ...


class CallbackList:
    """Calls a hook on every callback in order, `ModelCheckpoint`s last."""

    def __init__(self, callbacks: Sequence[Any]) -> None:
        for cb in callbacks:
            missing = [h for h in HOOKS if not callable(getattr(cb, h, None))]
            if missing:
                raise ConfigError(
                    f"callback {cb!r} lacks {', '.join(missing)}; subclass common.callbacks.Callback, which "
                    "supplies every hook."
                )
        savers = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
        self._callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)] + savers
        # two stateful callbacks under one key would overwrite each other's state in the checkpoint
        keys = [cb.state_key for cb in self._callbacks if cb.state_dict() is not None]
        doubled = {k for k in keys if keys.count(k) > 1}
        if doubled:
            raise ConfigError(
                f"two callbacks share the state key {sorted(doubled)}; give each its own state_key."
            )

    def __iter__(self) -> Iterator[Any]:
        return iter(self._callbacks)

    def __getattr__(self, hook: str):
        if hook not in HOOKS:
            raise AttributeError(hook)

        def call(*args: Any) -> None:
            for cb in self._callbacks:
                getattr(cb, hook)(*args)

        return call

    def state_dicts(self) -> dict[str, dict]:
        states = {}
        for cb in self._callbacks:
            state = cb.state_dict()
            if state is not None:
                states[cb.state_key] = state
        return states

    def load_state_dicts(self, states: Mapping[str, dict]) -> None:
        for cb in self._callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` validations (Lightning's
    semantics: the check runs after each epoch that has the metric; NaN/inf stops at once when check_finite)."""

    def __init__(
        self,
        monitor: str = "val/loss",
        patience: int = 3,
        min_delta: float = 0.0,
        mode: str = "min",
        check_finite: bool = True,
    ) -> None:
        self.rule = early_stopping.EarlyStopping(monitor, mode, patience, min_delta, check_finite)

    @property
    def monitor(self) -> str:
        return self.rule.monitor

    @property
    def wait_count(self) -> int:
        return self.rule.wait

    @property
    def best_score(self) -> float | None:
        return self.rule.best

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        validated = any(k.startswith("val/") for k in metrics)
        if self.monitor not in metrics and not validated:
            return  # no validation this epoch: nothing to judge
        if self.rule.update(metrics):
            loop.should_stop, loop.stop_reason = True, f"early stopping: {self.rule.reason}"
            log.info("%s", loop.stop_reason)

    def state_dict(self) -> dict:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rule.load_state_dict(state)


class ModelCheckpoint(Callback):
    """Checkpoint files under the package's names (templates), with Lightning's retention options.

    - `save_last`: the newest state after every epoch (True: "last.ckpt"; or a file name template);
    - `filename` + `monitor` / `mode` / `save_top_k`: the best files by a metric (NaN never counts as best);
      `save_top_k=-1` keeps every one;
    - `every_n_epochs` + `periodic`: one more file every N epochs, never deleted;
    - `every_n_steps`: mid-epoch state to `step_file` (also written when a signal stops the run);
    - `best_weights_only`: the best files hold the model and config only (a fraction of the size: no optimizer
      state), while `last` stays complete for resuming.
    Files that hold the same state share their bytes (hard links); `manifest.json` beside them names the best
    file and its score (`common.resume.best_checkpoint` reads it), and each write logs its size.
    In a multi-process run only rank 0 writes (every rank holds the same weights).
    Templates take {epoch} (1 for the first epoch, as shown to people), {step} and the metrics ("/" -> "_").
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        *,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | str = True,
        every_n_epochs: int | None = None,
        periodic: str | None = None,
        every_n_steps: int = 0,
        step_file: str = "last_step.ckpt",
        best_weights_only: bool = False,
    ) -> None:
        if save_top_k < -1:
            raise ConfigError(f"save_top_k must be >= -1 (-1: keep all), got {save_top_k}.")
        if every_n_steps < 0:
            raise ConfigError(f"every_n_steps must be >= 0, got {every_n_steps}.")
        if monitor and filename is None:
            filename = "best-{epoch:02d}-{step}.ckpt" if save_top_k != 1 else "best.ckpt"
        last = "last.ckpt" if save_last is True else (save_last or None)
        self.every_n_steps = every_n_steps
        self.manager = CheckpointManager(
            dirpath,
            last=last,
            best=filename if monitor and save_top_k != 0 else None,
            monitor=monitor,
            mode=mode,
            top_k=10**9 if save_top_k == -1 else max(save_top_k, 1),
            every_n_epochs=every_n_epochs,
            periodic=periodic,
            step_file=step_file,
            best_weights_only=best_weights_only,
        )

    @property
    def dirpath(self) -> Path:
        return self.manager.directory

    @property
    def best_path(self) -> Path | None:
        return self.manager.best_path

    @property
    def best_model_score(self) -> float | None:
        return self.manager.best_value

    @property
    def kept(self) -> list[Path]:
        """The best files kept, best first."""
        return self.manager.kept_paths

    def on_train_batch_end(self, loop: Loop, outputs: dict[str, float]) -> None:
        if self.every_n_steps and loop.pos.step % self.every_n_steps == 0:
            self.save_step(loop)

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        if not is_main_process():
            return
        written = self.manager.save(loop.checkpoint_state(), epoch=loop.pos.epoch + 1, metrics=metrics)
        if written:
            loop.last_checkpoint = self.manager.last_path or written[0]

    def save_step(self, loop: Loop) -> Path | None:
        """Write the current state to the step file now (cadence, a signal, max_steps); rank 0 only."""
        if not is_main_process():
            return None
        path = self.manager.save_step(loop.checkpoint_state(), epoch=loop.pos.epoch + 1, step=loop.pos.step)
        loop.last_checkpoint = path
        return path

    def on_save_checkpoint(self, loop: Loop, checkpoint: dict) -> None:
        # The manager refreshes this entry after it writes, so a resumed run knows the file it resumed from.
        checkpoint["manager"] = self.manager.state_dict()

    def on_load_checkpoint(self, loop: Loop, checkpoint: dict) -> None:
        # The top-k bookkeeping names files in the checkpoint's own folder; a checkpoint copied elsewhere
        # starts a fresh ranking instead of deleting files it never wrote.
        here = loop.resume_path is None or loop.resume_path.resolve().parent == self.dirpath.resolve()
        if checkpoint.get("manager") and here:
            self.manager.load_state_dict(checkpoint["manager"])


class LearningRateMonitor(Callback):
    """Logs the learning rate: `lr` (the first parameter group) and `lr/<name>` per group when there are
    several. `logging_interval`: "step" (with the loop's log cadence), "epoch" (at each epoch start), or None
    (the schedule's own interval)."""

    def __init__(self, logging_interval: str | None = None, names: Sequence[str] | None = None) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ConfigError(f"logging_interval must be 'step', 'epoch' or None, got {logging_interval!r}.")
        self.logging_interval, self.names = logging_interval, list(names) if names else None

    def _interval(self, loop: Loop) -> str:
        return self.logging_interval or loop.plan.schedule_interval

    def _row(self, lrs: Sequence[float]) -> dict[str, float]:
        row = {"lr": float(lrs[0])}
        if len(lrs) > 1:
            names = self.names or [f"group{i}" for i in range(len(lrs))]
            row.update({f"lr/{name}": float(lr) for name, lr in zip(names, lrs, strict=True)})
        return row

    def on_train_epoch_start(self, loop: Loop) -> None:
        if self._interval(loop) == "epoch":
            loop.log(self._row(loop.schedule.lrs))

    def on_train_batch_end(self, loop: Loop, outputs: dict[str, float]) -> None:
        every = loop.plan.log_every_n_steps
        if self._interval(loop) == "step" and every and loop.pos.step % every == 0:
            loop.log(self._row(loop.lrs_used))  # the LR the step just taken used


class ProgressBar(Callback):
    """A tqdm bar over each epoch's optimizer steps in a terminal; a log line every 10% elsewhere."""

    def __init__(self, log_every: float = 0.1) -> None:
        self.log_every = log_every
        self._bar = None
        self._done = self._total = 0
        self._started = 0.0

    def on_train_epoch_start(self, loop: Loop) -> None:
        self._start(loop)

    def on_train_batch_end(self, loop: Loop, outputs: dict[str, float]) -> None:
        if self._total == 0:  # a resumed epoch: no epoch start was seen
            self._start(loop)
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{outputs.get('loss', math.nan):.4f}", refresh=False)
            return
        every = max(1, math.ceil(self._total * self.log_every))
        if self._done % every == 0 or self._done == self._total:
            rate = self._done / max(time.perf_counter() - self._started, 1e-9)
            log.info(
                "epoch %d: step %d/%d (%.0f%%) loss %.4f, %.2f steps/s",
                loop.pos.epoch + 1,
                self._done,
                self._total,
                100.0 * self._done / self._total,
                outputs.get("loss", math.nan),
                rate,
            )

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        self._close()

    def on_fit_end(self, loop: Loop, result: FitResult) -> None:
        self._close()

    def on_exception(self, loop: Loop, exception: BaseException) -> None:
        self._close()

    def _start(self, loop: Loop) -> None:
        self._close()
        batches = loop.task.num_batches(loop.pos.epoch)
        acc = loop.plan.accumulate
        self._total = max(1, math.ceil(batches / acc))
        self._done = loop.pos.batch // acc
        self._started = time.perf_counter()
        if stderr_is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total,
                initial=self._done,
                desc=f"epoch {loop.pos.epoch + 1}",
                leave=False,
                dynamic_ncols=True,
            )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._total = None, 0


class TrackerLogger(Callback):
    """Sends every logged row to the trackers (JSON history, TensorBoard, MLflow, W&B) at the loop's step.

    Its checkpointed state is the JSON history's log-call count: a resumed run cuts the history back to
    exactly the rows logged before its checkpoint."""

    def __init__(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        self.trackers.log_metrics(metrics, step=loop.pos.step)

    def on_train_epoch_end(self, loop: Loop, metrics: dict[str, float]) -> None:
        self.trackers.flush()  # the history file is complete at every epoch end

    def on_fit_end(self, loop: Loop, result: FitResult) -> None:
        self.trackers.flush()

    def on_exception(self, loop: Loop, exception: BaseException) -> None:
        self.trackers.flush()

    def state_dict(self) -> dict | None:
        history = self.trackers.history
        return history.state_dict() if history is not None else None

    def load_state_dict(self, state: dict) -> None:
        history = self.trackers.history
        if history is not None:
            history.load_state_dict(state)


# The callbacks a config may name by their short name.
BUILTIN = {
    "EarlyStopping": EarlyStopping,
    "LearningRateMonitor": LearningRateMonitor,
    "ProgressBar": ProgressBar,
}


def build_callbacks(specs: Sequence[str | Mapping[str, Any]]) -> list[Callback]:
    """Callbacks from a config list, Lightning-CLI style.

    Each item is a class name or a mapping {"class_path": ..., "init_args": {...}}. A class path is a short
    name of a common callback (EarlyStopping, LearningRateMonitor, ProgressBar) or "package.module.Class"
    (or "package.module:Class") of the user's own Callback subclass, which is imported: list only code you
    trust, as with any plugin.
    """
    built = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"class_path": spec}
        if not isinstance(spec, Mapping) or "class_path" not in spec:
            raise ConfigError(
                f"callbacks[{i}] must be a class path or {{class_path, init_args}}, got {spec!r}."
            )
        unknown = set(spec) - {"class_path", "init_args"}
        if unknown:
            raise ConfigError(
                f"callbacks[{i}] has unknown keys {sorted(unknown)}; use class_path and init_args."
            )
        cls = _resolve(str(spec["class_path"]), f"callbacks[{i}]")
        args = dict(spec.get("init_args") or {})
        try:
            built.append(cls(**args))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"callbacks[{i}] ({spec['class_path']}): {exc}") from None
    return built


def _resolve(path: str, where: str) -> type:
    if path in BUILTIN:
        return BUILTIN[path]
    module_name, sep, name = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ConfigError(
            f"{where}: {path!r} is neither a common callback ({', '.join(BUILTIN)}) nor a dotted path."
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import {path!r} ({exc}).") from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise ConfigError(f"{where}: {path!r} is not a subclass of common.callbacks.Callback.")
    return cls
