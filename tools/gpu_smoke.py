"""The measurements behind `tools/gpu_smoke.sh`: each torch package's benchmark on CUDA in bf16-mixed, once as
one process per GPU under torchrun and once compiled with torch.compile in one process, as samples/s and as
a share of the GPU's bf16 peak.

The packages' own benchmarks do the timing: `<pkg>.bench --nproc N` starts the torchrun side, one process
per GPU, beside a single-process run of the same steps; the compiled run is one process of that same
measurement (the benches' `--launched-part`, which writes rank 0's figures). This tool picks models that
finish in seconds, reads their JSON and prints one table. The peak is the datasheet's dense bf16 figure for the GPUs
in `BF16_PEAK_TFLOPS`, else the best of a large bf16 matmul timed here (printed beside it either way).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Dense bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets (without sparsity); the first name that
# occurs in torch.cuda.get_device_name() wins, so the more specific names come first.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def datasheet_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name, or None when the table does not know it."""
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return tflops
    return None


@dataclass
class Measurement:
    package: str
    how: str  # "torchrun xN" or "compiled x1"
    samples_per_s: float  # global: every process's samples
    gflop_per_sample: float
    unit: str
    gpus: int

    def share_of_peak(self, peak_tflops: float) -> float:
        return self.samples_per_s * self.gflop_per_sample / (peak_tflops * 1e3 * self.gpus)


def bench_json(module: str, args: list[str], json_flag: str, timeout: float) -> dict:
    """Run `python -m module args...`, which writes its figures to a JSON file; return them."""
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        out = Path(tmp, "figures.json")
        done = subprocess.run(
            [sys.executable, "-m", module, *args, json_flag, str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


# What each package's benchmark is asked for: small enough that the runs, compiles included, fit the budget.
SPECTRAL = ["--models", "mae_base", "--decoders", "joint", "--img-size", "100", "--batch-size", "32"]
SPECTRAL += ["--steps", "10", "--warmup", "3", "--device", "cuda", "--amp"]
CABRUCA = ["--config", "training_config", "--tile-sizes", "256", "--batch-size", "8", "--steps", "10"]
CABRUCA += ["--warmup", "3", "--device", "cuda", "--precision", "bf16-mixed"]
EGNN = [
    "--models",
    "egnn",
    "--sizes",
    "medium",
    "--graphs",
    "512",
    "--batch-size",
    "32",
    "--hidden_dim",
    "128",
]
EGNN += ["--epochs", "2", "--num_workers", "0", "--device", "cuda", "--precision", "bf16-mixed"]


def spectral_torchrun(gpus: int, timeout: float) -> Measurement:
    scaling = bench_json("spectral_mae.bench", [*SPECTRAL, "--nproc", str(gpus)], "--json", timeout)[
        "scaling"
    ]
    (row,), (one,) = scaling["rows"], scaling["one_process"]["results"]
    return Measurement(
        "spectral_mae",
        f"torchrun x{gpus}",
        row[f"samples_per_s_{gpus}"],
        one["gflop_per_sample"],
        "samples/s",
        gpus,
    )


def spectral_compiled(gpus: int, timeout: float) -> Measurement:
    (result,) = bench_json(
        "spectral_mae.bench", [*SPECTRAL, "--compile", "--no-yardstick"], "--json", timeout
    )["results"]
    return Measurement(
        "spectral_mae", "compiled x1", result["samples_per_s"], result["gflop_per_sample"], "samples/s", 1
    )


def cabruca_torchrun(gpus: int, timeout: float) -> Measurement:
    (row,) = bench_json("cabruca.bench", [*CABRUCA, "--nproc", str(gpus)], "--json-out", timeout)["scaling"][
        "rows"
    ]
    return Measurement(
        "cabruca",
        f"torchrun x{gpus}",
        row[f"samples_per_s_{gpus}"],
        row["train_gflop_per_tile"],
        "tiles/s",
        gpus,
    )


def cabruca_compiled(gpus: int, timeout: float) -> Measurement:
    (row,) = bench_json("cabruca.bench", [*CABRUCA, "--launched-part", "--compile"], "--json-out", timeout)[
        "rows"
    ]
    return Measurement(
        "cabruca", "compiled x1", row["tiles_per_s"], row["train_gflop_per_tile"], "tiles/s", 1
    )


def egnn_torchrun(gpus: int, timeout: float) -> Measurement:
    scaling = bench_json("egnn_com.bench", [*EGNN, "--nproc", str(gpus)], "--json", timeout)["scaling"]
    (row,), (one,) = scaling["rows"], scaling["one_process"]["rows"]
    return Measurement(
        "egnn_com",
        f"torchrun x{gpus}",
        row[f"samples_per_s_{gpus}"],
        one["gflop_per_graph"],
        "graphs/s",
        gpus,
    )


def egnn_compiled(gpus: int, timeout: float) -> Measurement:
    (row,) = bench_json("egnn_com.bench", [*EGNN, "--launched-part", "--compile"], "--json", timeout)["rows"]
    return Measurement("egnn_com", "compiled x1", row["graphs_per_s"], row["gflop_per_graph"], "graphs/s", 1)


# The torchrun runs first: the compiled ones are the slow ones (the compile itself), and the budget may end
# before the last of them.
RUNS = (
    spectral_torchrun,
    cabruca_torchrun,
    egnn_torchrun,
    spectral_compiled,
    cabruca_compiled,
    egnn_compiled,
)
BUDGET_S = 280.0  # the shell script's hard bound is 300 s


def main() -> int:
    import torch

    from common.benchmarking import torch_matmul_peak_gflops

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    started = time.perf_counter()
    gpus, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    measured = torch_matmul_peak_gflops("cuda", n=8192, repeats=10, dtype=torch.bfloat16) / 1e3
    datasheet = datasheet_peak_tflops(name)
    peak = datasheet or measured
    source = f"datasheet {datasheet:.0f}" if datasheet else "not in the table: the measured matmul"
    print(
        f"{gpus} x {name}; bf16 peak {peak:.0f} TFLOP/s ({source}); 8192^2 bf16 matmul here {measured:.0f} TFLOP/s"
    )
    print(
        f"{'package':<14}{'run (bf16-mixed)':<18}{'per s':>12}  {'unit':<10}{'GFLOP/sample':>13}{'% of peak':>11}"
    )
    failures = []
    for run in RUNS:
        left = BUDGET_S - (time.perf_counter() - started)
        if left < 20:
            failures.append(f"{run.__name__}: skipped, the {BUDGET_S:.0f} s budget is spent")
            continue
        try:
            m = run(gpus, timeout=min(150.0, left))
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
            failures.append(f"{run.__name__}: {exc}")
            continue
        share = 100 * m.share_of_peak(peak)
        print(
            f"{m.package:<14}{m.how:<18}{m.samples_per_s:>12.1f}  {m.unit:<10}{m.gflop_per_sample:>13.3f}{share:>10.1f}%",
            flush=True,
        )
    print(f"gpu_smoke: {time.perf_counter() - started:.0f} s")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
