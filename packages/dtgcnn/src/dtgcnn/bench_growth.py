"""`python -m dtgcnn.bench --scaling`: time per epoch and peak memory as the meshes per epoch, the batch and
the model's width double, over a few points each, to show which costs grow linearly.

An epoch is the bench's train step (`engine.Stepper`: the compiled loss and gradient, then the clipped AdamW
update) over every mesh of the epoch once, in P x K batches (P identities of K = 4 meshes each); the meshes
are made in memory, so the epoch holds no file reading or augmentation. Doubling the batch doubles P and the
meshes per epoch with it, so an epoch keeps its number of steps. The width is the first EdgeConv's; the other
widths keep the default model's proportions (EdgeConv w-w-2w-4w, fusion 16w, hidden 8w, embedding 4w: w = 64
is the default model).

Each point trains in a fresh process (`python -m dtgcnn.bench_growth`); memory is MLX's peak (arrays MLX
allocated, `mx.get_peak_memory` after `mx.reset_peak_memory`) from before the meshes were made.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.errors import ConfigError
from common.growth import (
    growth_report,
    measure_growth,
    memory_baseline_mb,
    peak_rss_growth_mb,
    timed_epochs,
)

SAMPLES_PER_LABEL = 4  # K of the P x K batches, as training's default
# the base point: small enough that the whole table takes about a minute on an idle 2-core machine
BASE = {"meshes": 32, "batch_size": 8, "width": 16, "num_points": 256, "k": 20, "epochs": 2, "jit": True}
# what doubles: the meshes per epoch, the batch (with the meshes, so an epoch keeps its steps), the width
AXES = {"meshes": (), "batch_size": ("meshes",), "width": ()}


def check_base(base: dict) -> None:
    """A base whose points can be trained: whole P x K batches, whole epochs of batches."""
    b, m = base["batch_size"], base["meshes"]
    if b < SAMPLES_PER_LABEL or b % SAMPLES_PER_LABEL:
        raise ConfigError(
            f"--batch-size {b} is not a whole number of P x K groups: the scaling table's batches hold K = "
            f"{SAMPLES_PER_LABEL} meshes per identity; use a multiple of {SAMPLES_PER_LABEL}."
        )
    if m < b or m % b:
        raise ConfigError(f"the scaling table's {m} meshes per epoch do not split into batches of {b}.")
    if base["k"] >= base["num_points"]:
        raise ConfigError(f"--k {base['k']} needs more than {base['num_points']} points per mesh.")


def make_meshes(meshes: int, num_points: int, seed: int = 0):
    """(x [meshes, points, 6], labels [meshes]): points on a unit sphere with their normals, K meshes per
    identity in order, so consecutive batches are whole P x K groups."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pts = rng.standard_normal((meshes, num_points, 3)).astype(np.float32)
    pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
    labels = (np.arange(meshes) // SAMPLES_PER_LABEL).astype(np.int32)
    return np.concatenate([pts, pts], axis=-1), labels


def measure_point(
    meshes: int, batch_size: int, width: int, num_points: int, k: int, epochs: int, jit: bool = True
) -> dict:
    """One point in this process: the median of `epochs` timed epochs (wall and CPU time) after one untimed
    step (which compiles the step: `jit`, `mx.compile` as training does), and peak memory in MiB (MLX's
    peak; the resident peak's growth beside it)."""
    import mlx.core as mx
    import mlx.optimizers as optim

    from dtgcnn.config import TrainConfig
    from dtgcnn.engine import Stepper
    from dtgcnn.model import DTGCNN, ModelSpec

    check_base(dict(meshes=meshes, batch_size=batch_size, num_points=num_points, k=k))
    mx.set_default_device(mx.cpu)  # as the bench's step
    before_mb = memory_baseline_mb()
    mx.reset_peak_memory()
    x, y = make_meshes(meshes, num_points)
    cfg = TrainConfig(
        k=k,
        batch_size=batch_size,
        jit_compile=jit,
        edge_conv_dims=[width, width, 2 * width, 4 * width],
        fusion_dim=16 * width,
        hidden_dim=8 * width,
        embedding_dim=4 * width,
    )
    spec = ModelSpec.from_config(cfg, in_channels=6, num_classes=max(2, meshes // SAMPLES_PER_LABEL))
    mx.random.seed(0)
    stepper = Stepper(DTGCNN(spec), optim.AdamW(learning_rate=1e-3, weight_decay=cfg.weight_decay), cfg, None)

    def step(i: int) -> None:
        stepper.micro_step(x[i : i + batch_size], y[i : i + batch_size])
        stepper.optimizer_step()

    step(0)  # compiles the step for this batch shape

    def epoch() -> None:
        for i in range(0, meshes, batch_size):
            step(i)
        mx.synchronize()

    return {
        **timed_epochs(epoch, epochs),
        "peak_mb": mx.get_peak_memory() / 2**20,
        "rss_growth_mb": peak_rss_growth_mb(before_mb),
    }


def growth(base: dict, points: int, in_process: bool = False) -> dict[str, list[dict]]:
    """For each axis, `points` measurements doubling it from `base`, each in a fresh process (`in_process`:
    all in this one, for a test's tiny points)."""
    check_base(base)
    measure = (lambda point: measure_point(**point)) if in_process else None
    return measure_growth("dtgcnn.bench_growth", base, AXES, points, measure=measure)


def report(tables: dict[str, list[dict]], base: dict) -> str:
    w = base["width"]
    title = (
        f"scaling (base: {base['meshes']} meshes of {base['num_points']} points, batch {base['batch_size']} "
        f"= {base['batch_size'] // SAMPLES_PER_LABEL} x {SAMPLES_PER_LABEL}, k={base['k']}, width {w} "
        f"(EdgeConv {w}-{w}-{2 * w}-{4 * w}, fusion {16 * w}); each point a fresh process; doubling the "
        f"batch doubles the meshes per epoch; memory is MLX's peak)"
    )
    return growth_report(title, tables)


@click.command(help="One point of `python -m dtgcnn.bench --scaling` (run by the bench in a fresh process).")
@click.option("--meshes", type=int, required=True)
@click.option("--batch_size", type=int, required=True)
@click.option("--width", type=int, required=True)
@click.option("--num_points", type=int, required=True)
@click.option("--k", type=int, required=True)
@click.option("--epochs", type=int, required=True)
@click.option("--jit", type=bool, default=True)
@click.option("--json", "json_out", required=True)
def main(meshes, batch_size, width, num_points, k, epochs, jit, json_out):
    figures = measure_point(meshes, batch_size, width, num_points, k, epochs, jit)
    Path(json_out).write_text(json.dumps(figures))


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
