"""What dtgcnn's CPU kernels (`cpu_neighbours`, `cpu_norm`) share: when they run, Numba's options for
them, and the hand-over between MLX arrays and NumPy.

Why kernels at all: MLX runs each CPU op on one thread and fuses elementwise ops only under `mx.compile`.
The mesh model's k-NN selection, max over neighbours and BatchNorm + LeakyReLU are each a chain of such
ops over large [B,N,C] arrays; as Numba loops they read their inputs once or twice and run on every core.

The kernels run eagerly inside the traced step: their inputs are evaluated (`mx.eval`) and read as NumPy
without a copy, and their results come back as MLX arrays. So a step that uses them cannot be `mx.compile`d
(`dtgcnn.engine.Stepper` then runs it uncompiled; compiling bought nothing measurable on the CPU). Numba
compiles them on first use (several seconds) and caches the machine code beside the modules
(`cache=True`), so later processes load them in under a second. Threads: Numba's, one per core,
`NUMBA_NUM_THREADS=N` to change. `DTGCNN_CPU_KERNELS=0` runs the MLX forms instead (the GPU always does).

Threading layer: Numba's own work queue, not its OpenMP layer (unless NUMBA_THREADING_LAYER says otherwise).
The OpenMP layer sets the process's OpenMP thread count at every launch, and torch and MKL in the same
process follow it: a `torch.set_num_threads(1)` became 2 after one dtgcnn step, which broke another
package's bit-exact resume in a shared test process. The work queue aborts the process if two Python
threads launch at once, so `parallel_kernel` launches one kernel at a time.
"""

from __future__ import annotations

import functools
import os
import threading

import mlx.core as mx
import numba as nb
import numpy as np

KERNELS_ENV = "DTGCNN_CPU_KERNELS"
if "NUMBA_THREADING_LAYER" not in os.environ:
    nb.config.THREADING_LAYER = "workqueue"
_LAUNCH = threading.Lock()


def enabled() -> bool:
    """Whether the kernels run: the default device is the CPU and they are not opted out."""
    return mx.default_device() == mx.cpu and os.environ.get(KERNELS_ENV, "1").strip() != "0"


def describe() -> str:
    if enabled():
        return (
            "k-NN selection, neighbour max and BatchNorm + LeakyReLU in Numba kernels on "
            f"{nb.get_num_threads()} threads"
        )
    return "k-NN selection, neighbour max and BatchNorm + LeakyReLU as MLX ops"


def parallel_kernel(fn):
    """`fn` compiled by Numba with its `prange` loops on every core (`prange_only`), cached on disk, and
    launched one at a time in the process (see the threading layer above)."""
    compiled = nb.njit(parallel=prange_only(), cache=True)(fn)

    @functools.wraps(fn)
    def launch(*args):
        with _LAUNCH:
            return compiled(*args)

    return launch


def prange_only() -> dict[str, bool]:
    """Numba's parallel options with only `prange` loops run in parallel: its other conversions (array
    expressions, allocations) would each become a separate parallel loop, compiled on first use for ~0.5 s
    apiece and too small to gain from threads. A fresh dict each time: Numba consumes it."""
    keys = ("comprehension", "reduction", "inplace_binop", "setitem", "numpy", "stencil", "fusion")
    return dict.fromkeys(keys, False) | {"prange": True}


def as_numpy(a: mx.array, dtype: mx.Dtype = mx.float32) -> np.ndarray:
    """The MLX array, evaluated, as a C-contiguous NumPy array of `dtype` (no copy when it already is one)."""
    a = a if a.dtype == dtype else a.astype(dtype)
    mx.eval(a)
    return np.ascontiguousarray(np.asarray(a))
