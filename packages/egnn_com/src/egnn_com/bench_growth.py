"""`python -m egnn_com.bench --scaling`: time per epoch and peak memory as the dataset, the batch and the
model double, over a few points each, to show which costs grow linearly.

Each point trains in a fresh process (`python -m egnn_com.bench_growth`): a process's peak resident memory
only ever grows, so one process could not report a smaller point after a larger one. Memory is the growth of
the peak over the process's memory before the graphs were made (torch and the libraries excluded), or the
CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.growth import growth_report, measure_growth, memory_baseline_mb, peak_rss_growth_mb

# what doubles: the dataset, the batch (with the graphs, so an epoch keeps its number of batches), the width
AXES = {"graphs": (), "batch_size": ("graphs",), "hidden_dim": ()}


def measure_point(size: str, graphs: int, batch_size: int, hidden_dim: int, num_layers: int, epochs: int):
    """One training measurement in this process: median epoch time and peak memory growth in MB."""
    import torch

    from common.devices import torch_device
    from egnn_com.bench import bench_training, make_graphs

    before_mb = memory_baseline_mb()
    device = torch_device("auto")
    r = bench_training(
        "egnn",
        make_graphs(size, graphs),
        batch_size=batch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        epochs=epochs,
        num_workers=0,
        worker_type="thread",
        device=device,
        peak=float("nan"),
    )
    peak_mb = r["memory_mb"]["cuda_peak_mb"] if device.type == "cuda" else peak_rss_growth_mb(before_mb)
    return {"epoch_s": r["epoch_s"], "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def growth(size: str, base: dict, points: int, threads: int) -> dict[str, list[dict]]:
    """For each axis, `points` measurements doubling that axis from `base`, each in a fresh process."""
    return measure_growth(
        "egnn_com.bench_growth", base, AXES, points, args=[f"--size={size}", f"--threads={threads}"]
    )


def report(tables: dict[str, list[dict]], size: str, base: dict) -> str:
    title = (
        f"scaling ({size} graphs; base: {base['graphs']} graphs, batch {base['batch_size']}, hidden "
        f"{base['hidden_dim']}; each point a fresh process; doubling the batch doubles the graphs per epoch)"
    )
    return growth_report(title, tables)


@click.command(
    help="One point of `python -m egnn_com.bench --scaling` (run by the bench in a fresh process)."
)
@click.option("--size", default="small")
@click.option("--graphs", type=int, required=True)
@click.option("--batch_size", type=int, required=True)
@click.option("--hidden_dim", type=int, required=True)
@click.option("--num_layers", type=int, required=True)
@click.option("--epochs", type=int, required=True)
@click.option("--threads", type=int, default=0)
@click.option("--json", "json_out", required=True)
def main(size, graphs, batch_size, hidden_dim, num_layers, epochs, threads, json_out):
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    figures = measure_point(size, graphs, batch_size, hidden_dim, num_layers, epochs)
    Path(json_out).write_text(json.dumps(figures))


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
