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
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_importing_dtgcnn_never_imports_torch():
    run_python("import dtgcnn.train, dtgcnn.trainer, dtgcnn.evaluate, dtgcnn.visualize, dtgcnn.profile, "
               "dtgcnn.bench, dtgcnn.synthetic, sys; assert 'torch' not in sys.modules, 'torch was imported'")


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
    proc = run_python("import dtgcnn\nfrom dtgcnn.blas import sgemm_provider\n"
                      "assert dtgcnn.BLAS.fast, dtgcnn.BLAS\nprint(sgemm_provider())\n" + MATMUL_CHECK)
    assert "libmkl_rt" in proc.stdout


@linux_only
def test_opt_out_keeps_the_reference_blas():
    proc = run_python("import dtgcnn\nfrom dtgcnn.blas import sgemm_provider\n"
                      "assert not dtgcnn.BLAS.fast and sgemm_provider() is None\nprint(dtgcnn.BLAS.describe())\n"
                      + MATMUL_CHECK, DTGCNN_FAST_BLAS="0")
    assert "opted out" in proc.stdout


@linux_only
def test_missing_library_degrades_to_a_warning():
    proc = run_python("import warnings\nwarnings.simplefilter('always')\nimport dtgcnn\n"
                      "assert not dtgcnn.BLAS.fast\n" + MATMUL_CHECK, DTGCNN_BLAS_LIBRARY="/nonexistent/libblas.so")
    assert "RuntimeWarning" in proc.stderr and "could not load /nonexistent/libblas.so" in proc.stderr


@linux_only
def test_mlx_imported_first_is_reported():
    proc = run_python("import warnings\nwarnings.simplefilter('always')\nimport mlx.core\nimport dtgcnn\n"
                      "assert not dtgcnn.BLAS.fast\n" + MATMUL_CHECK)
    assert "import dtgcnn first" in proc.stderr


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
    first, second = ("import torch", "import dtgcnn") if order == "torch_first" else ("import dtgcnn", "import torch")
    run_python(f"{first}\n{second}\n" + MATMUL_CHECK + TORCH_CHECK)
