"""`python -m spectral_mae.train_model`: the original project's script name for `python -m spectral_mae.train`
(the same command, options and exit statuses)."""

from __future__ import annotations

from common.cli import run_cli
from spectral_mae.train import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    run_cli(main)
