"""`build_trackers`: the trackers a run asks for, built so that no optional backend can stop training."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common.distributed import is_main_process
from common.provenance import run_provenance
from common.runs import RunFolder, atomic_write_text
from common.trackers.background import BackgroundTracker
from common.trackers.base import DEFAULT_LOGGER, Tracker, Trackers, one_line
from common.trackers.json_history import JsonHistory

# Where a run folder remembers its MLflow / W&B run, so a resumed training run continues the same run there.
MLFLOW_RUN_ID_FILE = ".mlflow_run_id"
WANDB_RUN_ID_FILE = ".wandb_run_id"


def build_trackers(
    run: RunFolder,
    *,
    history_file: str = "metrics_history.json",
    tensorboard: bool | str = False,
    mlflow: dict | bool | None = None,
    wandb: dict | bool | None = None,
    resume_step: int | None = None,
    logger: logging.Logger | None = None,
) -> Trackers:
    """JsonHistory (always) + the optional backends asked for, on rank 0 only.

    tensorboard: True (folder `tensorboard/`) or a folder name inside the run. mlflow / wandb: None or False
    (off), True (defaults) or a dict of MlflowTracker / WandbTracker keyword arguments. A backend that cannot
    be built (package missing, server unreachable) is reported once as a warning and left out.
    resume_step: the checkpoint's global step; the history drops what was logged after it (it is replayed).
    """
    logger = logger or logging.getLogger(DEFAULT_LOGGER)
    if not is_main_process():
        return Trackers([], logger)
    trackers: list[Tracker] = [JsonHistory(run.path(history_file), resume_step=resume_step)]
    provenance = run_provenance()
    # (label, pip extra, builder, whether it talks to a server: those log from a worker thread)
    optional: list[tuple[str, str, Callable[[], Tracker], bool]] = []
    if tensorboard:
        folder = run.path("tensorboard" if tensorboard is True else str(tensorboard))
        purge_step = None if resume_step is None else resume_step + 1
        optional.append(("TensorBoard", "tensorboard", partial(_tensorboard, folder, purge_step), False))
    if mlflow:
        mlflow_kwargs = _kwargs(mlflow)
        mlflow_kwargs["tags"] = {**_source_tags(provenance), **(mlflow_kwargs.get("tags") or {})}
        optional.append(("MLflow", "mlflow", partial(_mlflow, run, mlflow_kwargs, resume_step), True))
    if wandb:
        optional.append(("W&B", "wandb", partial(_wandb, run, _kwargs(wandb), resume_step), True))
    for label, extra, build, networked in optional:
        try:
            tracker = build()
            trackers.append(BackgroundTracker(tracker, label=label, logger=logger) if networked else tracker)
        except ImportError as exc:
            hint = f"pip install 'trainyard-common[{extra}]'"
            logger.warning("%s tracking is off for this run: %s (install it: %s)", label, exc, hint)
        except Exception as exc:  # server down, bad URI, disk full: training goes on without this backend
            logger.warning(
                "%s tracking is off for this run: %s: %s", label, type(exc).__name__, one_line(exc)
            )
    fanout = Trackers(trackers, logger)
    # Where the run came from, in every tracker (and a file for people): code commit, command, versions.
    fanout.log_params({"run": provenance})
    atomic_write_text(run.path("provenance.json"), json.dumps(provenance, indent=2) + "\n")
    return fanout


def _source_tags(provenance: dict) -> dict[str, str]:
    """MLflow's own source tags, which its UI shows beside each run."""
    git = provenance.get("git") or {}
    tags = {"mlflow.source.name": str(provenance["command"]), "mlflow.source.type": "LOCAL"}
    if git:
        tags["mlflow.source.git.commit"] = str(git["commit"])
        tags["mlflow.source.git.branch"] = str(git["branch"])
        tags["trainyard.git.dirty"] = str(git["dirty"]).lower()
    return tags


def _kwargs(option: dict | bool) -> dict:
    return {} if option is True else dict(option)


def _tensorboard(log_dir: Path, purge_step: int | None) -> Tracker:
    from common.trackers.tensorboard import TensorBoardTracker

    return TensorBoardTracker(log_dir, purge_step=purge_step)


def _mlflow(run: RunFolder, kwargs: dict, resume_step: int | None) -> Tracker:
    from common.trackers.mlflow import MlflowTracker

    kwargs = {"experiment": "trainyard", **kwargs}
    return _continuing(MlflowTracker, kwargs, run.path(MLFLOW_RUN_ID_FILE), resume_step)


def _wandb(run: RunFolder, kwargs: dict, resume_step: int | None) -> Tracker:
    from common.trackers.wandb import WandbTracker

    kwargs = {"project": "trainyard", "dir": run.root, **kwargs}
    return _continuing(WandbTracker, kwargs, run.path(WANDB_RUN_ID_FILE), resume_step)


def _continuing(tracker_class, kwargs: dict, id_file: Path, resume_step: int | None):
    """Build the tracker; a resumed run passes the run id its folder remembers, and the id is remembered."""
    if resume_step is not None and "run_id" not in kwargs and id_file.exists():
        kwargs["run_id"] = id_file.read_text(encoding="utf-8").strip()
    tracker = tracker_class(**kwargs)
    atomic_write_text(id_file, tracker.run_id)
    return tracker
