"""Device choice, clear errors for missing devices, peak-memory figures, and lazy framework imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.devices import describe_device, mlx_device, peak_memory_mb, torch_device
from common.errors import DeviceError

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


def test_importing_common_modules_imports_no_framework():
    code = (
        "import sys, common, common.devices, common.checkpoint\n"
        "loaded = [m for m in ('torch', 'mlx', 'mlx.core') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_follows_the_machine():
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert torch_device("auto").type == expected
    assert torch_device().type == expected
    assert torch_device("CPU") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    # Simulated machines: creating a torch.device does not touch the driver, so this runs anywhere.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert torch_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert torch_device("auto") == torch.device("cuda", 0)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "gpu"])
def test_missing_cuda_is_a_clear_error(name):
    with pytest.raises(DeviceError, match=r"CUDA is not available.*Available devices: cpu"):
        torch_device(name)


def test_a_cuda_index_past_the_last_device_is_refused():
    count = torch.cuda.device_count() if HAS_CUDA else 0
    with pytest.raises(DeviceError, match=f"cuda:{count}"):
        torch_device(f"cuda:{count}")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_devices_that_exist_are_returned():
    assert torch_device("cuda") == torch.device("cuda", 0)
    assert torch_device("cuda:0") == torch.device("cuda", 0)
    assert "cuda:0 (" in describe_device(torch.device("cuda", 0))


@pytest.mark.skipif(HAS_MPS, reason="this machine has MPS")
def test_missing_mps_is_a_clear_error():
    with pytest.raises(DeviceError, match="MPS is not available"):
        torch_device("mps")


@pytest.mark.parametrize("name", ["tpu", "xla", "cuda:x", ""])
def test_unknown_names_list_the_valid_ones(name):
    with pytest.raises(DeviceError, match="cpu"):
        torch_device(name)


def test_describe_torch_cpu():
    line = describe_device(torch.device("cpu"))
    assert line.startswith("cpu (") and torch.__version__ in line


def test_rss_peak_is_bounded_by_current_rss_and_machine_memory():
    # psutil is the oracle; the two bounds pin the unit (ru_maxrss is KiB on Linux, bytes on macOS). A "grows
    # after allocating" check cannot be made reliable: Linux carries ru_maxrss over fork+exec from pytest.
    psutil = pytest.importorskip("psutil")
    current_mb = psutil.Process().memory_info().rss / 2**20
    figures = peak_memory_mb()
    assert current_mb * 0.99 <= figures["rss_peak_mb"] <= psutil.virtual_memory().total / 2**20
    assert ("cuda_peak_mb" in figures) == (HAS_CUDA and torch.cuda.is_initialized())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_peak_counts_an_allocation():
    device = torch.device("cuda", 0)
    torch.cuda.reset_peak_memory_stats(device)
    block = torch.ones(64 * 2**20 // 4, device=device)  # 64 MiB
    assert peak_memory_mb(device)["cuda_peak_mb"] >= 64
    del block


def test_mlx_devices_and_peak_memory():
    mx = pytest.importorskip("mlx.core")
    has_gpu = bool(mx.metal.is_available() or mx.cuda.is_available())
    assert mlx_device("auto") == mx.Device(mx.gpu if has_gpu else mx.cpu, 0)
    assert mlx_device("cpu") == mx.Device(mx.cpu, 0)
    if not has_gpu:
        with pytest.raises(DeviceError, match="no GPU backend"):
            mlx_device("gpu")
    with pytest.raises(DeviceError, match="auto, cpu, gpu"):
        mlx_device("tpu")
    mx.reset_peak_memory()
    block = mx.ones((1024, 1024), dtype=mx.float32)  # 4 MiB
    mx.eval(block)
    assert peak_memory_mb()["mlx_peak_mb"] >= 4.0
    assert describe_device(mx.Device(mx.cpu, 0)).startswith("mlx cpu (")
