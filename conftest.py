"""Workspace-wide pytest setup (`uv run pytest` runs every package in one process).

MLX's Linux CPU wheel ships a reference BLAS, about 30x slower than MKL; `import dtgcnn` loads MKL under
it, which only works before anything imports `mlx.core` (see dtgcnn/blas.py). common's MLX adapter tests
import mlx too and sort before dtgcnn's, so load the fast BLAS here, first.
"""

import dtgcnn  # noqa: F401
