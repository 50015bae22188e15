"""Loading a trained model from a checkpoint and running it over graphs (evaluate.py, predict.py, demo)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from common.checkpoint import load_checkpoint
from common.errors import CheckpointError
from common.torch_support import restore_training_state
from egnn_com.config import EgnnComConfig, config_from_dict
from egnn_com.model import build_model


def load_trained_model(
    path: str | Path, in_features: int, device: torch.device
) -> tuple[torch.nn.Module, EgnnComConfig]:
    """(model in eval mode on `device`, its training config) from an egnn_com checkpoint."""
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an egnn_com checkpoint (it has no model or config entry).")
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, in_features)
    restore_training_state({"model": state["model"]}, model, None)
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(model: torch.nn.Module, graphs: list, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Predicted centres [len(graphs), 3] (float32, on CPU), in the order of `graphs`."""
    # only what the models read: files with and without a target `y` can then share a batch
    inputs = [Data(x=g.x, pos=g.pos, edge_index=g.edge_index) for g in graphs]
    out = [model(batch.to(device)).float().cpu() for batch in DataLoader(inputs, batch_size=batch_size)]
    return torch.cat(out) if out else torch.empty(0, 3)
