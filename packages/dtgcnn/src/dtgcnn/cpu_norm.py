"""BatchNorm + LeakyReLU in training mode on CPU, forward and backward, as Numba kernels over all cores.

Why not MLX ops: `nn.leaky_relu(nn.BatchNorm(...)(x))` is about a dozen elementwise ops forward and twenty
backward, each one pass over x on one thread (MLX runs CPU ops on one thread and fuses them only under
`mx.compile`, which the eager neighbour kernels rule out), and the training forward computes the variance
twice (once for the output, once with ddof 1 for `running_var`). Here the forward reads x once for the
per-channel moments and once more to normalise, scale, shift and apply the slope; the backward recomputes
the normalised x from x and the saved mean and 1/std instead of keeping a second [R,C] array, so it reads x
and the cotangent twice (per-channel sums, then the input gradient) and writes the gradient once.
`batch_norm_leaky_pool` also takes in the fusion block's max and mean over points: the [B,N,C] activation
is pooled as it is computed and never stored, and its backward needs no [B,N,C] cotangent or max mask.

Sums run over a partition of the rows that depends only on the shape, one partial sum per row block in
float64, combined in block order: results are bit-identical run to run and whatever the thread count,
which exact resume relies on. Everything outside CPU training of a float32, affine, tracking BatchNorm
(eval mode, another device, `DTGCNN_CPU_KERNELS=0`) runs the plain MLX expression. The kernels run
eagerly, like those of `cpu_neighbours`, so a graph that uses them cannot be `mx.compile`d.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numba as nb
import numpy as np

from dtgcnn.cpu_kernels import as_numpy, enabled, parallel_kernel

# A row block's float32 slice: large enough to amortise each block's partial sums, small enough to give
# the threads many blocks (a [16384,1024] input has 256 of 64 rows).
BLOCK_BYTES = 256 * 1024


def block_rows(rows: int, channels: int) -> int:
    """Rows per block: the partition depends only on the shape, never on the number of threads."""
    return max(1, min(rows, BLOCK_BYTES // (4 * channels)))


@parallel_kernel
def _block_moments(x, rows_per_block):
    """x [R,C] -> per block (row count [K], mean [K,C], sum of squared deviations [K,C]), all float64, in
    one pass: sums of x minus the block's first row and of their squares. Shifted by a value of the data
    and kept in float64, the difference of the two sums keeps far more digits than float32 has, unlike
    plain sums of x and x^2 (whose difference cancels when the mean dwarfs the spread)."""
    rows, c = x.shape
    blocks = (rows + rows_per_block - 1) // rows_per_block
    counts = np.empty(blocks, np.float64)
    means = np.zeros((blocks, c), np.float64)
    squares = np.zeros((blocks, c), np.float64)
    for b in nb.prange(blocks):
        start = b * rows_per_block
        stop = min(rows, start + rows_per_block)
        n = stop - start
        total, total_squares = means[b], squares[b]
        for r in range(start + 1, stop):
            for ch in range(c):
                d = np.float64(x[r, ch]) - x[start, ch]
                total[ch] += d
                total_squares[ch] += d * d
        for ch in range(c):
            total_squares[ch] -= total[ch] * total[ch] / n
            total[ch] = x[start, ch] + total[ch] / n
        counts[b] = n
    return counts, means, squares


@nb.njit(cache=True)
def _combine_moments(counts, means, squares):
    """Per-block moments merged in block order (pairwise update of mean and squared deviations)
    -> (mean [C], sum of squared deviations [C]) over all rows, float64."""
    n = counts[0]
    mean = means[0].copy()
    square = squares[0].copy()
    for b in range(1, counts.shape[0]):
        m = counts[b]
        total = n + m
        for ch in range(mean.shape[0]):
            delta = means[b, ch] - mean[ch]
            mean[ch] += delta * (m / total)
            square[ch] += squares[b, ch] + delta * delta * (n * m / total)
        n = total
    return mean, square


@parallel_kernel
def _normalise_leaky(x, mean, rstd, gamma, beta, slope):
    """max(slope * z, z) with z = gamma * (x - mean) * rstd + beta, all float32, one pass over x [R,C]."""
    rows, c = x.shape
    out = np.empty_like(x)
    for r in nb.prange(rows):
        for ch in range(c):
            z = gamma[ch] * ((x[r, ch] - mean[ch]) * rstd[ch]) + beta[ch]
            out[r, ch] = max(slope * z, z)
    return out


@nb.njit(inline="always")
def _through_slope(g, z, slope):
    """The cotangent g through max(slope * z, z): slope where slope * z wins, else 1 (ties go to z)."""
    return slope * g if slope * z > z else g


@parallel_kernel
def _normalise_leaky_pool(x, mean, rstd, gamma, beta, slope, samples):
    """x [B*N,C] (sample-major rows) -> per sample and channel over its N rows of the activation
    (max [B,C], how many rows reach it [B,C] float32, sum [B,C] float64), the activation never stored."""
    rows, c = x.shape
    n = rows // samples
    best = np.empty((samples, c), np.float32)
    ties = np.zeros((samples, c), np.float32)
    totals = np.zeros((samples, c), np.float64)
    for b in nb.prange(samples):
        start = b * n
        for ch in range(c):
            best[b, ch] = -np.inf
        for r in range(start, start + n):
            for ch in range(c):
                z = gamma[ch] * ((x[r, ch] - mean[ch]) * rstd[ch]) + beta[ch]
                y = max(slope * z, z)
                totals[b, ch] += y
                if y > best[b, ch]:
                    best[b, ch] = y
                    ties[b, ch] = 1
                elif y == best[b, ch]:
                    ties[b, ch] += 1
    return best, ties, totals


@parallel_kernel
def _backward_pass(
    x, mean, rstd, gamma, beta, slope, cotangent, pooled, rows_per_block, dy_mean, dy_xhat_mean
):
    """One pass of the backward over x [R,C] in row blocks, for both forms (one kernel: Numba compiles it
    once). cotangent is [1,R,C], the activation's, or if pooled [3,B,C] (x's rows sample-major): each
    sample's max activation, the max's cotangent divided by how many rows reach it, the mean's divided by
    N. dy is the cotangent reaching the activation, through the slope. With dy_mean and dy_xhat_mean
    empty: per-block sums [K,C] of dy and dy * x_hat; else dx = gamma * rstd * (dy - dy_mean - x_hat *
    dy_xhat_mean)."""
    rows, c = x.shape
    blocks = (rows + rows_per_block - 1) // rows_per_block
    per_sample = rows // cotangent.shape[1]
    write_dx = dy_mean.shape[0] > 0
    dy_sums = np.zeros((blocks, c), np.float64)
    dy_xhat_sums = np.zeros((blocks, c), np.float64)
    dx = np.empty((rows if write_dx else 0, c), np.float32)
    for k in nb.prange(blocks):
        start = k * rows_per_block
        stop = min(rows, start + rows_per_block)
        reaching = np.empty(c, np.float32)
        dy_sum, dy_xhat_sum = dy_sums[k], dy_xhat_sums[k]
        for r in range(start, stop):
            if pooled:  # the max's share goes to the rows that reach it (recomputed as in the forward)
                b = r // per_sample
                for ch in range(c):
                    z = gamma[ch] * ((x[r, ch] - mean[ch]) * rstd[ch]) + beta[ch]
                    share = cotangent[2, b, ch]
                    reaching[ch] = (
                        share + cotangent[1, b, ch] if max(slope * z, z) == cotangent[0, b, ch] else share
                    )
            else:
                for ch in range(c):
                    reaching[ch] = cotangent[0, r, ch]
            if write_dx:
                for ch in range(c):
                    xhat = (x[r, ch] - mean[ch]) * rstd[ch]
                    dy = _through_slope(reaching[ch], gamma[ch] * xhat + beta[ch], slope)
                    dx[r, ch] = gamma[ch] * rstd[ch] * (dy - dy_mean[ch] - xhat * dy_xhat_mean[ch])
            else:
                for ch in range(c):
                    xhat = (x[r, ch] - mean[ch]) * rstd[ch]
                    dy = _through_slope(reaching[ch], gamma[ch] * xhat + beta[ch], slope)
                    dy_sum[ch] += dy
                    dy_xhat_sum[ch] += dy * xhat
    return dy_sums, dy_xhat_sums, dx


def _moments(x: np.ndarray, eps: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [R,C] -> float32 (mean, 1/sqrt(variance + eps), ddof-1 variance for `running_var`), per channel."""
    rows, c = x.shape
    mean, squares = _combine_moments(*_block_moments(x, block_rows(rows, c)))
    # a diverged step's inf moments stay inf or NaN here, quietly: the trainer's non-finite guard reports it
    with np.errstate(over="ignore", invalid="ignore"):
        rstd = (1.0 / np.sqrt((squares / rows).astype(np.float32) + eps)).astype(np.float32)
        return mean.astype(np.float32), rstd, (squares / (rows - 1)).astype(np.float32)


