"""The text mode's Python API, on the shared loop: `Trainer`, `AdvancedTrainer`, and
the callbacks under the names text-mode users call them.

    trainer = Trainer(model=model, train_loader=train_loader, val_loader=val_loader, epochs=20)
    trainer.train()
    trainer = AdvancedTrainer(model, config)
    trainer.train(train_loader, val_loader, callbacks=[EarlyStopping(patience=5), ModelCheckpoint(save_top_k=3),
                                                      LearningRateMonitor(), TensorboardLogger()])

`EarlyStopping` and `LearningRateMonitor` are common's. Users build `ModelCheckpoint` and
`TensorboardLogger` without a folder, so here they are common's `ModelCheckpoint` / `TrackerLogger` that take
the run folder when the trainer starts (`bind_run`). Runs go to `output_dir` (default
experiments/run_<timestamp>).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from common.callbacks import Callback, EarlyStopping, LearningRateMonitor, TrackerLogger
from common.callbacks import ModelCheckpoint as _CommonModelCheckpoint
from common.loop import FitResult
from common.runs import RunFolder, timestamp
from dtgcnn.config import DTGCNNConfig

__all__ = [
    "AdvancedTrainer",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "TensorboardLogger",
    "Trainer",
]


class ModelCheckpoint(_CommonModelCheckpoint):
    """common's ModelCheckpoint with the folder optional (the run's checkpoints/ when the trainer starts).

    `ModelCheckpoint(save_top_k=3)` keeps the 3 best files by `monitor` (default val/loss) plus last.npz."""

    def __init__(self, dirpath: str | Path | None = None, *, monitor: str = "val/loss", **kwargs) -> None:
        kwargs.setdefault(
            "filename",
            "best-{epoch:04d}-{step}.npz" if kwargs.get("save_top_k", 1) != 1 else "best_model.npz",
        )
        kwargs.setdefault("save_last", "last.npz")
        kwargs.setdefault("step_file", "last_step.npz")
        self._pending = (monitor, kwargs)
        if dirpath is not None:
            super().__init__(dirpath, monitor=monitor, **kwargs)

    def bind_run(self, run: RunFolder, resume_step: int | None) -> None:
        if not hasattr(self, "manager"):
            monitor, kwargs = self._pending
            super().__init__(run.checkpoints, monitor=monitor, **kwargs)


class TensorboardLogger(TrackerLogger):
    """Logs every metric row to TensorBoard event files (default: the run's tensorboard/ folder)."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = log_dir
        self.trackers = None

    @property
    def state_key(self) -> str:
        return "TensorboardLogger"

    def bind_run(self, run: RunFolder, resume_step: int | None) -> None:
        from common.trackers import TensorBoardTracker, Trackers

        folder = Path(self.log_dir) if self.log_dir else run.path("tensorboard")
        purge = None if resume_step is None else resume_step + 1
        self.trackers = Trackers([TensorBoardTracker(folder, purge_step=purge)])

    def on_fit_end(self, loop, result) -> None:
        self.trackers.flush()
        self.trackers.close()


class Trainer:
    """The quick-start trainer: `Trainer(model, train_loader, val_loader, epochs).train()`."""

    def __init__(
        self,
        model,
        train_loader,
        val_loader=None,
        epochs: int = 20,
        *,
        config: DTGCNNConfig | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        cfg = config or DTGCNNConfig(warmup_epochs=0)
        dataset = train_loader.dataset
        self.config = replace(
            cfg,
            num_epochs=epochs,
            input_dim=model.spec["input_dim"],
            batch_size=train_loader.batch_size,
            encoder=dataset.encoder_spec,
        )
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.output_dir = Path(output_dir) if output_dir else Path("experiments") / f"run_{timestamp()}"
        self.result: FitResult | None = None

    def train(self, callbacks: Sequence[Callback] = ()) -> FitResult:
        from dtgcnn.text_trainer import fit_triplets

        self.result = fit_triplets(
            self.config,
            self.output_dir,
            model=self.model,
            train_loader=self.train_loader,
            val_loader=self.val_loader,
            callbacks=callbacks,
        )
        return self.result


class AdvancedTrainer:
    """The full trainer (config, callbacks): `AdvancedTrainer(model, config).train(train, val, callbacks=[...])`."""

    def __init__(self, model, config: DTGCNNConfig, *, output_dir: str | Path | None = None) -> None:
        self.model, self.config = model, config
        self.output_dir = output_dir

    def train(self, train_loader, val_loader=None, callbacks: Sequence[Callback] = ()) -> FitResult:
        trainer = Trainer(
            self.model,
            train_loader,
            val_loader,
            self.config.num_epochs,
            config=self.config,
            output_dir=self.output_dir,
        )
        return trainer.train(callbacks)
