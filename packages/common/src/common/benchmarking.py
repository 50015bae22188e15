"""Timing helpers shared by every package's `bench` module.

Every benchmark reports achieved GFLOP/s as a share of the machine's matmul peak, timed in the same run,
with medians over repeated steps after warm-up. The peak is the best of several timed square
float32 matmuls: that is what a dense training step can at most approach on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def median_seconds(
    fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5, sync: Callable[[], Any] | None = None
) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones.

    `sync` is called after each call, inside the timed region, for asynchronous devices
    (`torch.cuda.synchronize`, `mx.eval` of the result, ...).
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- side by side: two workloads timed interleaved in one process -----------------------------------------
#
# On a shared machine the load changes from second to second, so two workloads timed one after the other are
# timed under different loads. Alternating them step by step (A, B, A, B, ...) puts each pair under nearly
# the same load: the ratio of a pair survives load that the absolute times do not.

SPREAD_WARNING = 0.10  # interquartile range / median above which a median is reported as unsteady


@dataclass
class Timing:
    """Wall times of repeated steps of one workload, in seconds."""

    times: list[float]

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range over the median: how far the middle half of the steps strays from it.

        The quartiles rather than min and max, because one step stalled by another process says little about
        the median, while a wide middle half says the median itself is not settled."""
        if len(self.times) < 4:
            return (self.max - self.min) / self.median
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q3 - q1) / self.median

    @property
    def unsteady(self) -> bool:
        return self.spread > SPREAD_WARNING

    def per_s(self, items: float) -> float:
        """Throughput at the median step time, for a step that processes `items` samples."""
        return items / self.median

    def summary(self, unit: str = "ms", scale: float = 1e3) -> str:
        """One line, 'min / median / max 1.2 / 1.3 / 1.9 ms over 20 steps (spread 4%)', and a warning when
        the spread is over 10%."""
        text = (
            f"min / median / max {scale * self.min:.3g} / {scale * self.median:.3g} / {scale * self.max:.3g} "
            f"{unit} over {len(self.times)} steps (spread {100 * self.spread:.0f}%)"
        )
        if self.unsteady:
            text += f"  WARNING: spread above {100 * SPREAD_WARNING:.0f}%, the median is not steady"
        return text


@dataclass
class Comparison:
    """Two workloads timed interleaved: `a` is this project's, `b` the peer's."""

    a: Timing
    b: Timing

    @property
    def speedup(self) -> float:
        """How many times faster A's step is than B's: the median over pairs of (B's time / A's time).

        Each pair ran back to back under nearly the same load, so the per-pair ratio is steadier than the
        ratio of the two medians."""
        return statistics.median(tb / ta for ta, tb in zip(self.a.times, self.b.times, strict=True))

    @property
    def pair_ratios(self) -> Timing:
        """The per-pair ratios B / A as a series, for their own min / median / max and spread."""
        return Timing([tb / ta for ta, tb in zip(self.a.times, self.b.times, strict=True)])


