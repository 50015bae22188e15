"""EdgeConv's max over the k neighbours as MLX ops, with the gradient routed to each channel's winning
neighbour.

The GPU's form, and the CPU's with DTGCNN_CPU_KERNELS=0 (the CPU runs `dtgcnn.cpu_neighbours` by default).

    out[b,i,c] = max over j < k of values[b, idx[b,i,j], c]

Forward: one [B,N,C] row gather per neighbour slot j, and a running max over the k gathered arrays that also
keeps the winning slot (strictly greater replaces, so the first of tied neighbours wins, as argmax does).
Under `mx.compile` the running max is fused into a few elementwise kernels over contiguous arrays; on CPU
that costs about half of an `argmax` over the gathered [B,N,k,C] tensor (MLX's CPU arg-reduction walks
each output's k values one by one). The slot is tracked with integer arithmetic, s + better * (j - s),
because MLX's CPU `where` takes a slow element-by-element path.

Backward (a custom VJP): the cotangent [B,N,C] goes to values[b, winner[b,i,c], c], a scatter-add along
the point axis: the VJP of `take_along_axis(values, winner, axis=1)`, which MLX's CPU runs several times
faster than a flat scatter-add of the same elements. The forward's max is already the winners' values,
so no second gather is needed.
"""

from __future__ import annotations

import mlx.core as mx


def running_max(*slots: mx.array) -> tuple[mx.array, mx.array]:
    """(max over the arrays, index of the first array holding it), elementwise: k x [B,N,C] -> 2 x [B,N,C]."""
    # The slot numbers are array inputs, not Python constants: `mx.compile` then emits the same few fused
    # kernels for every step of the chain (each distinct kernel is a C++ build on first use: 4 instead of 10).
    numbers = mx.arange(len(slots), dtype=mx.int32)
    best, winner = slots[0], mx.zeros(slots[0].shape, mx.int32)
    for j in range(1, len(slots)):
        better = (slots[j] > best).astype(mx.int32)  # 1 where slot j beats every earlier slot
        best = mx.maximum(best, slots[j])
        winner = winner + better * (numbers[j] - winner)
    return best, winner


def _forward(values: mx.array, idx: mx.array) -> tuple[mx.array, mx.array]:
    """values [B,N,C], idx [B,N,k] -> (max over neighbours [B,N,C], winning point index [B,N,C] uint32)."""
    b, n, c = values.shape
    rows = values.reshape(b * n, c)
    flat = idx.astype(mx.int32) + (mx.arange(b, dtype=mx.int32) * n)[:, None, None]  # [B,N,k] into rows
    slots = [rows[flat[:, :, j].reshape(-1)].reshape(b, n, c) for j in range(idx.shape[-1])]  # k x [B,N,C]
    best, slot = running_max(*slots)
    return best, mx.take_along_axis(idx, slot.astype(idx.dtype), axis=2)  # [B,N,C] point ids


@mx.custom_function
def _neighbour_max(values, idx):
    return _forward(values, idx)


@_neighbour_max.vjp
def _neighbour_max_vjp(primals, cotangents, outputs):
    values, idx = primals
    winners = outputs[1]
    _, (grad,) = mx.vjp(lambda v: mx.take_along_axis(v, winners, axis=1), [values], [cotangents[0]])
    return grad, mx.zeros_like(idx)


def max_over_neighbours(values: mx.array, idx: mx.array) -> mx.array:
    """max over j of values[b, idx[b,i,j], c]: values [B,N,C], idx [B,N,k] (not differentiated) -> [B,N,C]."""
    return _neighbour_max(values, mx.stop_gradient(idx))[0]
