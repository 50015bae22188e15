"""Timing helpers shared by every package's `bench` module.

Every benchmark reports achieved GFLOP/s as a share of the machine's matmul peak, timed in the same run,
with medians over repeated steps after warm-up. The peak is the best of several timed square
float32 matmuls: that is what a dense training step can at most approach on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def median_seconds(
    fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5, sync: Callable[[], Any] | None = None
) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones.

    `sync` is called after each call, inside the timed region, for asynchronous devices
    (`torch.cuda.synchronize`, `mx.eval` of the result, ...).
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflop(n: int) -> float:
    """FLOPs of one n x n by n x n matmul (a multiply and an add per term), in GFLOP."""
    return 2 * n**3 / 1e9


def numpy_matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of NumPy's BLAS on an n x n matmul: the CPU's practical dense peak."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm the BLAS threads and caches
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return matmul_gflop(n) / best


def torch_sync(device: Any) -> None:
    """Wait for queued CUDA work on `device` so a timer measures it; a no-op elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_matmul_peak_gflops(
    device: Any = "cpu", n: int = 2048, repeats: int = 5, dtype: Any = None
) -> float:
    """Best GFLOP/s of torch's matmul on `device` (float32 unless `dtype` is given)."""
    import torch

    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    a @ b
    torch_sync(device)

    def run() -> None:
        a @ b
        torch_sync(device)

    best = min(_timed(run) for _ in range(repeats))
    return matmul_gflop(n) / best


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
