"""The package-independent half of every bench's `--scaling` table: time per epoch and peak memory as one
axis (the data, the batch, the model) doubles while the others stay at the base.

Which points to measure (`doubling_points`), each point measured in a fresh process
(`measure_in_fresh_process`: `python -m <module> --key=value ... --json FILE`), the memory a point grew by
(`memory_baseline_mb`, `peak_rss_growth_mb`) and the report (`growth_report`, one `growth_table` per axis). The
package supplies the point module: it trains its real step at the point's sizes and writes
{"epoch_s", "peak_mb", ...} to the file.

Each point runs in its own process because a process's peak resident memory only ever grows: one process
could not report a smaller point after a larger one. Framework-free: the point module imports its framework.
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from common.benchmarking import growth_table, run_measurement
from common.devices import peak_memory_mb


def doubling_points(
    base: Mapping[str, int], axis: str, points: int, grows_with: Sequence[str] = ()
) -> list[dict]:
    """`points` copies of `base` with `axis` at 1, 2, 4, ... times its base value; the keys in `grows_with`
    double with it (the batch takes the epoch's samples along, so an epoch keeps its number of steps)."""
    return [{**base, **{key: base[key] * 2**i for key in (axis, *grows_with)}} for i in range(points)]


def measure_in_fresh_process(
    module: str,
    point: Mapping[str, object],
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
) -> dict:
    """Run `python -m module args... --key=value ... --json FILE` in this interpreter and return the figures
    the module wrote to FILE; a point that fails raises with the end of its output."""
    with tempfile.TemporaryDirectory(prefix="growth-") as tmp:
        out = Path(tmp) / "point.json"
        options = [f"--{key}={value}" for key, value in point.items()]
        command = [sys.executable, "-m", module, *args, *options, f"--json={out}"]
        return run_measurement(command, out, dict(env or {}), timeout)


def measure_growth(
    module: str,
    base: Mapping[str, int],
    axes: Mapping[str, Sequence[str]],
    points: int,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    measure: Callable[[dict], dict] | None = None,
) -> dict[str, list[dict]]:
    """For each axis (name -> the keys that double with it), `points` points doubling it from `base`, each
    measured in a fresh process: {axis: [{"value": the axis's value, **the point's figures}, ...]}.

    Every axis measures its own first point (the base), so each table's multiples are of a point taken
    minutes, not the whole run, before its others: on a machine whose load drifts that keeps them comparable.
    `measure(point)` measures the points in this process instead, for a test's tiny points, where starting
    a process per point would cost more than the points (the memory figures then miss what an earlier point
    left in caches that outlive it, such as a framework's own allocator's)."""
    tables = {}
    for axis, grows_with in axes.items():
        rows = []
        for point in doubling_points(base, axis, points, grows_with):
            figures = measure(dict(point)) if measure else measure_in_fresh_process(module, point, args, env)
            rows.append({"value": point[axis], **figures})
        tables[axis] = rows
    return tables


def growth_report(title: str, tables: Mapping[str, Sequence[dict]]) -> str:
    """The title line, then one `growth_table` per axis."""
    return "\n".join([title, *(growth_table(axis, rows) for axis, rows in tables.items())])


def timed_epochs(epoch: Callable[[], None], epochs: int) -> dict[str, float]:
    """Run `epoch()` `epochs` times: {"epoch_s", "epoch_cpu_s"}, the medians of its wall time and of this
    process's CPU time (every thread's; steadier than wall time on a machine others load). `epoch` ends with
    whatever synchronisation its device needs, so the clock stops when the work has."""
    wall, cpu = [], []
    for _ in range(epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        epoch()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"epoch_s": statistics.median(wall), "epoch_cpu_s": statistics.median(cpu)}


def memory_baseline_mb() -> float:
    """The baseline a point takes after its imports, before it makes its data: its resident memory now, in
    MiB, with the process's peak reset to it where Linux allows (so a transient peak of the imports, such as
    compiling modules without cached bytecode, does not count as the point's).

    Memory the C allocator holds freed is handed back to the system first (glibc), so that a point measured
    after another in one process counts the pages it touches, not only those beyond the earlier point's."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(None).malloc_trim(0)
    with contextlib.suppress(OSError):  # not Linux
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current
    return _status_mb("VmRSS") or peak_memory_mb().get("rss_peak_mb", 0.0)


def peak_rss_growth_mb(before_mb: float) -> float:
    """How far the process's peak resident memory rose above `before_mb` (a `memory_baseline_mb()` reading).

    At least 0: where the peak could not be reset (not Linux) a peak from before the baseline sits below it
    or above it; the fresh process per point keeps that small."""
    peak = _status_mb("VmHWM") or peak_memory_mb().get("rss_peak_mb", before_mb)
    return max(0.0, peak - before_mb)


def _status_mb(field: str) -> float | None:
    """A memory field of Linux's /proc/self/status (reported in KiB) in MiB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
