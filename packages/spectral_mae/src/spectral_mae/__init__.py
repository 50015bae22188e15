"""spectral_mae: see README.md.

`from spectral_mae import load_from_checkpoint` gives `(model, config)` from any checkpoint the trainer wrote;
`load_trained_model(checkpoint_path)` gives the model alone (in eval mode) and `evaluate_model_dataloader`
evaluates it, as in the original project's evaluation example. Imported on first use, so `import
spectral_mae` stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["evaluate_model_dataloader", "load_from_checkpoint", "load_trained_model"]

_HOMES = {
    "load_from_checkpoint": "spectral_mae.factory",
    "load_trained_model": "spectral_mae.factory",
    "evaluate_model_dataloader": "spectral_mae.evaluation",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'spectral_mae' has no attribute {name!r}")
