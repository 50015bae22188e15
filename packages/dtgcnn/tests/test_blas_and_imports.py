"""The fast-BLAS preload and the torch-free import, each checked in a fresh interpreter (the preload must
happen before mlx loads, and the workspace test process may already hold mlx or torch)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from dtgcnn.blas import _mkl_rt_path

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload is Linux-only")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DTGCNN_")} | env
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_importing_dtgcnn_never_imports_torch():
    run_python(
        "import dtgcnn.train, dtgcnn.trainer, dtgcnn.evaluate, dtgcnn.visualize, dtgcnn.profile, "
        "dtgcnn.bench, dtgcnn.peers.side_by_side, dtgcnn.synthetic, sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )


MATMUL_CHECK = """
import numpy as np, mlx.core as mx
a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((200, 100)).astype(np.float32)
err = np.abs(np.array(mx.array(a) @ mx.array(b), copy=False) - a.astype(np.float64) @ b).max()
assert err < 1e-3, err
"""


@linux_only
@pytest.mark.skipif(_mkl_rt_path() is None, reason="the mkl wheel is not installed")
def test_fast_blas_serves_mlx_matmul():
    proc = run_python(
        "import dtgcnn\nfrom dtgcnn.blas import sgemm_provider\n"
        "assert dtgcnn.BLAS.fast, dtgcnn.BLAS\nprint(sgemm_provider())\n" + MATMUL_CHECK
    )
    assert "libmkl_rt" in proc.stdout


@linux_only
def test_opt_out_keeps_the_reference_blas():
    proc = run_python(
        "import dtgcnn\nfrom dtgcnn.blas import sgemm_provider\n"
        "assert not dtgcnn.BLAS.fast and sgemm_provider() is None\nprint(dtgcnn.BLAS.describe())\n"
        + MATMUL_CHECK,
        DTGCNN_FAST_BLAS="0",
    )
    assert "opted out" in proc.stdout


@linux_only
def test_missing_library_degrades_to_a_warning():
    proc = run_python(
        "import warnings\nwarnings.simplefilter('always')\nimport dtgcnn\n"
        "assert not dtgcnn.BLAS.fast\n" + MATMUL_CHECK,
        DTGCNN_BLAS_LIBRARY="/nonexistent/libblas.so",
    )
    assert "RuntimeWarning" in proc.stderr and "could not load /nonexistent/libblas.so" in proc.stderr


@linux_only
def test_mlx_imported_first_is_reported():
    proc = run_python(
        "import warnings\nwarnings.simplefilter('always')\nimport mlx.core\nimport dtgcnn\n"
        "assert not dtgcnn.BLAS.fast\n" + MATMUL_CHECK
    )
    assert "import dtgcnn first" in proc.stderr


PAGE_FAULTS_OF_REPEATED_ADDS = """
import resource, dtgcnn, mlx.core as mx
mx.set_default_device(mx.cpu)
x = mx.zeros((16, 1024, 1024)); mx.eval(x)
mx.eval(x + 1)  # the first 64 MiB result grows the heap once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    mx.eval(x + 1)  # each result is a new 64 MiB buffer, freed right after
print(dtgcnn.MALLOC)
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@linux_only
def test_malloc_tuning_recycles_large_mlx_buffers():
    """Tuned glibc serves MLX's repeated 64 MiB temporaries from the heap: no fresh pages to fault in (an
    untuned process maps, faults 16384 pages and unmaps every one of them)."""
    out = run_python(PAGE_FAULTS_OF_REPEATED_ADDS).stdout
    assert "one arena, no mmap" in out
    assert int(out.split("faults")[-1]) < 1000, out


@linux_only
def test_malloc_tuning_opt_out():
    out = run_python(PAGE_FAULTS_OF_REPEATED_ADDS, DTGCNN_MALLOC_TUNING="0").stdout
    assert "glibc malloc defaults (opted out with DTGCNN_MALLOC_TUNING=0)" in out


TORCH_CHECK = """
import numpy as np, torch
torch.set_num_threads(1)
a = torch.randn(64, 64, dtype=torch.float64); spd = a @ a.T + 64 * torch.eye(64, dtype=torch.float64)
assert torch.allclose(torch.linalg.cholesky(spd) @ torch.linalg.cholesky(spd).T, spd)
x = torch.randn(2, 3, 16, 16, requires_grad=True)
torch.nn.functional.conv2d(x, torch.randn(4, 3, 3, 3)).sum().backward()
assert torch.isfinite(x.grad).all()
"""


@pytest.mark.slow
@linux_only
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("order", ["torch_first", "dtgcnn_first"])
def test_safe_beside_torch(order):
    first, second = (
        ("import torch", "import dtgcnn") if order == "torch_first" else ("import dtgcnn", "import torch")
    )
    run_python(f"{first}\n{second}\n" + MATMUL_CHECK + TORCH_CHECK)
