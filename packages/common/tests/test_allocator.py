"""glibc malloc tuning (`common.allocator`): a process's repeated large temporaries come from its heap
instead of fresh mappings the kernel must fault in. Each check runs in its own interpreter (the settings
are process-wide) and allocates through libc itself, as torch's and MLX's CPU allocators do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux's")

FAULTS_OF_REPEATED_TEMPORARIES = """
import ctypes, resource, sys
from common.allocator import tune_malloc
print(tune_malloc() if sys.argv[1] == "tune" else "untuned")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 << 20  # above glibc's largest mmap threshold (32 MiB)
def temporary():  # a step's large temporary: allocated, written, freed
    p = libc.malloc(size); libc.memset(p, 1, size); libc.free(p)
temporary()  # the first one grows the heap once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    temporary()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env: str) -> tuple[str, int]:
    """(the allocator's status line, minor page faults of three 64 MiB temporaries after the first)."""
    base = {k: v for k, v in os.environ.items() if k != "TRAINYARD_MALLOC_TUNING"}
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_TEMPORARIES, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**base, **env},
    )
    status, count = proc.stdout.strip().splitlines()
    return status, int(count)


@linux_only
def test_tuned_malloc_recycles_large_buffers_where_the_default_faults_them_in_again():
    status, tuned = faults("tune")
    assert status == "glibc malloc: one arena, no mmap, no trim (heap buffers reused)"
    assert tuned < 10
    _, untuned = faults("none")
    # a fresh mapping per temporary: 3 x 16384 faults of 4 KiB pages, at least 3 x 32 of 2 MiB huge pages
    assert untuned >= 3 * 32


@linux_only
def test_the_opt_out_variable_keeps_glibcs_defaults():
    status, count = faults("tune", TRAINYARD_MALLOC_TUNING="0")
    assert status == "glibc malloc defaults (opted out with TRAINYARD_MALLOC_TUNING=0)"
    assert count >= 3 * 32
