"""EdgeConv's k-NN selection and max over neighbours on the CPU, as Numba kernels on every core.

Why not MLX ops: MLX runs each CPU op on one thread, and these are its slowest per element. Its
`argpartition` compares through an index array, and the max over k neighbours as MLX ops gathers k [B,N,C]
arrays and runs a max over them (`dtgcnn.neighbour_max`, still the GPU's form). Written as loops, each row
keeps its k nearest in one pass over its scores, and the max reads each neighbour's row once, keeping the
winner for the backward. Numba compiles the loops and runs the rows in parallel (`prange`). At the bench's
sizes (16 meshes of 1024 points, k 20, 256 channels) on 2 cores: the selection 50 ms against MLX's 160, the
max with its backward 20 ms against 320.

The kernels run eagerly inside the traced step: their inputs are evaluated (`mx.eval`) and read as NumPy
without a copy, and their results come back as MLX arrays. So a step that uses them cannot be `mx.compile`d
(`dtgcnn.engine.Stepper` then runs it uncompiled; compiling bought nothing measurable on the CPU).
Numba compiles them on their first call (about 10 s) and caches the machine code next to this module
(`cache=True`), so later processes load them in well under a second. Threads: Numba's, one per core,
`NUMBA_NUM_THREADS` to change. `DTGCNN_CPU_KERNELS=0` runs the MLX ops instead.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numba as nb
import numpy as np

KERNELS_ENV = "DTGCNN_CPU_KERNELS"


def enabled() -> bool:
    """Whether EdgeConv runs these kernels: the default device is the CPU and they are not opted out."""
    return mx.default_device() == mx.cpu and os.environ.get(KERNELS_ENV, "1").strip() != "0"


def describe() -> str:
    if enabled():
        return f"k-NN selection and neighbour max in Numba kernels on {nb.get_num_threads()} threads"
    return "k-NN selection and neighbour max as MLX ops"


@nb.njit(cache=True, inline="always")
def _insert(vals, ids, value, column, k):
    """Insert (value, column) into the ascending k-long buffers, dropping the last entry."""
    p = k - 1
    while p > 0 and vals[p - 1] > value:
        vals[p] = vals[p - 1]
        ids[p] = ids[p - 1]
        p -= 1
    vals[p] = value
    ids[p] = column


ROWS_PER_TASK = 64  # rows one thread takes at a time (its buffers are allocated once per task)
GROUPS = 8  # columns per group in the selection's first pass


@nb.njit(parallel=True, cache=True)
def _smallest_k_rows(scores, k):
    """scores [R,M] -> [R,k] int32 column ids of each row's k smallest entries, ascending; among entries tied
    with the k-th, the lowest columns are kept.

    Two passes per row. The first takes the minima of G = M // 8 column groups (column g, g + G, ...: plain
    elementwise minima of 8 contiguous runs, which vectorise) and keeps the k smallest minima: the k-th of
    them, t, bounds the row's k-th smallest entry from above (k groups each hold an entry <= t). The second
    scans the row once and inserts only entries <= t into the sorted k-long buffer, so almost every entry
    costs one comparison."""
    rows, m = scores.shape
    groups = m // GROUPS
    out = np.empty((rows, k), np.int32)
    for task in nb.prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        vals = np.empty(k, np.float32)
        ids = np.empty(k, np.int32)
        minima = np.empty(groups, np.float32)
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            row = scores[r]
            minima[:] = row[:groups]
            for run in range(1, GROUPS):
                for g in range(groups):
                    minima[g] = min(minima[g], row[run * groups + g])
            vals[:] = np.inf  # with fewer than k groups t stays inf: the scan then takes every entry
            for g in range(groups):
                if minima[g] < vals[k - 1]:
                    _insert(vals, ids, minima[g], g, k)
            bound = vals[k - 1]
            vals[:] = np.inf
            ids[:] = np.arange(k)  # valid columns even for a row of NaNs, which no comparison takes
            for j in range(m):
                if row[j] <= bound and row[j] < vals[k - 1]:
                    _insert(vals, ids, row[j], j, k)
            out[r] = ids
    return out


@nb.njit(parallel=True, cache=True)
def _max_rows(values, neighbours):
    """values [R,C], neighbours [R,k] row ids -> (max over each row's neighbours [R,C], winning row id [R,C])."""
    rows, c = values.shape
    k = neighbours.shape[1]
    best = np.empty((rows, c), values.dtype)
    winner = np.empty((rows, c), np.int32)
    for r in nb.prange(rows):
        first = neighbours[r, 0]
        for ch in range(c):
            best[r, ch] = values[first, ch]
            winner[r, ch] = first
        for t in range(1, k):
            j = neighbours[r, t]
            for ch in range(c):
                v = values[j, ch]
                if v > best[r, ch]:  # strictly greater: the first of tied neighbours wins
                    best[r, ch] = v
                    winner[r, ch] = j
    return best, winner


@nb.njit(parallel=True, cache=True)
def _scatter_to_winners(cotangent, winner, samples):
    """cotangent [R,C] added at its winning rows -> [R,C]; a sample's rows only reach its own rows, so the
    samples run in parallel without races."""
    rows, c = cotangent.shape
    per_sample = rows // samples
    grad = np.zeros((rows, c), cotangent.dtype)
    for b in nb.prange(samples):
        for r in range(b * per_sample, (b + 1) * per_sample):
            for ch in range(c):
                grad[winner[r, ch], ch] += cotangent[r, ch]
    return grad


def _numpy(a: mx.array, dtype: mx.Dtype) -> np.ndarray:
    """The MLX array, evaluated, as a C-contiguous NumPy array of `dtype` (no copy when it already is one)."""
    a = a if a.dtype == dtype else a.astype(dtype)
    mx.eval(a)
    return np.ascontiguousarray(np.asarray(a))


def smallest_k(scores: mx.array, k: int) -> mx.array:
    """Column ids [B,N,k] int32 of the k smallest entries of each row of scores [B,N,M] (evaluates scores)."""
    b, n, m = scores.shape
    if not 0 < k <= m:
        raise ValueError(f"k={k} nearest neighbours asked among {m} points; k must be between 1 and {m}.")
    scores = _numpy(scores, mx.float32)
    return mx.array(_smallest_k_rows(scores.reshape(b * n, m), k).reshape(b, n, k))


@mx.custom_function
def _neighbour_max(values, idx):
    b, n, c = values.shape
    rows = _numpy(idx, mx.int32) + (np.arange(b, dtype=np.int32) * n)[:, None, None]  # into [B*N] rows
    best, winner = _max_rows(_numpy(values, mx.float32).reshape(b * n, c), rows.reshape(b * n, -1))
    return mx.array(best.reshape(b, n, c)).astype(values.dtype), mx.array(winner.reshape(b, n, c))


@_neighbour_max.vjp
def _neighbour_max_vjp(primals, cotangents, outputs):
    values, idx = primals
    b, n, c = values.shape
    cotangent = _numpy(cotangents[0], mx.float32).reshape(b * n, c)
    grad = _scatter_to_winners(cotangent, _numpy(outputs[1], mx.int32).reshape(b * n, c), b)
    return mx.array(grad.reshape(b, n, c)).astype(values.dtype), mx.zeros_like(idx)


def max_over_neighbours(values: mx.array, idx: mx.array) -> mx.array:
    """max over j of values[b, idx[b,i,j], c]: values [B,N,C], idx [B,N,k] (not differentiated) -> [B,N,C].

    The first of tied neighbours (in idx order) wins, and the gradient goes to each channel's winner only."""
    return _neighbour_max(values, mx.stop_gradient(idx))[0]
