"""cabruca's own training-loop callbacks: per-epoch system metrics and summary line, CUDA/MPS cache emptying,
and the training-curves plot. The common ones (trackers, LR, early stopping, progress, checkpoints) come
from `common.callbacks`; the profiler window is `cabruca.profiling.BatchProfiler`.

They read the task (`loop.task`, a `cabruca.engine.CabrucaTask`) for its device and the tiles it trained.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from common.callbacks import Callback
from common.devices import peak_memory_mb
from common.plots import plot_curves


class SystemMetrics(Callback):
    """After each epoch: `system/tiles_per_sec` (training tiles of all processes over the time of the epoch's steps, validation
    excluded), peak memory (`system/rss_peak_mb`, `system/cuda_peak_mb`) and `system/gpu_util_percent` where
    the driver reports it; then one summary line in the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self._started = self._last_step = 0.0
        self._tiles_at_start = 0

    def _start(self, loop) -> None:
        self._started = self._last_step = time.perf_counter()
        self._tiles_at_start = loop.task.tiles_seen

    def on_fit_start(self, loop) -> None:
        self._start(loop)  # also the start of a resumed, half-done epoch

    def on_train_epoch_start(self, loop) -> None:
        self._start(loop)

    def on_train_batch_end(self, loop, outputs) -> None:
        self._last_step = time.perf_counter()

    def on_train_epoch_end(self, loop, metrics) -> None:
        task = loop.task
        # every process trains as many tiles as this one: the rate is over all processes
        tiles = (task.tiles_seen - self._tiles_at_start) * getattr(task, "world_size", 1)
        rate = tiles / max(self._last_step - self._started, 1e-9)
        row = {f"system/{k}": v for k, v in peak_memory_mb(task.device).items()}
        row["system/tiles_per_sec"] = rate
        row.update(gpu_utilisation(task.device))
        loop.log(row)
        monitor = task.config.training.monitor_metric
        shown = "" if monitor == "val/loss" else f" {monitor} {metrics.get(monitor, math.nan):.4f}"
        self.log.info(
            "epoch %d/%d step %d: loss %.4f val/loss %.4f%s mAP %.3f canopy_IoU %.3f (%.1f tiles/s)",
            loop.pos.epoch + 1,
            loop.plan.max_epochs,
            loop.pos.step,
            metrics.get("train/loss", math.nan),
            metrics.get("val/loss", math.nan),
            shown,
            metrics.get("val/mAP", math.nan),
            metrics.get("val/canopy_IoU", math.nan),
            rate,
        )


class EmptyCache(Callback):
    """Empty the CUDA / MPS caching allocator every `every_n_steps` optimizer steps
    (`training.empty_cache_freq`); nothing on CPU."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, loop, outputs) -> None:
        if not self.every_n_steps or loop.pos.step % self.every_n_steps:
            return
        device = loop.task.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps":
            torch.mps.empty_cache()


# The curves drawn in plots/training_curves.png (by the name after the last "/"; train/ and val/ of a name share
# an axis): the losses, the detection and canopy metrics, the learning rates. Every metric stays in the
# history, TensorBoard and the dashboard; the plot keeps to what is read at a glance.
PLOTTED = (
    "loss",
    "loss_step",
    "semantic",
    "instance",
    "crown",
    "density",
    "mAP",
    "mAP_50",
    "mAP_75",
    "mIoU",
    "canopy_IoU",
    "tree_count_accuracy",
    "shade_distribution_error",
    "grad_norm",
)


def plotted(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in PLOTTED or name == "lr" or name.startswith("lr/")


class HistoryPlot(Callback):
    """Draw `plots/training_curves.png` (the `PLOTTED` curves) from the metrics history after an epoch and at
    the end of training.

    A plot of every metric takes seconds, so after an epoch it is redrawn only when drawing costs at most
    `max_share` of the time since the last drawing (a first drawing is assumed to cost `first_cost_s`): long
    epochs get a fresh plot each time, runs of short epochs one at the end. It must come after the
    `TrackerLogger` in the callback list, whose epoch-end flush completes the history file."""

    def __init__(
        self, history: Path, out: Path, logger: logging.Logger, *, max_share: float = 0.1, first_cost_s=2.0
    ) -> None:
        self.history, self.out, self.log = Path(history), Path(out), logger
        self.max_share = max_share
        self._cost = first_cost_s
        self._since = time.perf_counter()

    def on_fit_start(self, loop) -> None:
        self._since = time.perf_counter()

    def on_train_epoch_end(self, loop, metrics) -> None:
        if self._cost <= self.max_share * (time.perf_counter() - self._since):
            self._draw()

    def on_fit_end(self, loop, result) -> None:
        self._draw()

    def _draw(self) -> None:
        started = time.perf_counter()
        try:
            metrics = json.loads(self.history.read_text(encoding="utf-8"))["metrics"]
            series = {k: [(e["step"], e["value"]) for e in v] for k, v in metrics.items() if plotted(k)}
            plot_curves(series, self.out)
        except Exception as exc:  # a plot is a convenience; never stop training for it
            self.log.warning("could not plot the history: %s", exc)
        self._since = time.perf_counter()
        self._cost = self._since - started


def gpu_utilisation(device: torch.device) -> dict[str, float]:
    """CUDA utilisation in percent where the driver reports it (needs pynvml); nothing elsewhere."""
    if device.type != "cuda":
        return {}
    try:
        return {"system/gpu_util_percent": float(torch.cuda.utilization(device))}
    except Exception:  # pynvml missing or the driver does not expose it
        return {}
