"""Keep a training process's large CPU buffers in its heap instead of fresh page-faulted mappings (glibc).

Why: glibc serves large requests (>= 32 MiB always, smaller ones once its dynamic threshold is passed)
with a fresh `mmap` and unmaps them on `free`. A training step allocates the same large temporaries every
step (MLX's CPU allocator keeps no buffer cache at all; torch's CPU allocator hands them to `malloc` too),
so every step the kernel faults in and zeroes those pages again: measured 16385 minor faults and ~70 ms
for one 64 MiB elementwise add in MLX, against 7 ms from reused heap memory; and about 460,000 faults per
spectral_mae mae_base training step (1.8 GB of fresh pages, ~1 s of system time and a slower user side),
against none once tuned.

`tune_malloc()` asks glibc (through `mallopt`) to serve every size from one heap arena (M_ARENA_MAX=1:
worker threads would otherwise get their own arenas, which fall back to mmap for large blocks), never to
use mmap (M_MMAP_MAX=0) and never to give freed memory back (M_TRIM_THRESHOLD). After the first step the
step's buffers are recycled with no page faults. The price: the process keeps its peak heap mapped until
it exits (a training process reuses it every step anyway). Run it early: for MLX before `mlx.core` starts
its threads; for torch before the first step. An environment variable (`opt_out_env`) set to 0 opts out;
non-glibc platforms are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "TRAINYARD_MALLOC_TUNING"

# glibc <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_SETTINGS = [(M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20)]


def tune_malloc(opt_out_env: str = OPT_OUT_ENV) -> str:
    """Apply the glibc settings above; returns a one-line description of the allocator now in use. Never
    raises. Calling it again is harmless (the same settings)."""
    if not sys.platform.startswith("linux"):
        return "system allocator (not Linux/glibc)"
    if os.environ.get(opt_out_env, "1").strip().lower() in {"0", "false", "no", "off"}:
        return f"glibc malloc defaults (opted out with {opt_out_env}=0)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system allocator (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in _SETTINGS)  # mallopt returns 1 on success
    if not ok:
        return "glibc malloc: some mallopt settings were refused (defaults kept for those)"
    return "glibc malloc: one arena, no mmap, no trim (heap buffers reused)"
