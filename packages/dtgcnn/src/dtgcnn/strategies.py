"""The training guide's strategies for the triplet-text mode, chosen by config keys and assembled here for
`text_trainer.fit_triplets`: progressive stages (`progressive`), curriculum (`curriculum`), multi-task heads
(`multitask`); ensembles (`ensemble_size`) wrap whole runs (`dtgcnn.ensemble`). They combine freely.
"""

from __future__ import annotations

from dataclasses import replace

from common.callbacks import Callback
from common.schedules import Schedule, build_schedule
from dtgcnn.config import DTGCNNConfig


def run_epochs(cfg: DTGCNNConfig) -> int:
    """Epochs of the whole run: progressive training adds its first two stages before num_epochs."""
    return cfg.num_epochs + (sum(map(int, cfg.progressive_epochs)) if cfg.progressive else 0)


def resolve(cfg: DTGCNNConfig, train_loader) -> DTGCNNConfig:
    """The config checked, with what the data decides filled in (the multi-task classifier's width)."""
    if cfg.ensemble_size < 1:
        from common.errors import ConfigError

        raise ConfigError(f"ensemble_size must be >= 1 (1 = a single run), got {cfg.ensemble_size}.")
    if cfg.progressive:
        from dtgcnn.progressive import check

        check(cfg)
    if cfg.multitask:
        from dtgcnn.multitask import check

        check(cfg, train_loader.dataset)
        if not cfg.num_classes:
            cfg = replace(cfg, num_classes=len(train_loader.dataset.label_names))
    return cfg


def build_task(cfg: DTGCNNConfig, model, train_loader, val_loader, **kwargs) -> tuple[object, list[Callback]]:
    """(the task for `cfg`, the callbacks its strategies add to the loop)."""
    from dtgcnn.text_task import TripletTask

    if cfg.multitask:
        from dtgcnn.multitask import MultiTaskTask

        task = MultiTaskTask(cfg, model, train_loader, val_loader, **kwargs)
    else:
        task = TripletTask(cfg, model, train_loader, val_loader, **kwargs)
    callbacks: list[Callback] = []
    if cfg.progressive:
        from dtgcnn.progressive import ProgressiveStages

        task.epoch_hooks.append(ProgressiveStages(cfg))
    if cfg.curriculum:
        from dtgcnn.curriculum import Curriculum

        curriculum = Curriculum(cfg, train_loader)
        curriculum.install()
        callbacks.append(curriculum)
    return task, callbacks


def build_run_schedule(cfg: DTGCNNConfig, steps_per_epoch: int) -> tuple[Schedule, str]:
    """(the LR schedule, its interval): the config's, or one per progressive stage."""
    sched_cfg, total = cfg.schedule_config(steps_per_epoch)
    if cfg.progressive:
        from dtgcnn.progressive import staged_schedule

        return staged_schedule(cfg, steps_per_epoch), sched_cfg.interval
    return build_schedule(sched_cfg, cfg.learning_rate, total), sched_cfg.interval