def time_interleaved(
    a: Callable[[], Any],
    b: Callable[[], Any],
    *,
    warmup: int = 2,
    min_steps: int = 10,
    max_steps: int = 200,
    min_seconds: float = 10.0,
    sync: Callable[[], Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Comparison:
    """Time `a()` and `b()` alternately (A, B, A, B, ...) after `warmup` untimed calls of each.

    Steps continue in pairs until there are at least `min_steps` pairs and the timed calls have taken
    `min_seconds` together, or `max_steps` pairs were taken: a fast step gets many repeats, a slow one at
    least `min_steps`. `sync` is called after each call inside the timed region (asynchronous devices).
    `clock` is wall time by default; `time.process_time` (this process's CPU time) is steadier on a machine
    other jobs load, but it adds up every thread's time and misses time spent waiting, so it compares
    single-threaded steps only.
    """
    for _ in range(warmup):
        for fn in (a, b):
            fn()
            if sync:
                sync()
    times_a: list[float] = []
    times_b: list[float] = []
    total = 0.0
    while len(times_a) < max_steps and (len(times_a) < min_steps or total < min_seconds):
        for fn, times in ((a, times_a), (b, times_b)):
            start = clock()
            fn()
            if sync:
                sync()
            times.append(clock() - start)
            total += times[-1]
    return Comparison(Timing(times_a), Timing(times_b))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (torch operations: forward, and backward if `fn` calls it), counted by
    torch.utils.flop_counter, which counts matrix products and convolutions, not elementwise work, gathers or
    scatters."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def growth_table(axis: str, rows: Sequence[dict], unit: str = "") -> str:
    """A scaling table: per point of `axis` (rows of {"value", "epoch_s", "peak_mb"}, the axis doubling from
    row to row), time per epoch and peak memory, each also as a multiple of the first row's, beside the
    multiple the axis itself grew by: where cost is linear in the axis the two columns match."""
    first = rows[0]
    lines = [f"{axis:>12}{'x':>6}{'epoch s':>10}{'x':>7}{'peak MB':>10}{'x':>7}"]
    for r in rows:
        lines.append(
            f"{str(r['value']) + unit:>12}{r['value'] / first['value']:>6.0f}"
            f"{r['epoch_s']:>10.3f}{_multiple(r['epoch_s'], first['epoch_s']):>7}"
            f"{r['peak_mb']:>10.0f}{_multiple(r['peak_mb'], first['peak_mb']):>7}"
        )
    return "\n".join(lines)


def _multiple(value: float, first: float) -> str:
    return f"{value / first:.2f}" if first > 0 else "-"


def matmul_gflop(n: int) -> float:
    """FLOPs of one n x n by n x n matmul (a multiply and an add per term), in GFLOP."""
    return 2 * n**3 / 1e9


def numpy_matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of NumPy's BLAS on an n x n matmul: the CPU's practical dense peak."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm the BLAS threads and caches
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return matmul_gflop(n) / best


def torch_sync(device: Any) -> None:
    """Wait for queued CUDA work on `device` so a timer measures it; a no-op elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_matmul_peak_gflops(
    device: Any = "cpu",
    n: int = 2048,
    repeats: int = 5,
    dtype: Any = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Best GFLOP/s of torch's matmul on `device` (float32 unless `dtype` is given), timed by `clock`
    (`time.process_time` to compare with steps timed the same way)."""
    import torch

    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    a @ b
    torch_sync(device)

    def run() -> None:
        a @ b
        torch_sync(device)

    best = min(_timed(run, clock) for _ in range(repeats))
    return matmul_gflop(n) / best


# -- scaling over processes: one measurement, once alone and once under the real launcher ----------------
#
# A bench started with `--nproc N` runs its own measurement twice in fresh processes: alone, and as N processes
# under the launcher training uses (torchrun for the torch packages, mlx.launch for dtgcnn). Both runs get the
# same threads per process, the machine's cores split evenly over the N processes, so the N-process run has N
# times the 1-process run's cores and perfect scaling is N times its throughput.


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or a scheduler may narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_process(nproc: int, cores: int | None = None) -> int:
    """Each of `nproc` processes' fair share of the cores (at least one thread)."""
    return max(1, (cores or usable_cores()) // max(nproc, 1))


def thread_env(threads: int) -> dict[str, str]:
    """Environment that holds a process's OpenMP and MKL pools (torch's and MLX's fast BLAS) to `threads`."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def scaling_efficiency(one_process: float, n_process: float, nproc: int) -> float:
    """(N-process samples/s) / (N x 1-process samples/s): 1.0 is perfect scaling."""
    return n_process / (nproc * one_process)


def torchrun_command(module: str, args: Sequence[str], nproc: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m module args...` in this interpreter (torchrun is
    `torch.distributed.run`); --standalone rendezvous on a free local port, so two benches never collide."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]


def mlx_launch_command(module: str, args: Sequence[str], nproc: int, env: dict[str, str]) -> list[str]:
    """`mlx.launch -n N --env K=V... -- python -m module args...` (ring backend on localhost), starting at a
    free port; `env` is passed with --env, which is how mlx.launch hands variables to processes it starts."""
    beside = Path(sys.executable).with_name(
        "mlx.launch"
    )  # the launcher installed with this interpreter's mlx
    launcher = str(beside) if beside.exists() else shutil.which("mlx.launch") or "mlx.launch"
    env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    return [
        launcher,
        "-n",
        str(nproc),
        "--starting-port",
        str(_free_port_block(nproc)),
        *env_args,
        "--",
        sys.executable,
        "-m",
        module,
        *args,
    ]


def run_measurement(
    command: Sequence[str], json_path: str | Path, env: dict[str, str], timeout: float
) -> dict:
    """Run one measurement command (it writes its figures to `json_path`) and return them.

    The file, not the exit status, decides: mlx.launch exits 0 even when one of its processes died, so a
    missing file is the failure, reported with the end of the command's output."""
    json_path = Path(json_path)
    json_path.unlink(missing_ok=True)
    proc = subprocess.run(
        list(command), env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0 or not json_path.exists():
        raise RuntimeError(
            f"the measurement `{' '.join(command)}` exited {proc.returncode} without writing {json_path}:\n"
            f"{proc.stderr[-3000:]}{proc.stdout[-1000:]}"
        )
    return json.loads(json_path.read_text(encoding="utf-8"))


@dataclass
class ScalingRun:
    """The figures of one measurement made alone (`one`) and as `nproc` processes (`many`, rank 0's file)."""

    nproc: int
    cores: int
    threads: int  # threads per process in both runs
    launcher: str  # how the N processes were started, as a person would type it
    one: dict = field(default_factory=dict)
    many: dict = field(default_factory=dict)

    def header(self) -> str:
        return (
            f"scaling: 1 process vs {self.nproc} processes ({self.launcher}), {self.threads} threads per "
            f"process in both ({self.cores} cores // {self.nproc} processes), the same batch per process"
        )

    def pairs(self, key: Callable[[dict], Any], rows: str = "rows") -> list[tuple[dict, dict]]:
        """The rows under `rows` of both measurements, matched by `key`: (alone, as N processes), in the
        order of the single-process rows."""
        many = {key(r): r for r in self.many[rows]}
        return [(one, many[key(one)]) for one in self.one[rows]]

    def compare(self, label: str, one_per_s: float, many_per_s: float) -> dict:
        """One row: global samples/s alone and with N processes, and the scaling efficiency."""
        return {
            "label": label,
            "samples_per_s_1": one_per_s,
            f"samples_per_s_{self.nproc}": many_per_s,
            "scaling_efficiency": scaling_efficiency(one_per_s, many_per_s, self.nproc),
        }

    def table(self, rows: Sequence[dict], unit: str = "samples/s") -> str:
        n = self.nproc
        title = f"{'':<28}{'1 process':>14}{f'{n} processes':>16}{'efficiency':>12}"
        lines = [self.header(), f"{title}   ({unit}, global)"]
        for r in rows:
            lines.append(
                f"{r['label']:<28}{r['samples_per_s_1']:>14.2f}{r[f'samples_per_s_{n}']:>16.2f}"
                f"{100 * r['scaling_efficiency']:>11.0f}%"
            )
        return "\n".join(lines)

    def as_json(self, rows: Sequence[dict]) -> dict:
        return {
            "nproc": self.nproc,
            "cores": self.cores,
            "threads_per_process": self.threads,
            "launcher": self.launcher,
            "rows": list(rows),
            "one_process": self.one,
            "n_process": self.many,
        }


@contextlib.contextmanager
def torchrun_part(device: Any, json_path: str | os.PathLike | None, key: str = "rows"):
    """One process's part of a torch bench's `--nproc` measurement (or the whole of it, alone).

    Yields `(device, rows)`: the process's device (its own GPU under torchrun) and a list the block fills.
    The process group lives for the block; afterwards rank 0 alone writes {"world_size", "torch_threads",
    key: rows} to `json_path`, the file `measure_scaling` reads."""
    import torch

    from common.distributed import (
        cleanup_distributed,
        get_local_rank,
        get_world_size,
        init_distributed,
        is_main_process,
    )

    if device.type == "cuda" and get_world_size() > 1:  # one GPU per process, as training does
        device = torch.device("cuda", get_local_rank())
    init_distributed(device.type)
    rows: list = []
    try:
        yield device, rows
        if is_main_process() and json_path:
            figures = {"world_size": get_world_size(), "torch_threads": torch.get_num_threads(), key: rows}
            Path(json_path).write_text(json.dumps(figures, indent=2))
    finally:
        cleanup_distributed()


def measure_scaling(
    module: str,
    args: Sequence[str],
    nproc: int,
    *,
    launcher: str,
    json_flag: str,
    threads_flag: str | None = "--threads",
    env_for_threads: Callable[[int], dict[str, str]] = thread_env,
    timeout: float = 3600,
) -> ScalingRun:
    """Run `python -m module args... --threads T <json_flag> FILE` alone, then as `nproc` processes under
    `launcher` ("torchrun" or "mlx.launch"), both with T = cores // nproc threads (the option `threads_flag`,
    if the module has one, and the environment `env_for_threads(T)`), and return both figures.

    The module's measurement must count global samples (every rank's) and write the file from rank 0 only."""
    from tempfile import TemporaryDirectory

    cores = usable_cores()
    threads = threads_per_process(nproc, cores)
    env = env_for_threads(threads)
    args = [*args, threads_flag, str(threads)] if threads_flag else list(args)
    with TemporaryDirectory(prefix="scaling-") as tmp:
        one_file, many_file = Path(tmp, "one.json"), Path(tmp, "many.json")
        one = run_measurement(
            [sys.executable, "-m", module, *args, json_flag, str(one_file)], one_file, env, timeout
        )
        many_args = [*args, json_flag, str(many_file)]
        if launcher == "torchrun":
            command = torchrun_command(module, many_args, nproc)
            shown = f"torchrun --standalone --nproc_per_node {nproc}"
        elif launcher == "mlx.launch":
            command = mlx_launch_command(module, many_args, nproc, env)
            shown = f"mlx.launch -n {nproc}"
        else:
            raise ValueError(f"launcher must be 'torchrun' or 'mlx.launch', not {launcher!r}")
        many = run_measurement(command, many_file, env, timeout)
    return ScalingRun(nproc=nproc, cores=cores, threads=threads, launcher=shown, one=one, many=many)


def _free_port_block(count: int) -> int:
    """A port p such that p .. p + count - 1 were free a moment ago (mlx.launch's ring takes one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count < 65536 and all(_port_free(first + i) for i in range(1, count)):
            return first
    return 20000 + os.getpid() % 20000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _timed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start
