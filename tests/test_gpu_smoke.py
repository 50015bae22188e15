"""`tools/gpu_smoke.sh` without a GPU: valid bash, says there is no GPU and exits 0; its peak table and share
arithmetic (the GPU runs themselves need a CUDA machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gpu_smoke import Measurement, datasheet_peak_tflops

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_smoke.sh"


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("driver", [False, True], ids=["no driver", "driver but no GPU for torch"])
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path, driver):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, even on one
    if driver:  # an nvidia-smi that lists a GPU: the script asks torch, which sees none
        fake = tmp_path / "bin" / "nvidia-smi"
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        fake.chmod(0o755)
        env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("gpu_smoke: no CUDA GPU here (") and line.endswith("); nothing to measure.")


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("Tesla T4", None),  # not in the table: the script times a bf16 matmul instead
    ],
)
def test_the_datasheet_peak_by_device_name(name, tflops):
    assert datasheet_peak_tflops(name) == tflops


def test_share_of_peak_counts_every_gpu():
    # 2 GPUs at 100 TFLOP/s each; 1000 samples/s of 50 GFLOP each = 50 TFLOP/s in all: a quarter of the peak
    m = Measurement(
        "pkg", "torchrun x2", samples_per_s=1000.0, gflop_per_sample=50.0, unit="samples/s", gpus=2
    )
    assert m.share_of_peak(100.0) == pytest.approx(0.25)