def _backward(x, mean, rstd, gamma, beta, slope, cotangent, pooled) -> tuple[mx.array, mx.array, mx.array]:
    """(dx [R,C], dgamma, dbeta): per-channel sums of dy and dy * x_hat in one pass, dx in a second."""
    rows, c = x.shape
    args = (x, mean, rstd, gamma, beta, slope, cotangent, pooled, block_rows(rows, c))
    none = np.empty(0, np.float32)
    dy_sums, dy_xhat_sums, _ = _backward_pass(*args, none, none)
    # numpy adds the blocks one after another, in block order
    dy_sum, dy_xhat_sum = dy_sums.sum(axis=0), dy_xhat_sums.sum(axis=0)
    _, _, dx = _backward_pass(
        *args, (dy_sum / rows).astype(np.float32), (dy_xhat_sum / rows).astype(np.float32)
    )
    return mx.array(dx), mx.array(dy_xhat_sum.astype(np.float32)), mx.array(dy_sum.astype(np.float32))


@lru_cache
def _fused(eps: float, slope: float):
    """The custom function for one (eps, slope): x [R,C], gamma [C], beta [C] ->
    (output [R,C], mean [C], 1/std [C], ddof-1 variance [C]); only the output is differentiated."""
    eps32, slope32 = np.float32(eps), np.float32(slope)

    @mx.custom_function
    def batch_norm_leaky_rows(x, gamma, beta):
        mx.eval(x, gamma, beta)
        x_np = as_numpy(x)
        mean, rstd, unbiased = _moments(x_np, eps32)
        out = _normalise_leaky(x_np, mean, rstd, as_numpy(gamma), as_numpy(beta), slope32)
        return mx.array(out), mx.array(mean), mx.array(rstd), mx.array(unbiased)

    @batch_norm_leaky_rows.vjp
    def batch_norm_leaky_rows_vjp(primals, cotangents, outputs):
        mx.eval(*primals, cotangents[0], *outputs[1:3])
        x, gamma, beta = (as_numpy(a) for a in primals)
        mean, rstd = as_numpy(outputs[1]), as_numpy(outputs[2])
        cotangent = as_numpy(cotangents[0])[None]
        return _backward(x, mean, rstd, gamma, beta, slope32, cotangent, False)

    return batch_norm_leaky_rows


