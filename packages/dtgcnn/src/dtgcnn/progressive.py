"""Progressive training of the text DT-GCNN: three stages, each with its own epochs and learning rate.

    stage 1  input projection (the embedding layer) + output projection   progressive_epochs[0] at progressive_lrs[0]
    stage 2  GCN layers + output projection, input projection frozen    progressive_epochs[1] at progressive_lrs[1]
    stage 3  everything                                                 num_epochs at learning_rate

The output projection trains in every stage: stage 1 only freezes the GCN layers and stage 2 only the
embedding layer, so the projection to the embedding space always follows what is being trained.

One run on the shared loop: the stage is a pure function of the epoch, so a run resumed mid-stage freezes
exactly what the uninterrupted run froze. A frozen layer gets no gradient, so the optimizer neither moves it
nor decays it (AdamW's weight decay only touches what it updates). BatchNorm running statistics are not
parameters: those of the frozen GCN layers in stage 1 still follow the data. The learning rate is
`StagedSchedule`: each stage runs the config's `scheduler` from its own rate over its own length (warm-up
in the first stage only), and the loop checkpoints it like any schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mlx.nn as nn
from mlx.utils import tree_flatten

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError
from common.schedules import Schedule, build_schedule
from dtgcnn.config import DTGCNNConfig
from dtgcnn.guide import AdvancedTrainer

STAGES = ("embedding", "gcn", "all")


# -- freezing: the guide's model methods, as functions of the text model ------------------------------------
def freeze_gcn_layers(model: nn.Module) -> None:
    for layer in [*model.gcn_layers, *model.norms]:
        layer.freeze()


def unfreeze_gcn_layers(model: nn.Module) -> None:
    for layer in model.gcn_layers:
        layer.unfreeze()
    for norm in model.norms:
        norm.unfreeze(keys=["weight", "bias"])  # running statistics stay state, never parameters


def freeze_embedding_layer(model: nn.Module) -> None:
    model.input_proj.freeze()


def unfreeze_all(model: nn.Module) -> None:
    model.input_proj.unfreeze()
    unfreeze_gcn_layers(model)
    model.output_proj.unfreeze()


def apply_stage(model: nn.Module, stage: str) -> None:
    """Freeze what `stage` leaves alone (from a fully trainable model)."""
    unfreeze_all(model)
    if stage == "embedding":
        freeze_gcn_layers(model)
    elif stage == "gcn":
        freeze_embedding_layer(model)


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, _ in tree_flatten(model.trainable_parameters())]


# -- the stages of a config ----------------------------------------------------------------------------------
def check(cfg: DTGCNNConfig) -> None:
    if len(cfg.progressive_epochs) != 2 or len(cfg.progressive_lrs) != 2:
        raise ConfigError(
            "progressive_epochs and progressive_lrs take two values each (stages 1 and 2; stage 3 trains "
            f"num_epochs at learning_rate), got {list(cfg.progressive_epochs)} and {list(cfg.progressive_lrs)}."
        )
    if min(cfg.progressive_epochs) < 0 or min(cfg.progressive_lrs) <= 0:
        raise ConfigError("progressive_epochs must be >= 0 and progressive_lrs > 0.")


def stage_epochs(cfg: DTGCNNConfig) -> list[int]:
    """Epochs of the three stages."""
    return [*map(int, cfg.progressive_epochs), cfg.num_epochs]


def stage_lrs(cfg: DTGCNNConfig) -> list[float]:
    return [*map(float, cfg.progressive_lrs), cfg.learning_rate]


def stage_of_epoch(cfg: DTGCNNConfig, epoch: int) -> str:
    end = 0
    for name, length in zip(STAGES, stage_epochs(cfg), strict=True):
        end += length
        if epoch < end:
            return name
    return STAGES[-1]


class StagedSchedule(Schedule):
    """One schedule per stage, back to back: stage k's schedule starts from its own step 0 when the run
    reaches the stage's first unit. Its state is every stage's state (exact resume)."""

    def __init__(self, stages: Sequence[tuple[int, Schedule]]) -> None:
        self.stages = [(int(n), s) for n, s in stages if n > 0]
        super().__init__(self.stages[0][1].base_lrs)

    def _stage_at(self, t: int) -> int:
        end = 0
        for k, (length, _) in enumerate(self.stages):
            end += length
            if t < end:
                return k
        return len(self.stages) - 1

    def _lrs_at(self, t: int) -> list[float]:
        return list(self.stages[self._stage_at(t)][1].lrs)

    def step(self, metric: float | None = None) -> list[float]:
        before = self._stage_at(self.last_step)
        self.last_step += 1
        if self._stage_at(self.last_step) == before:
            self.stages[before][1].step(metric)
        self.lrs = self._lrs_at(self.last_step)
        return list(self.lrs)

    def _extra_state(self) -> dict:
        return {"stages": [s.state_dict() for _, s in self.stages]}

    def _load_extra_state(self, d: dict) -> None:
        for (_, s), state in zip(self.stages, d["stages"], strict=True):
            s.load_state_dict(state)


def staged_schedule(cfg: DTGCNNConfig, steps_per_epoch: int) -> StagedSchedule:
    """The run's schedule: `cfg.scheduler` per stage, from the stage's LR over the stage's epochs."""
    parts = []
    for k, (epochs, lr) in enumerate(zip(stage_epochs(cfg), stage_lrs(cfg), strict=True)):
        if epochs == 0:
            continue
        stage_cfg = replace(
            cfg, num_epochs=epochs, learning_rate=lr, warmup_epochs=cfg.warmup_epochs if k == 0 else 0
        )
        sched_cfg, total = stage_cfg.schedule_config(steps_per_epoch)
        length = total if sched_cfg.interval == "epoch" else epochs * steps_per_epoch
        parts.append((length, build_schedule(sched_cfg, lr, total)))
    return StagedSchedule(parts)


class ProgressiveStages:
    """The task's epoch hook: puts the model in the epoch's stage, and rebuilds the task's gradient step
    when the trainable set changes (a compiled step is traced for one set of trainable arrays)."""

    def __init__(self, cfg: DTGCNNConfig) -> None:
        check(cfg)
        self.cfg = cfg
        self.stage: str | None = None

    def __call__(self, task, epoch: int) -> None:
        stage = stage_of_epoch(self.cfg, epoch)
        if stage == self.stage:
            return
        apply_stage(task.model, stage)
        self.stage = stage
        task.rebuild_stepper()


class ProgressiveTrainer(AdvancedTrainer):
    """The guide's `ProgressiveTrainer(model, config).train_progressive(train_loader, val_loader)`: the three
    stages above as one resumable run in `output_dir`."""

    def __init__(self, model, config: DTGCNNConfig, *, output_dir=None) -> None:
        super().__init__(model, replace(config, progressive=True), output_dir=output_dir)

    train_progressive = AdvancedTrainer.train
