"""`python -m egnn_com.bench`: training throughput, per-epoch time by graph size, startup, data-loading share.

In one run it prints, per model (gcn, egnn) and graph size (small < 100 nodes, medium
100-500, large 500+): training graphs/s, per-epoch time, forward ms per batch, data-loading share of step
time, counted FLOPs per graph, achieved GFLOP/s and that as a share of this machine's float32 matmul peak
(timed in the same run), and peak memory; plus the eight startup phases and time to the first step on
demo-sized data. Timings are medians over epochs (or repeats) after a warm-up.

`--nproc N` measures scale-out instead: the training rows, once in one process and once as N processes under
`torchrun --standalone --nproc_per_node N` (DistributedDataParallel, each process reading its slice of every
global batch, as `egnn_com.pipeline` trains), both with cores // N threads per process and the same batch per
process; it reports global graphs/s for both and the scaling efficiency.

FLOPs come from torch.utils.flop_counter, which counts matrix products only (linear layers, GCN's sparse
aggregation is not counted): the message-passing gathers and scatters are real work the count leaves out.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import click

from common.allocator import tune_malloc
from common.benchmarking import measure_scaling, torch_matmul_peak_gflops, torch_sync
from common.cli import console_script, run_cli
from egnn_com.cliopts import option

EPOCH_GRAPHS = {
    "small": 256,
    "medium": 64,
    "large": 32,
}  # enough batches that epoch-start latency is amortised


def make_graphs(size: str, count: int, seed: int = 0) -> list:
    """`count` in-memory graphs of a size class (validated like files are)."""
    import torch

    from egnn_com.data import validate_graph
    from egnn_com.synthetic import SIZE_PRESETS, make_graph

    lo, hi = SIZE_PRESETS[size]
    return [
        validate_graph(
            {k: torch.from_numpy(v) for k, v in make_graph(seed, i, min_nodes=lo, max_nodes=hi).items()},
            Path(f"<{size}:{i}>"),
        )
        for i in range(count)
    ]


def bench_training(
    model_name: str,
    graphs: list,
    *,
    batch_size: int,
    hidden_dim: int,
    num_layers: int,
    epochs: int,
    num_workers: int,
    worker_type: str,
    device,
    peak: float,
    precision: str = "32",
    compile_: bool = False,
) -> dict:
    """Train `epochs` + 1 warm-up epochs on the training loop with the real task; medians over the timed epochs.

    Under torchrun each process trains its slice of every global batch of `batch_size` x processes graphs
    through DistributedDataParallel, as a training run does; `graphs_per_s` then counts every process's graphs.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from common.callbacks import Callback
    from common.config import load_config
    from common.devices import peak_memory_mb
    from common.distributed import get_rank, get_world_size
    from common.loop import Loop, Plan
    from common.schedules import build_schedule
    from common.torch_support import parse_precision
    from egnn_com.config import EgnnComConfig
    from egnn_com.data import make_loader
    from egnn_com.metrics import mae_loss
    from egnn_com.model import build_model
    from egnn_com.task import CentreOfMassTask, make_optimizer

    cfg = load_config(
        EgnnComConfig,
        overrides=[
            f"model.name={model_name}",
            f"model.hidden_dim={hidden_dim}",
            f"model.num_layers={num_layers}",
            f"data.batch_size={batch_size}",
            f"train.max_epochs={epochs + 1}",
            "train.save_every_n_steps=0",
        ],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg.model, graphs[0].num_node_features).to(device)
    world, rank = get_world_size(), get_rank()
    edge_layout = cfg.model.name == "egnn"  # as egnn_com.pipeline: only the EGNN reads the edge structure
    train_loader = make_loader(
        graphs,
        batch_size=batch_size,
        train=True,
        seed=0,
        num_workers=num_workers,
        worker_type=worker_type,
        device=device,
        rank=rank,
        world_size=world,
        edge_layout=edge_layout,
    )
    val_loader = make_loader(
        graphs[:1],
        batch_size=batch_size,
        train=False,
        seed=0,
        rank=rank,
        world_size=world,
        edge_layout=edge_layout,
    )
    net, ddp = model, None
    if world > 1:  # as egnn_com.pipeline wraps it: the loop's optimizer steps all-reduce the gradients
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        net = ddp
    if compile_:  # as egnn_com.pipeline does: every batch has other node/edge counts, hence dynamic
        net = torch.compile(net, dynamic=True)
    task = CentreOfMassTask(
        cfg,
        model=model,
        net=net,
        ddp=ddp,
        optimizer=make_optimizer(cfg, model),
        precision=parse_precision(precision, device),
        device=device,
        train_loader=train_loader,
        val_loader=val_loader,
        num_features=graphs[0].num_node_features,
    )
    epochs_seen: list[dict[str, float]] = []

    class Recorder(Callback):
        def on_train_epoch_end(self, loop, metrics):
            epochs_seen.append(
                {"epoch_s": metrics["system/epoch_time_s"], "data_share": task.data_wait_share()}
            )

    plan = Plan(max_epochs=epochs + 1, log_every_n_steps=0)
    Loop(task, plan, callbacks=[Recorder()], schedule=build_schedule(cfg.optim.schedule, [1e-3], 1)).fit()
    timed = epochs_seen[1:] or epochs_seen
    epoch_s = statistics.median(e["epoch_s"] for e in timed)
    graphs_per_epoch = task.num_batches(0) * batch_size * world  # every process's graphs

    batch = next(iter(make_loader(graphs, batch_size=batch_size, train=False, seed=0))).to(device)
    model.train()
    with FlopCounterMode(display=False) as counter:  # one forward + backward
        mae_loss(model(batch), batch.y).backward()
    task.optimizer.zero_grad(set_to_none=True)
    flops_per_graph = counter.get_total_flops() / batch.num_graphs
    model.eval()
    forward = []
    with torch.no_grad():
        for i in range(7):
            torch_sync(device)
            start = time.perf_counter()
            model(batch)
            torch_sync(device)
            if i >= 2:
                forward.append(time.perf_counter() - start)
    graphs_per_s = graphs_per_epoch / epoch_s
    achieved = flops_per_graph * graphs_per_s / 1e9
    return {
        "model": model_name,
        "graphs_per_epoch": graphs_per_epoch,
        "epoch_s": epoch_s,
        "graphs_per_s": graphs_per_s,
        "forward_ms": 1e3 * statistics.median(forward),
        "data_share": statistics.median(e["data_share"] for e in timed),
        "gflop_per_graph": flops_per_graph / 1e9,
        "gflops": achieved,
        "peak_share": achieved / peak,
        "mean_nodes": batch.num_nodes / batch.num_graphs,
        "mean_edges": batch.num_edges / batch.num_graphs,
        "memory_mb": peak_memory_mb(device),
    }


