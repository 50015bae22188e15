"""EdgeConv's k-NN selection and max over neighbours on the CPU, as Numba kernels on every core
(see `dtgcnn.cpu_kernels` for why kernels, and how they run inside the step).

MLX's forms are its slowest ops per element: `argpartition` compares through an index array, and the max
over k neighbours gathers k [B,N,C] arrays and runs a max over them (`dtgcnn.neighbour_max`, still the
GPU's form). Here each row bounds its k-th smallest score in a cheap first pass and keeps its k nearest
in one scan, and the max reads each neighbour's row once, keeping the winner for the backward.
"""

from __future__ import annotations

import mlx.core as mx
import numba as nb
import numpy as np

from dtgcnn.cpu_kernels import as_numpy, parallel_kernel


@nb.njit(cache=True)
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


@parallel_kernel
def _nearest_rows(gram, sq, k):
    """gram [B,N,N] = x x^T, sq [B,N] = |x|^2 -> [B,N,k] int32 ids of each point's k nearest points
    (itself included), nearest first; among points tied with the k-th, the lowest ids are kept.

    Row i ranks point j by |x_j|^2 - 2 x_i.x_j (|x_i|^2 is constant in the row), computed here in float32
    exactly as `model.knn_scores` computes it (the -2 scaling is exact, so one rounding, as in its addmm), so
    both select the same points. The scores go through a per-task row buffer instead of a [B,N,N] array.
    Two passes per row: the first takes the minima of G = N // 8 column groups (column g, g + G, ...: plain
    elementwise minima of 8 contiguous runs, which vectorise) and keeps the k smallest minima, the k-th of
    which, t, bounds the row's k-th smallest score from above (k groups each hold a score <= t); the second
    scans the row once and inserts only scores <= t into a sorted k-long buffer, so almost every point
    costs one comparison."""
    b, n, _ = gram.shape
    groups = n // GROUPS
    out = np.empty((b, n, k), np.int32)
    tasks_per_sample = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    minus_two = np.float32(-2.0)
    for task in nb.prange(b * tasks_per_sample):
        sample, first = task // tasks_per_sample, (task % tasks_per_sample) * ROWS_PER_TASK
        row = np.empty(n, np.float32)
        minima = np.empty(groups, np.float32)
        vals = np.empty(k, np.float32)
        ids = np.empty(k, np.int32)
        norms = sq[sample]
        for i in range(first, min(n, first + ROWS_PER_TASK)):
            dots = gram[sample, i]
            for j in range(n):
                row[j] = norms[j] + minus_two * dots[j]
            for g in range(groups):
                minima[g] = row[g]
            for run in range(1, GROUPS):
                for g in range(groups):
                    v = row[run * groups + g]
                    minima[g] = v if v < minima[g] else minima[g]
            for p in range(k):
                vals[p] = np.inf  # with fewer than k groups t stays inf: the scan then takes every point
            for g in range(groups):
                if minima[g] < vals[k - 1]:
                    _insert(vals, ids, minima[g], g, k)
            bound = vals[k - 1]
            for p in range(k):
                vals[p] = np.inf
                ids[p] = p  # valid ids even for a row of NaNs, which no comparison takes
            for j in range(n):
                if row[j] <= bound and row[j] < vals[k - 1]:
                    _insert(vals, ids, row[j], j, k)
            for p in range(k):
                out[sample, i, p] = ids[p]
    return out


@parallel_kernel
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


@parallel_kernel
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


def nearest(features: mx.array, k: int) -> mx.array:
    """Ids [B,N,k] int32 of each point's k nearest points in feature space features [B,N,C], itself included
    (not differentiated). For float32 features the same points as `model.knn`; other dtypes are ranked in
    float32 here."""
    b, n, _ = features.shape
    if not 0 < k <= n:
        raise ValueError(f"k={k} nearest neighbours asked among {n} points; k must be between 1 and {n}.")
    x = mx.stop_gradient(features).astype(mx.float32)
    gram = as_numpy(x @ x.swapaxes(1, 2), mx.float32)  # a plain matmul: MKL threads it
    sq = as_numpy(mx.sum(x * x, axis=-1), mx.float32)
    return mx.array(_nearest_rows(gram, sq, k))


@mx.custom_function
def _neighbour_max(values, idx):
    b, n, c = values.shape
    rows = as_numpy(idx, mx.int32) + (np.arange(b, dtype=np.int32) * n)[:, None, None]  # into [B*N] rows
    best, winner = _max_rows(as_numpy(values, mx.float32).reshape(b * n, c), rows.reshape(b * n, -1))
    return mx.array(best.reshape(b, n, c)).astype(values.dtype), mx.array(winner.reshape(b, n, c))


@_neighbour_max.vjp
def _neighbour_max_vjp(primals, cotangents, outputs):
    values, idx = primals
    b, n, c = values.shape
    cotangent = as_numpy(cotangents[0], mx.float32).reshape(b * n, c)
    grad = _scatter_to_winners(cotangent, as_numpy(outputs[1], mx.int32).reshape(b * n, c), b)
    return mx.array(grad.reshape(b, n, c)).astype(values.dtype), mx.zeros_like(idx)


def max_over_neighbours(values: mx.array, idx: mx.array) -> mx.array:
    """max over j of values[b, idx[b,i,j], c]: values [B,N,C], idx [B,N,k] (not differentiated) -> [B,N,C].

    The first of tied neighbours (in idx order) wins, and the gradient goes to each channel's winner only.
    idx must hold point ids below N (the kernels do not check bounds): `nearest`'s output."""
    return _neighbour_max(values, mx.stop_gradient(idx))[0]