@lru_cache
def _fused_pool(eps: float, slope: float):
    """The custom function for one (eps, slope): x [B,N,C], gamma [C], beta [C] -> (pooled [B,2C] = max
    and mean over N, mean [C], 1/std [C], ddof-1 variance [C], rows at the max [B,C]); only pooled is
    differentiated."""
    eps32, slope32 = np.float32(eps), np.float32(slope)

    @mx.custom_function
    def batch_norm_leaky_pool_rows(x, gamma, beta):
        mx.eval(x, gamma, beta)
        b, n, c = x.shape
        x_np = as_numpy(x).reshape(b * n, c)
        mean, rstd, unbiased = _moments(x_np, eps32)
        best, ties, totals = _normalise_leaky_pool(
            x_np, mean, rstd, as_numpy(gamma), as_numpy(beta), slope32, b
        )
        pooled = np.concatenate([best, (totals / n).astype(np.float32)], axis=1)
        return mx.array(pooled), mx.array(mean), mx.array(rstd), mx.array(unbiased), mx.array(ties)

    @batch_norm_leaky_pool_rows.vjp
    def batch_norm_leaky_pool_rows_vjp(primals, cotangents, outputs):
        mx.eval(*primals, cotangents[0], *outputs)
        b, n, c = primals[0].shape
        x = as_numpy(primals[0]).reshape(b * n, c)
        gamma, beta = as_numpy(primals[1]), as_numpy(primals[2])
        pooled, mean, rstd, _, ties = (as_numpy(a) for a in outputs)
        g = as_numpy(cotangents[0])
        # the max's cotangent splits evenly over tied rows, as MLX's max splits it
        cotangent = np.stack([pooled[:, :c], g[:, :c] / ties, g[:, c:] / np.float32(n)]).astype(np.float32)
        dx, dgamma, dbeta = _backward(x, mean, rstd, gamma, beta, slope32, cotangent, True)
        return dx.reshape(b, n, c), dgamma, dbeta

    return batch_norm_leaky_pool_rows


