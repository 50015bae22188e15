"""torch.profiler over a window of training batches (`training.profile_batches: [first, last]`).

Writes `profiler/trace.json` (open in chrome://tracing or Perfetto) and `profiler/summary.txt` (operator
table sorted by self CPU time) into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


class BatchProfiler:
    def __init__(self, window: list[int], out_dir: Path, logger: logging.Logger):
        if len(window) != 2 or window[0] > window[1] or window[0] < 0:
            from common.errors import ConfigError

            raise ConfigError(f"training.profile_batches must be [first, last] batch indices, got {window}.")
        self.first, self.last = window
        self.out_dir, self.log = Path(out_dir), logger
        self.batch = 0  # batches seen by this process
        self.prof: profile | None = None
        self.done = False

    def before_batch(self) -> None:
        if self.batch == self.first and not self.done:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=acts, record_shapes=True, profile_memory=True)
            self.prof.__enter__()

    def after_batch(self) -> None:
        if self.prof is not None and self.batch >= self.last:
            self._write()
        self.batch += 1

    def close(self) -> None:
        """End of training: write what was recorded even if the window was cut short."""
        if self.prof is not None:
            self._write()

    def _write(self) -> None:
        prof, self.prof, self.done = self.prof, None, True
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        (self.out_dir / "summary.txt").write_text(
            f"torch.profiler over training batches {self.first}..{min(self.batch, self.last)}\n{table}\n"
        )
        self.log.info("profiler trace and summary written to %s", self.out_dir)
