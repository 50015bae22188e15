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


def load_from_checkpoint(path: str | Path, map_location: str | None = None) -> tuple[DTGCNN, TrainConfig]:
    """(model in eval mode, its training config) from any checkpoint a run writes: best_model.npz,
    checkpoint_epoch_NNNN.npz, last.npz, last_step.npz.

    `map_location`: an MLX device name (auto | cpu | gpu) made the default device for what runs next;
    None leaves the default device as it is (MLX arrays live in unified memory, so nothing is copied)."""
    state = load_checkpoint(path)
    if "model" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a dtgcnn checkpoint (it lacks the 'model' or 'config' entry).")
    if map_location is not None:
        import mlx.core as mx

        from common.devices import mlx_device

        mx.set_default_device(mlx_device(map_location))
    cfg = load_config(TrainConfig, state["config"], package="dtgcnn")
    in_channels = 6 if cfg.use_normals else 3
    model = DTGCNN(ModelSpec.from_config(cfg, in_channels, int(state.get("num_classes", cfg.num_classes))))
    load_model_state(model, state["model"])
    model.eval()
    return model, cfg
