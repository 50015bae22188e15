"""Trainyard's shared training toolkit.

Framework-free at import: torch and MLX are only imported by `common.torch_support`, `common.mlx_support`
and inside the functions that need them. Import the submodule you need, e.g.
`from common.checkpoint import CheckpointManager`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainyard-common")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
