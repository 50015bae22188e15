"""Rebuild a trained model from a dtgcnn checkpoint (its config and class count travel inside it)."""

from __future__ import annotations

from pathlib import Path

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.checkpoint import load_checkpoint
from common.config import load_config
from common.errors import CheckpointError
from common.mlx_support import load_model_state
from dtgcnn.config import TrainConfig
from dtgcnn.model import DTGCNN, ModelSpec


def load_trained(path: str | Path) -> tuple[DTGCNN, TrainConfig]:
    """(model in eval mode, its training config) from best_model.npz / checkpoint_epoch_NNNN.npz / last*.npz."""
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a dtgcnn checkpoint (it lacks the 'model' or 'config' entry).")
    overrides = [f"{k}={_yaml(v)}" for k, v in state["config"].items()]
    cfg = load_config(TrainConfig, None, package="dtgcnn", overrides=overrides)
    in_channels = 6 if cfg.use_normals else 3
    model = DTGCNN(ModelSpec.from_config(cfg, in_channels, int(state.get("num_classes", cfg.num_classes))))
    load_model_state(model, state["model"])
    model.eval()
    return model, cfg


def _yaml(value) -> str:
    import json

    return json.dumps(list(value) if isinstance(value, tuple) else value)