def bench_startup(num_graphs: int, num_workers: int) -> dict:
    """The eight startup phases and time to the first step of a real run on demo-sized data (fast_dev_run)."""
    from common.config import load_config
    from egnn_com.config import EgnnComConfig
    from egnn_com.demo import DEMO_NODES
    from egnn_com.pipeline import run_training
    from egnn_com.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_dataset(
            Path(tmp) / "data", num_graphs=num_graphs, min_nodes=DEMO_NODES[0], max_nodes=DEMO_NODES[1]
        )
        cfg = load_config(
            EgnnComConfig,
            "demo",
            package="egnn_com",
            overrides=["train.fast_dev_run=1", f"data.num_workers={num_workers}", "train.num_threads=0"],
        )
        cfg.data.data_dir = str(data)
        out = run_training(cfg)
    return {
        "phases": out.phases,
        "startup_s": sum(out.phases.values()),
        "first_step_s": out.time_to_first_step,
        "num_graphs": num_graphs,
        "num_workers": num_workers,
    }


def training_rows_of_this_process(
    models: str, sizes: str, graphs: int, device: str, json_out: str, **kw
) -> None:
    """The training rows only, as one process of a torchrun run (or alone); rank 0 writes them to `json_out`.

    What `--nproc` times on both sides: no startup measurement and no matmul peak (the share of the peak is
    left out of the scaling figures)."""
    from common.benchmarking import torchrun_part
    from common.devices import torch_device

    with torchrun_part(torch_device(device), json_out) as (dev, rows):
        for size in sizes.split(","):
            data = make_graphs(size, graphs or EPOCH_GRAPHS[size])
            for name in models.split(","):
                r = bench_training(name, data, device=dev, peak=math.nan, **kw)
                keep = ("model", "graphs_per_epoch", "epoch_s", "graphs_per_s", "gflop_per_graph")
                rows.append({k: r[k] for k in keep} | {"size": size})


