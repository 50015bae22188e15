"""Experiment trackers: the always-on JSON history plus optional TensorBoard, MLflow and W&B, behind one
fan-out (`Trackers`) that keeps training going when a backend fails.

Importing this package is cheap: tensorboard, mlflow, wandb and torch are imported only when a tracker that
needs them is built.
"""

from common.trackers.base import Tracker, Trackers, flatten_params
from common.trackers.factory import build_trackers
from common.trackers.json_history import JsonHistory
from common.trackers.mlflow import MlflowTracker
from common.trackers.models import LogFinalModel
from common.trackers.tensorboard import TensorBoardTracker
from common.trackers.wandb import WandbTracker

__all__ = [
    "JsonHistory",
    "LogFinalModel",
    "MlflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "build_trackers",
    "flatten_params",
]
