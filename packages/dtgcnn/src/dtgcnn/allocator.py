"""Keep MLX's CPU buffers in the process heap instead of fresh page-faulted mappings (glibc, Linux).

Why this exists: MLX's CPU allocator has no buffer cache; every array is a `malloc` and a `free`. glibc
serves large requests (>= 32 MiB always, smaller ones once its dynamic threshold is passed) with a fresh
`mmap` and unmaps them on `free`, so every new [16,1024,1024] score matrix or [B,N,k,C] gather touches
pages the kernel must fault in and zero: measured 16385 minor faults and ~70 ms for one 64 MiB
elementwise add, against 7 ms when the buffer comes from reused heap memory. That cost is paid by every
large temporary of every step, whichever BLAS runs the matmuls.

`tune_malloc()` asks glibc (through `mallopt`) to serve every size from one heap arena (M_ARENA_MAX=1:
MLX's worker threads would otherwise get their own arenas, which fall back to mmap for large blocks),
never to use mmap (M_MMAP_MAX=0) and never to give freed memory back (M_TRIM_THRESHOLD). After the first
step the step's buffers are recycled with no page faults. The price: the process keeps its peak heap
mapped until it exits (a training process reuses it every step anyway).

It must run before `mlx.core` starts its threads, so `import dtgcnn` calls it (next to the BLAS preload).
Opt out with DTGCNN_MALLOC_TUNING=0. Non-glibc platforms are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "DTGCNN_MALLOC_TUNING"

# glibc <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

STATUS = "not configured"


def tune_malloc() -> str:
    """Apply the glibc settings above; returns (and stores in STATUS) a one-line description. Never raises."""
    global STATUS
    if not sys.platform.startswith("linux"):
        STATUS = "system allocator (not Linux/glibc)"
        return STATUS
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        STATUS = f"glibc malloc defaults (opted out with {OPT_OUT_ENV}=0)"
        return STATUS
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        STATUS = "system allocator (no glibc mallopt)"
        return STATUS
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20)]
    ok = all(mallopt(param, value) == 1 for param, value in settings)  # mallopt returns 1 on success
    STATUS = (
        "glibc malloc: one arena, no mmap, no trim (heap buffers reused)"
        if ok
        else "glibc malloc: some mallopt settings were refused (defaults kept for those)"
    )
    return STATUS
