"""dtgcnn's model in MLflow: MLflow has no MLX flavor, so a run logs its best weights as an artifact (a
weights-only checkpoint holding the config it was trained with) and `load_mlflow_model` brings it back.

    model, cfg = dtgcnn.load_mlflow_model("runs:/<run_id>/model")   # or the bare run id
"""

from __future__ import annotations

from pathlib import Path

from common.checkpoint import load_checkpoint, save_checkpoint
from common.errors import CheckpointError

MODEL_FILE = "model.npz"  # the file inside the logged `model` folder
# What the loaders need (meshes: load_from_checkpoint; text: load_text_model); optimizer and RNG stay behind.
_KEPT = ("mode", "model", "config", "num_classes", "input_dim")


def export_model(checkpoint: str | Path, folder: str | Path) -> Path:
    """Write the weights-only part of `checkpoint` to `folder/model.npz` (a fraction of a full checkpoint's
    size) and return the folder, ready to be logged as the run's model."""
    state = load_checkpoint(checkpoint)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / MODEL_FILE, {k: state[k] for k in _KEPT if k in state})
    return folder


def load_mlflow_model(model_uri: str, *, tracking_uri: str | None = None, map_location: str | None = None):
    """(model in eval mode, its training config) from a model a dtgcnn run (meshes or text) logged to MLflow.

    `model_uri`: "runs:/<run_id>/model", any MLflow artifact URI of that folder, or a bare run id.
    `tracking_uri`: the store (default: MLFLOW_TRACKING_URI, else MLflow's own default, `mlflow.db` here)."""
    import mlflow.artifacts

    from dtgcnn.checkpoints import load_from_checkpoint

    if "/" not in model_uri and ":" not in model_uri:
        model_uri = f"runs:/{model_uri}/model"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=tracking_uri))
    path = folder / MODEL_FILE if folder.is_dir() else folder
    if not path.exists():
        raise CheckpointError(f"{model_uri} holds no {MODEL_FILE}; it is not a model a dtgcnn run logged.")
    if load_checkpoint(path).get("mode") == "triplets":
        from dtgcnn.text_trainer import load_text_model

        return load_text_model(path)
    return load_from_checkpoint(path, map_location)