def runs_kernels(norm: nn.BatchNorm, x: mx.array) -> bool:
    """Whether `batch_norm_leaky` and `batch_norm_leaky_pool` take the kernel path for this norm and x."""
    return (
        norm.training
        and "weight" in norm
        and "bias" in norm
        and norm.track_running_stats
        and x.dtype == mx.float32
        and norm.weight.dtype == mx.float32
        and norm.bias.dtype == mx.float32
        and 2 <= x.ndim <= 4
        and x.shape[-1] > 0
        and x.size // x.shape[-1] > 1
        and enabled()
    )


def batch_norm_leaky(norm: nn.BatchNorm, x: mx.array, negative_slope: float = 0.2) -> mx.array:
    """`nn.leaky_relu(norm(x), negative_slope)` for x [..., C]: the same output, running statistics and
    gradients; in CPU training mode two passes over x forward (moments, then the activation) and two
    backward."""
    if not runs_kernels(norm, x):
        return nn.leaky_relu(norm(x), negative_slope)
    c = x.shape[-1]
    out, mean, _, unbiased = _fused(float(norm.eps), float(negative_slope))(
        x.reshape(-1, c), norm.weight, norm.bias
    )
    _update_running_stats(norm, mean, unbiased)
    return out.reshape(x.shape)


def _update_running_stats(norm: nn.BatchNorm, mean: mx.array, unbiased: mx.array) -> None:
    """As `nn.BatchNorm` updates them in training: momentum towards the batch mean and ddof-1 variance."""
    mu = norm.momentum
    norm.running_mean = (1 - mu) * norm.running_mean + mu * mean
    norm.running_var = (1 - mu) * norm.running_var + mu * unbiased


def batch_norm_leaky_pool(norm: nn.BatchNorm, x: mx.array, negative_slope: float = 0.2) -> mx.array:
    """x [B,N,C] -> [B,2C]: the max and the mean over N of `batch_norm_leaky(norm, x)`, as the fusion block
    pools it. In CPU training mode the [B,N,C] activation is never stored: the forward pools it as it goes,
    and the backward recomputes which rows reached each max instead of MLX's mask passes over [B,N,C]."""
    if not (x.ndim == 3 and runs_kernels(norm, x)):
        y = nn.leaky_relu(norm(x), negative_slope)
        return mx.concatenate([mx.max(y, axis=1), mx.mean(y, axis=1)], axis=-1)
    pooled, mean, _, unbiased, _ = _fused_pool(float(norm.eps), float(negative_slope))(
        x, norm.weight, norm.bias
    )
    _update_running_stats(norm, mean, unbiased)
    return pooled
