"""`python -m dtgcnn.bench --mode triplets`: triplets/s of the text DT-GCNN's training step against the
float32 matmul peak timed in the same run (NumPy, `common.benchmarking`), at batch 128 / 512 / 1024 and
input_dim 384 / 768.

A step is what training runs: the batch's distinct texts (3 per triplet here, none shared) through the
model with its reference bank, batch-hard triplet loss, backward, clipping and AdamW. FLOPs count the dense
matmuls (2 * m * k * n each, backward twice the forward)."""

from __future__ import annotations

import numpy as np

from common.benchmarking import median_seconds


def model_flops(rows: int, bank: int, input_dim: int, widths: list[int], out: int) -> float:
    """Forward matmul FLOPs of one step: graph similarities, adjacency product, linear layers."""
    f = 2 * 2 * rows * bank * input_dim  # raw and projected-space similarities (projected width ~ input)
    f += 2 * rows * input_dim * widths[0] * 2  # input projection (+ graph-space projection)
    w_in = widths[0]
    for w in widths:
        f += 2 * rows * bank * w_in + 2 * rows * 2 * w_in * w
        w_in = w
    return f + 2 * rows * w_in * out


def time_triplet_step(batch: int, input_dim: int, steps: int, warmup: int) -> dict:
    import mlx.core as mx

    from dtgcnn.config import DTGCNNConfig
    from dtgcnn.engine import Stepper
    from dtgcnn.text_task import build_optimizer, text_loss_terms
    from dtgcnn.text_trainer import create_model

    mx.set_default_device(mx.cpu)
    cfg = DTGCNNConfig(
        input_dim=input_dim, hidden_dims=[512, 256, 128], num_gcn_layers=3, mining_strategy="batch_hard"
    )
    mx.random.seed(0)
    model = create_model(cfg)
    rng = np.random.default_rng(0)
    model.set_bank(rng.standard_normal((cfg.graph_bank_size, input_dim)).astype(np.float32))
    opt = build_optimizer(cfg)
    stepper = Stepper(model, opt, cfg, None, loss_fn=lambda m, x, y, t: text_loss_terms(m, cfg, x, y, t))
    rows = 3 * batch
    x = rng.standard_normal((rows, input_dim)).astype(np.float32)
    y = np.r_[np.arange(batch), np.arange(batch), batch + np.arange(batch)].astype(np.int32)  # a, p, n

    def step() -> None:
        stepper.micro_step(x, y, None)
        stepper.optimizer_step()

    mx.reset_peak_memory()
    step_s = median_seconds(step, warmup=warmup, repeats=steps)
    flops = 3 * model_flops(rows, cfg.graph_bank_size, input_dim, cfg.widths, cfg.output_dim)
    return {
        "batch": batch,
        "input_dim": input_dim,
        "step_s": step_s,
        "triplets_per_s": batch / step_s,
        "gflops": flops / step_s / 1e9,
        "peak_memory_mb": mx.get_peak_memory() / 2**20,
    }


def run(batches=(128, 512, 1024), dims=(384, 768), steps=5, warmup=2) -> tuple[float, list[dict]]:
    from common.benchmarking import numpy_matmul_peak_gflops

    peak = numpy_matmul_peak_gflops()
    rows = [time_triplet_step(b, d, steps, warmup) for d in dims for b in batches]
    for r in rows:
        r["share_of_peak"] = r["gflops"] / peak
    return peak, rows


def report(peak: float, rows: list[dict]) -> str:
    lines = [
        "dtgcnn bench --mode triplets: hidden [512, 256, 128], output 128, bank 256, batch_hard, AdamW",
        f"  NumPy float32 matmul peak {peak:8.1f} GFLOP/s (measured now)",
        "  input_dim  batch  step ms  triplets/s  GFLOP/s  share of peak  peak MLX MiB",
    ]
    for r in rows:
        lines.append(
            f"  {r['input_dim']:9d} {r['batch']:6d} {1e3 * r['step_s']:8.1f} {r['triplets_per_s']:11.0f} "
            f"{r['gflops']:8.1f} {100 * r['share_of_peak']:12.1f}% {r['peak_memory_mb']:12.0f}"
        )
    return "\n".join(lines)
