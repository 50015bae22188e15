"""Workspace-wide pytest setup (`uv run pytest` runs every package in one process).

MLX's Linux CPU wheel ships a reference BLAS, about 30x slower than MKL; `import dtgcnn` loads MKL under
it, which only works before anything imports `mlx.core` (see dtgcnn/blas.py). common's MLX adapter tests
import mlx too and sort before dtgcnn's, so load the fast BLAS here, first.

A run that logs to MLflow without naming a store uses the shared `mlflow.db` where the command runs; in the
tests that would be the repository, so they get a scratch store unless a test sets its own.
"""

import os
import tempfile

import dtgcnn  # noqa: F401

# One scratch store per pytest process: xdist workers inherit the controller's environment, and two
# processes writing one SQLite store can meet "database is locked".
if "MLFLOW_TRACKING_URI" not in os.environ or os.environ.get("TRAINYARD_SCRATCH_MLFLOW"):
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='trainyard-mlflow-')}/mlflow.db"
    os.environ["TRAINYARD_SCRATCH_MLFLOW"] = "1"

# Under `uv run`, printed follow-up commands start with `uv run ` (common.cli.follow_up_command); the tests
# run those commands with their own interpreter, so they read them as a plain `python -m` session prints them.
os.environ.pop("UV_RUN_RECURSION_DEPTH", None)
