"""`python -m dtgcnn.profile --batch-size 64 --output profile_report.txt [--config NAME] [--checkpoint PATH]`.

Profiles the model at a config's sizes on random meshes: forward and backward ms per batch, training
samples/s, peak memory, parameter count and FLOPs per sample; writes a plain-text report.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.cli import run_cli
from common.runs import atomic_write_text


def profile(cfg, batch_size: int, repeats: int = 3) -> dict[str, float]:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    from dtgcnn.engine import loss_terms
    from dtgcnn.model import DTGCNN, ModelSpec, count_parameters, flops_per_sample

    labels_per_batch = max(2, batch_size // max(2, cfg.samples_per_label))
    spec = ModelSpec.from_config(
        cfg, 6 if cfg.use_normals else 3, max(2, cfg.num_classes or labels_per_batch)
    )
    model = DTGCNN(spec)
    model.train()
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((batch_size, cfg.num_vertices, spec.in_channels)).astype(np.float32))
    y = mx.array((np.arange(batch_size) % spec.num_classes).astype(np.int32))
    mx.reset_peak_memory()
    grad_fn = nn.value_and_grad(model, lambda m, x, y: loss_terms(m, cfg, x, y))

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    fwd = timed(lambda: mx.eval(model(x)["embedding"]))
    full = timed(lambda: mx.eval(grad_fn(model, x, y)))
    flops = flops_per_sample(spec, cfg.num_vertices)
    return {
        "batch_size": batch_size,
        "num_vertices": cfg.num_vertices,
        "k": cfg.k,
        "forward_ms": 1e3 * fwd,
        "backward_ms": 1e3 * max(full - fwd, 0.0),
        "train_step_ms": 1e3 * full,
        "samples_per_s": batch_size / full,
        "peak_memory_mb": mx.get_peak_memory() / 2**20,
        "parameters": count_parameters(model),
        "forward_gflop_per_sample": flops["forward"] / 1e9,
        "train_gflop_per_sample": flops["train"] / 1e9,
        "achieved_gflops": flops["train"] * batch_size / full / 1e9,
    }


def report(stats: dict[str, float], blas: str) -> str:
    rows = [
        ("batch size", f"{stats['batch_size']}"),
        ("vertices per mesh", f"{stats['num_vertices']}"),
        ("k neighbours", f"{stats['k']}"),
        ("parameters", f"{stats['parameters']:,}"),
        ("forward", f"{stats['forward_ms']:.1f} ms / batch"),
        ("backward", f"{stats['backward_ms']:.1f} ms / batch"),
        ("throughput", f"{stats['samples_per_s']:.2f} samples/s (forward + backward)"),
        ("peak memory", f"{stats['peak_memory_mb']:.0f} MiB (MLX)"),
        (
            "FLOPs / sample",
            f"{stats['forward_gflop_per_sample']:.3f} GFLOP forward, "
            f"{stats['train_gflop_per_sample']:.3f} GFLOP forward + backward",
        ),
        ("achieved", f"{stats['achieved_gflops']:.1f} GFLOP/s"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(["DT-GCNN profile", blas, ""] + [f"{k.ljust(width)}  {v}" for k, v in rows]) + "\n"


@click.command(help=__doc__)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--config", "config_source", default="default_config", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default="profile_report.txt", show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.argument("overrides", nargs=-1)
def main(batch_size, config_source, output, repeats, overrides):
    from common.config import load_config
    from dtgcnn.config import TrainConfig
    from dtgcnn.config import config_source as resolve_source

    cfg = load_config(TrainConfig, resolve_source(config_source), package="dtgcnn", overrides=overrides)
    text = report(profile(cfg, batch_size, repeats), dtgcnn.BLAS.describe())
    atomic_write_text(Path(output), text)
    click.echo(text + f"wrote {output}")


if __name__ == "__main__":
    run_cli(main)
