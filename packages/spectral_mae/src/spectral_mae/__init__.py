"""spectral_mae: see README.md.

`from spectral_mae import load_from_checkpoint` gives `(model, config)` from any checkpoint the trainer wrote
(imported on first use, so `import spectral_mae` stays light).
"""

from __future__ import annotations

__all__ = ["load_from_checkpoint"]


def __getattr__(name: str):
    if name == "load_from_checkpoint":
        from spectral_mae.factory import load_from_checkpoint

        return load_from_checkpoint
    raise AttributeError(f"module 'spectral_mae' has no attribute {name!r}")
