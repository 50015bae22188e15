"""`torchrun ... -m spectral_mae.train_model_ddp`: the original project's script name for
`spectral_mae.train_ddp` (the same command, options and exit statuses)."""

from __future__ import annotations

from common.cli import run_cli
from spectral_mae.train_ddp import main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