def bench_scaling(nproc: int, measurement_args: list[str]) -> dict:
    """The training rows alone and as `nproc` torchrun processes; global graphs/s and scaling efficiency."""
    run = measure_scaling(
        "egnn_com.bench",
        ["--launched-part", *measurement_args],
        nproc,
        launcher="torchrun",
        json_flag="--json",
    )
    rows = []
    for one, other in run.pairs(lambda r: (r["size"], r["model"])):
        row = run.compare(f"{one['size']} {one['model']}", one["graphs_per_s"], other["graphs_per_s"])
        # the same graphs per epoch in both runs: the N processes share each epoch, they do not repeat it
        row |= {"size": one["size"], "model": one["model"], "graphs_per_epoch_1": one["graphs_per_epoch"]}
        row[f"graphs_per_epoch_{nproc}"] = other["graphs_per_epoch"]
        rows.append(row)
    click.echo(run.table(rows, unit="graphs/s"))
    return run.as_json(rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@option("models", default="gcn,egnn", help="Comma-separated models.")
@option("sizes", default="small,medium,large", help="Comma-separated size classes (small, medium, large).")
@option(
    "graphs",
    type=int,
    default=0,
    help="Graphs per training epoch (0 = by size: "
    + ", ".join(f"{k} {v}" for k, v in EPOCH_GRAPHS.items())
    + ").",
)
@option("batch_size", type=int, default=16)
@option("hidden_dim", type=int, default=64)
@option("num_layers", type=int, default=4)
@option("epochs", type=int, default=2, help="Timed epochs (after one warm-up epoch).")
@option(
    "num_workers", type=int, default=4, help="DataLoader workers for the timed epochs (the training default)."
)
@option(
    "worker_type",
    type=click.Choice(["thread", "process"]),
    default="thread",
    help="Background loading in one thread or in worker processes (see egnn_com.data.make_loader).",
)
@option("device", default="auto")
@option("threads", type=int, default=0, help="torch CPU threads (0 = torch's default).")
@option("startup_graphs", type=int, default=200, help="Demo-sized dataset for the startup measurement.")
@option("json_out", "--json", help="Also write all figures to this JSON file.")
@option(
    "nproc",
    type=int,
    default=0,
    help="Measure scale-out instead: the training rows in 1 process and in N processes under torchrun "
    "(cores // N threads each), with the scaling efficiency. 0 = the single-process benchmark.",
)
@click.option(
    "--peer/--no-peer",
    "peer",
    default=True,
    help="Also train the peer EGNN side by side with egnn_com's, interleaved (see egnn_com.peers).",
)
@option("peer_steps", type=int, default=10, help="At least this many interleaved step pairs per size.")
@option("peer_seconds", type=float, default=20.0, help="... and at least this many seconds of steps.")
@option(
    "cpu_time",
    is_flag=True,
    help="Time the side-by-side steps by this process's CPU time, steadier than wall time on a machine other "
    "jobs load (needs --threads 1: CPU time adds up every thread's).",
)
@option(
    "scaling",
    is_flag=True,
    help="Measure the scaling table instead: time per epoch and peak memory as the graphs per epoch, the "
    "batch and the hidden width double (3 points each, 2 with --quick; egnn, the first of --sizes).",
)
@option(
    "quick",
    is_flag=True,
    help="Check the machinery, not the speed: 1 timed epoch and 2 side-by-side step pairs per size.",
)
@option("precision", default="32", help="Training precision (32 | bf16-mixed | 16-mixed | ...).")
@click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile the model (dynamic shapes), as --use_compile."
)
@option("launched_part", is_flag=True, hidden=True, help="One process of the --nproc measurement.")
def main(
    models,
    sizes,
    graphs,
    batch_size,
    hidden_dim,
    num_layers,
    epochs,
    num_workers,
    worker_type,
    device,
    threads,
    startup_graphs,
    json_out,
    nproc,
    peer,
    peer_steps,
    peer_seconds,
    cpu_time,
    scaling,
    quick,
    precision,
    compile_,
    launched_part,
):
    """Benchmark gcn and egnn training on synthetic molecules of three size classes, and egnn vs its peer."""
    if quick:
        epochs, peer_steps, peer_seconds = 1, 2, 0.0
    if cpu_time and threads != 1:
        raise click.UsageError("--cpu_time needs --threads 1: a process's CPU time adds up all its threads'")
    if scaling:
        from egnn_com import bench_growth

        size = sizes.split(",")[0]
        base = dict(graphs=graphs or EPOCH_GRAPHS[size], batch_size=batch_size, hidden_dim=hidden_dim)
        base |= dict(num_layers=num_layers, epochs=epochs)
        tables = bench_growth.growth(size, base, points=2 if quick else 3, threads=threads)
        click.echo(bench_growth.report(tables, size, base))
        if json_out:
            Path(json_out).write_text(json.dumps({"scaling_table": tables, "base": base}, indent=2))
        return
    training = dict(
        batch_size=batch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        epochs=epochs,
        num_workers=num_workers,
        worker_type=worker_type,
        precision=precision,
        compile_=compile_,
    )
    malloc = tune_malloc()  # as the trainer runs: large buffers recycled from the heap (the peer's too)
    if launched_part:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        training_rows_of_this_process(models, sizes, graphs, device, json_out, **training)
        return
    if nproc > 0:
        args = [f"--{k}={v}" for k, v in training.items() if k != "compile_"] + ["--compile"] * compile_
        args += [f"--models={models}", f"--sizes={sizes}", f"--graphs={graphs}", f"--device={device}"]
        figures = bench_scaling(nproc, args)
        if json_out:
            Path(json_out).write_text(json.dumps({"scaling": figures}, indent=2))
            click.echo(f"wrote {json_out}")
        return
    start = time.perf_counter()
    import torch  # timed: library import is reported apart from the startup phases
    import torch_geometric  # noqa: F401

    from common.devices import describe_device, torch_device

    import_s = time.perf_counter() - start
    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch_device(device)
    peak = torch_matmul_peak_gflops(dev, n=4096 if dev.type == "cuda" else 2048, repeats=8)
    click.echo(
        f"device: {describe_device(dev)}; float32 matmul peak {peak:.1f} GFLOP/s; "
        f"library import {import_s:.2f}s; {malloc}"
    )
    startup = bench_startup(startup_graphs, num_workers)
    click.echo(
        f"startup on {startup_graphs} demo graphs: eight phases {startup['startup_s']:.3f}s "
        f"({', '.join(f'{k} {v:.3f}' for k, v in startup['phases'].items())}); time to first step "
        f"{startup['first_step_s']:.3f}s"
    )
    rows = []
    header = (
        f"{'size':<7}{'model':<6}{'graphs':>7}{'nodes':>6}{'edges':>7}{'epoch s':>9}{'graphs/s':>10}{'fwd ms':>8}"
        f"{'data %':>8}{'GFLOP/g':>9}{'GFLOP/s':>9}{'% peak':>8}{'mem MB':>8}"
    )
    click.echo(
        f"training: batch {batch_size}, hidden {hidden_dim}, {num_layers} layers, "
        f"{num_workers} workers ({worker_type}), median of {epochs} epochs after 1 warm-up\n{header}"
    )
    for size in sizes.split(","):
        data = make_graphs(size, graphs or EPOCH_GRAPHS[size])
        for name in models.split(","):
            r = bench_training(name, data, **training, device=dev, peak=peak)
            r["size"] = size
            rows.append(r)
            mem = max(r["memory_mb"].values()) if r["memory_mb"] else float("nan")
            click.echo(
                f"{size:<7}{name:<6}{r['graphs_per_epoch']:7d}{r['mean_nodes']:6.0f}{r['mean_edges']:7.0f}{r['epoch_s']:9.3f}"
                f"{r['graphs_per_s']:10.1f}{r['forward_ms']:8.2f}{100 * r['data_share']:7.1f}%"
                f"{r['gflop_per_graph']:9.4f}{r['gflops']:9.2f}{100 * r['peak_share']:7.1f}%{mem:8.0f}"
            )
    side_by_side = []
    if peer:
        from egnn_com.peers.side_by_side import compare_with_peer, peer_table

        if cpu_time:  # shares of a peak timed by the same clock as the steps
            peak = torch_matmul_peak_gflops(dev, n=2048, repeats=8, clock=time.process_time)

        for size in sizes.split(","):
            r = compare_with_peer(
                make_graphs(size, graphs or EPOCH_GRAPHS[size]),
                batch_size=batch_size,
                hidden_dim=hidden_dim,
                num_layers=num_layers,
                device=dev,
                peak=peak,
                min_steps=peer_steps,
                min_seconds=peer_seconds,
                cpu_time=cpu_time,
            )
            side_by_side.append({"size": size, **r})
        click.echo(peer_table(side_by_side, hidden_dim=hidden_dim, num_layers=num_layers))
    if json_out:
        Path(json_out).write_text(
            json.dumps(
                {
                    "device": describe_device(dev),
                    "matmul_peak_gflops": peak,
                    "import_s": import_s,
                    "startup": startup,
                    "training": rows,
                    "peer": side_by_side,
                },
                indent=2,
            )
        )
        click.echo(f"wrote {json_out}")


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
