"""Run per-sample MLX work on several CPU streams at once, one slice of the batch each.

Why: MLX runs each CPU op on one thread. The k-NN selection, neighbour gathers, running max and their
scatter-add backward (the BLAS-independent half of a DT-GCNN step) are such ops, so one core idled while
the other did them. Every MLX stream has its own worker thread; giving each batch slice its own stream
lets those ops run concurrently (measured on 2 cores: 1.9x on that work). The results are the same
arrays as one call on the whole batch (each sample's computation is unchanged; tested), and the backward
ops of a primitive run on its stream, so the gradient's scatters are split the same way.

Streams default to the number of usable cores (capped at 4); DTGCNN_CPU_STREAMS=N overrides, 1 turns it off.
Only the CPU device is split (the GPU runs these ops in parallel already).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx

from common.errors import ConfigError

STREAMS_ENV = "DTGCNN_CPU_STREAMS"
_streams: list[mx.Stream] = []


def stream_count() -> int:
    """How many CPU streams batch_parallel uses (>= 1)."""
    raw = os.environ.get(STREAMS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ConfigError(
                f"{STREAMS_ENV} must be a whole number of CPU streams (1 = off), got {raw!r}; "
                "unset it to use one stream per core."
            ) from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


def describe() -> str:
    n = stream_count()
    return f"k-NN selection and neighbour gathers on {n} CPU streams" if n > 1 else "one CPU stream"


def _stream(i: int) -> mx.Stream:
    while len(_streams) <= i:
        _streams.append(mx.new_stream(mx.cpu))
    return _streams[i]


def batch_parallel(fn: Callable[..., mx.array], *arrays: mx.array, **kwargs) -> mx.array:
    """fn(*arrays, **kwargs) [B,...] computed as fn on contiguous batch slices, one CPU stream each.

    fn must treat samples independently (no reduction over the batch axis 0 of its inputs)."""
    batch = arrays[0].shape[0]
    parts = min(stream_count(), batch)
    if parts < 2 or mx.default_device() != mx.cpu:
        return fn(*arrays, **kwargs)
    bounds = [batch * i // parts for i in range(parts + 1)]
    outs = []
    for i in range(parts):
        lo, hi = bounds[i], bounds[i + 1]
        with mx.stream(_stream(i)):
            outs.append(fn(*(a[lo:hi] for a in arrays), **kwargs))
    return mx.concatenate(outs, axis=0)
