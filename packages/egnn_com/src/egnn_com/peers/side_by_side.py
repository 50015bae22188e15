"""egnn_com's EGNN and the peer EGNN trained side by side: the same batches, interleaved steps, one process.

Both models take a training step (forward, MAE loss, backward, AdamW step at lr 1e-3, weight decay 1e-5:
egnn_com's optimizer as its trainer builds it, the peer's as torch's defaults build it) on the same
pre-built batches, alternately, so each pair of steps runs under the same machine load; their speed ratio
is the median over pairs. The data path is left out of both (the batches are built before timing): the
peer has no loader of its own, and egnn_com's own loader is measured by the training rows of
`egnn_com.bench`.
"""

from __future__ import annotations

from collections.abc import Callable

from common.benchmarking import Timing, count_flops, time_interleaved, torch_sync
from egnn_com.config import EgnnComConfig
from egnn_com.metrics import mae_loss
from egnn_com.model import EGNNCentreOfMass
from egnn_com.peers.egnn_clean import PeerCentreOfMass
from egnn_com.task import make_optimizer

PEER = "vgsatorras/egnn egnn_clean.py EGNN"


def training_step(model, optimizer, batches: list) -> Callable[[], None]:
    """One optimizer step per call, cycling over `batches`."""
    position = [0]

    def step() -> None:
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        optimizer.zero_grad(set_to_none=True)
        mae_loss(model(batch), batch.y).backward()
        optimizer.step()

    return step


def flops_per_graph(model, batch) -> float:
    """Counted FLOPs of one forward + backward, per graph of `batch` (matrix products only)."""
    flops = count_flops(lambda: mae_loss(model(batch), batch.y).backward())
    model.zero_grad(set_to_none=True)
    return flops / batch.num_graphs


def compare_with_peer(
    graphs: list,
    *,
    batch_size: int,
    hidden_dim: int,
    num_layers: int,
    device,
    peak: float,
    min_steps: int = 10,
    min_seconds: float = 20.0,
    cpu_time: bool = False,
) -> dict:
    """Train egnn_com's EGNN and the peer EGNN interleaved on the same full batches of `graphs`.

    `cpu_time` times steps by this process's CPU time instead of wall time (one torch thread only)."""
    import time

    import torch

    from egnn_com.data import make_loader

    loader = make_loader(graphs, batch_size=batch_size, train=False, seed=0)
    batches = [b.to(device) for b in loader if b.num_graphs == batch_size]
    if not batches:
        raise ValueError(f"{len(graphs)} graphs make no full batch of {batch_size}")
    features = graphs[0].num_node_features
    torch.manual_seed(0)
    models = {
        "egnn_com": EGNNCentreOfMass(features, hidden_dim, num_layers).to(device),
        "peer": PeerCentreOfMass(features, hidden_dim, num_layers).to(device),
    }
    optimizers = [  # egnn_com's as its trainer builds it (defaults: AdamW, lr 1e-3, weight decay 1e-5)
        make_optimizer(EgnnComConfig(), models["egnn_com"]),
        torch.optim.AdamW(models["peer"].parameters(), lr=1e-3, weight_decay=1e-5),
    ]
    steps = [training_step(m, opt, batches) for m, opt in zip(models.values(), optimizers, strict=True)]
    comparison = time_interleaved(
        *steps,
        min_steps=min_steps,
        min_seconds=min_seconds,
        sync=lambda: torch_sync(device),
        clock=time.process_time if cpu_time else time.perf_counter,
    )
    first = batches[0]
    result = {
        "mean_nodes": first.num_nodes / first.num_graphs,
        "mean_edges": first.num_edges / first.num_graphs,
        "batch_size": batch_size,
        "speedup": comparison.speedup,
        "pair_ratio_spread": comparison.pair_ratios.spread,
        "clock": "process CPU time" if cpu_time else "wall time",
    }
    for (name, model), timing in zip(models.items(), (comparison.a, comparison.b), strict=True):
        result[name] = _figures(timing, flops_per_graph(model, first), batch_size, peak)
    return result


def _figures(timing: Timing, flops: float, batch_size: int, peak: float) -> dict:
    graphs_per_s = timing.per_s(batch_size)
    return {
        "graphs_per_s": graphs_per_s,
        "step_ms_min": 1e3 * timing.min,
        "step_ms_median": 1e3 * timing.median,
        "step_ms_max": 1e3 * timing.max,
        "spread": timing.spread,
        "steps": len(timing.times),
        "gflop_per_graph": flops / 1e9,
        "peak_share": flops * graphs_per_s / 1e9 / peak,
        "timing": timing.summary(),
    }


def peer_table(rows: list[dict], *, hidden_dim: int, num_layers: int) -> str:
    """The side-by-side rows as the bench prints them, with each side's min / median / max step time."""
    clock = rows[0]["clock"] if rows else "wall time"
    lines = [
        f"side by side with the peer ({PEER}), both hidden {hidden_dim}, {num_layers} layers: training steps "
        f"interleaved on the same batches, timed by {clock}, ratio = median over step pairs",
        f"{'size':<7}{'nodes':>6}{'edges':>7}{'ours g/s':>10}{'peer g/s':>10}{'ratio':>7}"
        f"{'GFLOP/g ours':>14}{'peer':>8}{'% peak ours':>13}{'peer':>7}",
    ]
    for r in rows:
        ours, peer = r["egnn_com"], r["peer"]
        lines.append(
            f"{r['size']:<7}{r['mean_nodes']:6.0f}{r['mean_edges']:7.0f}{ours['graphs_per_s']:10.1f}"
            f"{peer['graphs_per_s']:10.1f}{r['speedup']:6.2f}x{ours['gflop_per_graph']:14.4f}"
            f"{peer['gflop_per_graph']:8.4f}{100 * ours['peak_share']:12.1f}%{100 * peer['peak_share']:6.1f}%"
        )
        lines.append(f"  {'egnn_com':<9}{ours['timing']}")
        lines.append(f"  {'peer':<9}{peer['timing']}")
    return "\n".join(lines)
