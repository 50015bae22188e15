"""A trained model from a checkpoint, and running it over graphs (evaluate.py, predict.py, the demo)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from common.checkpoint import load_checkpoint
from common.devices import torch_device
from common.errors import CheckpointError, DataError
from common.torch_support import restore_training_state
from egnn_com.config import EgnnComConfig, config_from_dict
from egnn_com.model import build_model

# The first weight of each model, whose shape gives the node-feature width of checkpoints that do not record it.
_INPUT_WEIGHTS = {"gcn": ("convs.0.lin.weight", 3), "egnn": ("embed.weight", 0)}  # name, coordinates appended


def resolve_checkpoint(location: str | Path) -> Path:
    """A checkpoint file as given; a run folder or checkpoint folder -> its best checkpoint, read from the
    `manifest.json` that training keeps beside the checkpoints (no file-name parsing)."""
    path = Path(location)
    if path.is_dir():
        from common.resume import best_checkpoint

        return best_checkpoint(path)
    return path


def load_from_checkpoint(
    path: str | Path, map_location: str | torch.device | None = None
) -> tuple[torch.nn.Module, EgnnComConfig]:
    """(model in eval mode, its training config) from any egnn_com checkpoint (last, step or best file, also
    a weights-only best file), or from a run folder (its best checkpoint, see `resolve_checkpoint`).

    `map_location`: the device to put the model on ("cpu", "cuda:0", "auto", a torch.device); default cpu.
    The model's `in_features` is the node-feature width it expects.
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an egnn_com checkpoint (it has no model or config entry).")
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, _num_features(state, cfg, path))
    restore_training_state({"model": state["model"]}, model, None)
    if map_location is None:
        device = torch.device("cpu")
    elif isinstance(map_location, torch.device):
        device = map_location
    else:
        device = torch_device(str(map_location))
    return model.to(device).eval(), cfg


def _num_features(state: dict, cfg: EgnnComConfig, path) -> int:
    if "num_features" in state:
        return int(state["num_features"])
    name, appended = _INPUT_WEIGHTS.get(cfg.model.name, ("", 0))
    weight = state["model"].get(name)
    if weight is None or getattr(weight, "ndim", 0) != 2:
        raise CheckpointError(f"{path}: cannot tell the model's node-feature width (no {name!r} weight).")
    return int(weight.shape[1]) - appended - int(cfg.model.use_mass)


def check_features(model: torch.nn.Module, num_features: int, where: str) -> None:
    """DataError when the graphs' node-feature width is not the one the model was trained on."""
    expected = getattr(model, "in_features", num_features)
    if expected != num_features:
        raise DataError(
            f"the graphs in {where} have {num_features} features per node, but the checkpoint's model was "
            f"trained on {expected}."
        )


@torch.no_grad()
def predict(model: torch.nn.Module, graphs: list, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Predicted centres [len(graphs), 3] (float32, on CPU), in the order of `graphs`."""
    # only what the models read: files with and without a target `y` can then share a batch
    inputs = [Data(x=g.x, pos=g.pos, edge_index=g.edge_index, mass=g.mass) for g in graphs]
    out = [model(batch.to(device)).float().cpu() for batch in DataLoader(inputs, batch_size=batch_size)]
    return torch.cat(out) if out else torch.empty(0, 3)
