"""torch.profiler over a window of training steps (`training.profile_batches: [first, last]`).

Writes `profiler/trace.json` (open in chrome://tracing or Perfetto) and `profiler/summary.txt` (operator
table sorted by self CPU time) into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common.callbacks import Callback


class BatchProfiler(Callback):
    """A training-loop callback that profiles optimizer steps `first`..`last` (counted from 0 in this
    process; with gradient accumulation a step holds all its micro-batches). The trace is written when the
    window ends, or at the end of training if the run stops inside it."""

    def __init__(self, window: list[int], out_dir: Path, logger: logging.Logger):
        if len(window) != 2 or window[0] > window[1] or window[0] < 0:
            from common.errors import ConfigError

            raise ConfigError(f"training.profile_batches must be [first, last] step indices, got {window}.")
        self.first, self.last = window
        self.out_dir, self.log = Path(out_dir), logger
        self.steps = 0  # optimizer steps taken in this process
        self.prof: profile | None = None
        self.done = False

    def on_fit_start(self, loop) -> None:
        if self.first == 0:
            self._start()

    def on_train_batch_end(self, loop, outputs) -> None:
        self.steps += 1
        if self.prof is not None and self.steps > self.last:
            self._write()
        elif self.prof is None and not self.done and self.steps == self.first:
            self._start()

    def on_fit_end(self, loop, result) -> None:
        self.close()

    def on_exception(self, loop, exception) -> None:
        self.close()

    def close(self) -> None:
        """Write what was recorded even if the window was cut short."""
        if self.prof is not None:
            self._write()

    def _start(self) -> None:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=acts, record_shapes=True, profile_memory=True)
        self.prof.__enter__()

    def _write(self) -> None:
        prof, self.prof, self.done = self.prof, None, True
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        (self.out_dir / "summary.txt").write_text(
            f"torch.profiler over training steps {self.first}..{min(self.steps - 1, self.last)}\n{table}\n"
        )
        self.log.info("profiler trace and summary written to %s", self.out_dir)
