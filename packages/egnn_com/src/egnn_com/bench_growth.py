"""`python -m egnn_com.bench --scaling`: time per epoch and peak memory as the dataset, the batch and the
model double, over a few points each, to show which costs grow linearly.

Each point trains in a fresh process (`python -m egnn_com.bench_growth`): a process's peak resident memory
only ever grows, so one process could not report a smaller point after a larger one. Memory is the growth of
the peak over the process's memory before the graphs were made (torch and the libraries excluded), or the
CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from common.benchmarking import growth_table

AXES = ("graphs", "batch_size", "hidden_dim")  # what doubles: the dataset, the batch, the model's width


def measure_point(size: str, graphs: int, batch_size: int, hidden_dim: int, num_layers: int, epochs: int):
    """One training measurement in this process: median epoch time and peak memory growth in MB."""
    import torch

    from common.devices import torch_device
    from egnn_com.bench import bench_training, make_graphs

    before_mb = _resident_mb()
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
    memory = r["memory_mb"]
    # max(0, ...): in a process that peaked before this point (not the bench's fresh ones) the peak can sit
    # a rounding below the memory now
    peak_mb = memory["cuda_peak_mb"] if device.type == "cuda" else max(0.0, memory["rss_peak_mb"] - before_mb)
    return {"epoch_s": r["epoch_s"], "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def growth(size: str, base: dict, points: int, threads: int) -> dict[str, list[dict]]:
    """For each axis, `points` measurements doubling that axis from `base`, each in a fresh process."""
    tables = {}
    for axis in AXES:
        rows = []
        for i in range(points):
            point = {**base, axis: base[axis] * 2**i}
            if axis == "batch_size":  # the same epochs' worth of batches, so the epoch grows with the batch
                point["graphs"] = base["graphs"] * 2**i
            rows.append({"value": point[axis], **_in_fresh_process(size, point, threads)})
        tables[axis] = rows
    return tables


def report(tables: dict[str, list[dict]], size: str, base: dict) -> str:
    lines = [
        f"scaling ({size} graphs; base: {base['graphs']} graphs, batch {base['batch_size']}, hidden "
        f"{base['hidden_dim']}; each point a fresh process; doubling the batch doubles the graphs per epoch)"
    ]
    for axis, rows in tables.items():
        lines.append(growth_table(axis, rows))
    return "\n".join(lines)


def _resident_mb() -> float:
    """This process's resident memory now (Linux /proc), else its peak so far (Linux reports KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_fresh_process(size: str, point: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="egnn-growth-") as tmp:
        out = Path(tmp) / "point.json"
        args = [f"--{k}={v}" for k, v in point.items()]
        command = [sys.executable, "-m", "egnn_com.bench_growth", f"--size={size}", f"--threads={threads}"]
        proc = subprocess.run([*command, *args, f"--json={out}"], capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the scaling point {point} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


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
