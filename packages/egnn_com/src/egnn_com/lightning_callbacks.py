"""`ModelCheckpoint` and `EarlyStopping` with Lightning's argument names, on common's callbacks.

They are `common.callbacks` classes (the shared loop runs them like any other callback, their state is in
every checkpoint), taking what a Lightning script passes:
- metric names with an underscore, `monitor="val_loss"`, mean the loop's `val/loss` (likewise `train_...`);
- a `filename` without a suffix gets `.ckpt`; with `auto_insert_metric_name=True` (Lightning's default)
  `{epoch}` becomes `epoch={epoch}`;
- `dirpath=None` means `<default_root_dir>/checkpoints` of the trainer that runs it.
`{epoch}` in file names counts epochs completed (1 after the first), as everywhere in this workspace; in
Lightning it starts at 0.
"""

from __future__ import annotations

import logging
import os
import string
from typing import Any

from common import callbacks as common_callbacks
from common.resume import CHECKPOINT_SUFFIXES

log = logging.getLogger("trainyard")

LearningRateMonitor = common_callbacks.LearningRateMonitor  # common's already takes logging_interval="epoch"


def loop_metric(name: str | None) -> str | None:
    """'val_loss' -> 'val/loss', 'train_mae_x' -> 'train/mae_x' (Lightning's names -> the loop's); others kept."""
    if name is None:
        return None
    for split in ("train", "val"):
        if name.startswith(f"{split}_"):
            return f"{split}/{name[len(split) + 1 :]}"
    return name


def _file_template(filename: str, auto_insert_metric_name: bool) -> str:
    """Lightning's `filename` as a common file-name template: `name=` inserted, `.ckpt` appended."""
    if auto_insert_metric_name:
        parts = []
        for literal, field, spec, conversion in string.Formatter().parse(filename):
            parts.append(literal)
            if field is not None:
                spec = f":{spec}" if spec else ""
                conversion = f"!{conversion}" if conversion else ""
                parts.append(f"{field}={{{field}{conversion}{spec}}}")
        filename = "".join(parts)
    return filename if filename.endswith(CHECKPOINT_SUFFIXES) else f"{filename}.ckpt"


class ModelCheckpoint(common_callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint arguments on common's (see the module docstring).

    `monitor=None` keeps the newest file under `filename` (Lightning's "top 1 without a metric");
    `save_last=True` adds `last.ckpt`. `save_weights_only=True` writes the best files without optimizer
    state; `last.ckpt` stays complete, so a run can always resume. `save_on_train_epoch_end` is accepted
    either way: validation ends each epoch here, so "after training" and "after validation" are one moment.
    `every_n_train_steps` writes `last-step.ckpt` every N optimizer steps (also written when Ctrl-C stops a run).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        save_on_train_epoch_end: bool | None = None,
    ) -> None:
        template = _file_template(filename or "{epoch}-{step}", auto_insert_metric_name)
        monitored = loop_metric(monitor)
        self._options: dict[str, Any] = {
            "filename": template if monitored else None,
            "monitor": monitored,
            "mode": mode,
            "save_top_k": save_top_k,
            # without a monitor, the newest state goes to the file name template (Lightning's default file)
            "save_last": "last.ckpt" if save_last else (False if monitored else template),
            "every_n_steps": every_n_train_steps or 0,
            "step_file": "last-step.ckpt",
            "best_weights_only": save_weights_only,
        }
        self.verbose = verbose
        self._bound = False
        if dirpath is not None:
            self.bind(dirpath)

    def bind(self, dirpath: str | os.PathLike) -> None:
        """Set the checkpoint folder (the trainer does it for `dirpath=None`); creates it."""
        super().__init__(dirpath, **self._options)
        self._bound = True

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def best_model_path(self) -> str:
        """The best checkpoint's path ('' before one is written), as Lightning gives it."""
        path = self.best_path if self._bound else None
        return str(path) if path else ""

    @property
    def last_model_path(self) -> str:
        """The newest end-of-epoch checkpoint's path ('' before one is written)."""
        path = self.manager.last_path if self._bound else None
        return str(path) if path else ""

    def on_train_epoch_end(self, loop, metrics: dict[str, float]) -> None:
        super().on_train_epoch_end(loop, metrics)
        if self.verbose and self.best_model_path:
            log.info("best checkpoint: %s (%s)", self.best_model_path, self.best_model_score)


class EarlyStopping(common_callbacks.EarlyStopping):
    """Lightning's EarlyStopping arguments on common's: stop when `monitor` ("val_loss" = val/loss) has not
    improved by more than `min_delta` for `patience` validations; NaN/inf stops at once (`check_finite`)."""

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        check_finite: bool = True,
    ) -> None:
        super().__init__(
            monitor=loop_metric(monitor),
            patience=patience,
            min_delta=min_delta,
            mode=mode,
            check_finite=check_finite,
        )
        self.verbose = verbose  # common's EarlyStopping always logs why it stopped
